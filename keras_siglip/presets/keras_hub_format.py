"""keras-hub `SigLIPBackbone` presets, loaded by keras-hub itself and re-mapped.

keras-hub reads its own handles (`kaggle://`, `hf://`, local folders), so the
backbone comes from `keras_hub.models.SigLIPBackbone.from_preset`; its weights
are then named by where they sit in the backbone (`vision/encoder_block_0/...`),
independent of the layer-name prefixes keras-hub derives from model names.
Exporting runs the same table backwards (`checkpoint.export_arrays`) into a
`SigLIPBackbone` that `build_backbone` makes, and keras-hub saves it.
"""

import keras

from keras_siglip.presets.checkpoint import Rule, add_axis, identity, scalar_of, siglip_layout_problems, to_shape


def load_backbone(handle):
    """keras-hub's `SigLIPBackbone` for a handle, on the current backend."""
    import keras_hub

    return keras_hub.models.SigLIPBackbone.from_preset(handle)


def _relative_variables(prefix, layer, names=()):
    """`{prefix/path-inside-layer: variable}`; keras-hub prefixes its layer names with the model name.

    `names` gives `(variable, name)` pairs for weights created without a name
    (the MAP probe), whose automatic names change with what else was built.
    """
    named = {id(variable): name for variable, name in names}
    variables = {}
    for variable in layer.weights:
        inner = named.get(id(variable)) or variable.path.split("/", 1)[1]
        variables[f"{prefix}/{inner}"] = variable
    return variables


def backbone_variables(backbone):
    """All weights of a keras-hub `SigLIPBackbone` as `{canonical key: variable}`."""
    variables = {}
    for tower_name, tower in (("vision", backbone.vision_encoder), ("text", backbone.text_encoder)):
        variables.update(_relative_variables(f"{tower_name}/embedding", tower.embedding))
        for i, block in enumerate(tower.encoder_layers):
            variables.update(_relative_variables(f"{tower_name}/encoder_block_{i}", block))
        variables.update(_relative_variables(f"{tower_name}/post_layer_norm", tower.post_layer_norm))
        probe = getattr(tower.head, "probe", None)
        variables.update(_relative_variables(f"{tower_name}/head", tower.head,
                                             [(probe, "probe")] if probe is not None else ()))
    for variable in backbone.siglip_head.weights:
        variables[variable.path.rsplit("/", 1)[1]] = variable
    return variables


def backbone_arrays(backbone):
    """All weights of a keras-hub `SigLIPBackbone` as `{canonical key: numpy array}`."""
    return {key: keras.ops.convert_to_numpy(variable) for key, variable in backbone_variables(backbone).items()}


def check_exportable(config):
    """Refuses, naming the problem, a model keras-hub's `SigLIPBackbone` cannot hold."""
    text = config["text"]
    problems = siglip_layout_problems(config, "SigLIPVisionEncoder", "SigLIPTextEncoder")
    if not text["output_dim"]:
        problems.append("the text tower has no head; SigLIPTextEncoder always projects")
    if problems:
        raise ValueError("Cannot export to keras-hub: " + "; ".join(problems) + ".")


def build_backbone(config):
    """A keras-hub `SigLIPBackbone` (random weights) with the architecture of our `config`."""
    import keras_hub

    image, text = config["image"], config["text"]

    def tower(part):
        return dict(hidden_dim=part["width"], num_layers=part["depth"], num_heads=part["num_heads"],
                    intermediate_dim=part["mlp_dim"], intermediate_activation="gelu_approximate",
                    layer_norm_epsilon=part.get("layer_norm_epsilon", 1e-6))

    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=image["patch_size"], image_shape=(image["image_size"], image["image_size"], 3), **tower(image))
    text_encoder = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=text["vocabulary_size"], embedding_dim=text["width"],
        max_sequence_length=text["sequence_length"], projection_dim=text["output_dim"], **tower(text))
    return keras_hub.models.SigLIPBackbone(vision, text_encoder)


def assign_backbone(backbone, arrays):
    """Writes `{canonical key: array}` (from `checkpoint.export_arrays`) into a `SigLIPBackbone`."""
    variables = {key: v for key, v in backbone_variables(backbone).items() if key not in IGNORED_KEYS}
    missing, extra = sorted(set(variables) - set(arrays)), sorted(set(arrays) - set(variables))
    if missing or extra:  # the table and keras-hub disagree: a bug here, or a keras-hub change
        raise ValueError(f"keras-hub's SigLIPBackbone and the conversion table disagree: backbone weights not "
                         f"written {missing[:8]}, table keys with no backbone weight {extra[:8]}.")
    for key, variable in variables.items():
        if tuple(variable.shape) != tuple(arrays[key].shape):
            raise ValueError(f"keras-hub weight {key!r} has shape {tuple(variable.shape)}; the model gives "
                             f"{tuple(arrays[key].shape)}.")
        variable.assign(arrays[key].astype(variable.dtype))


def infer_config(backbone):
    """Our `{"image": ..., "text": ...}` config from a keras-hub `SigLIPBackbone`."""
    vision, text = backbone.vision_encoder.get_config(), backbone.text_encoder.get_config()
    for name, config in (("vision", vision), ("text", text)):
        if config.get("intermediate_activation", "gelu_approximate") != "gelu_approximate":
            raise ValueError(
                f"The keras-hub {name} encoder uses {config['intermediate_activation']!r}; keras_siglip's "
                "towers use the tanh GELU ('gelu_approximate') of every released SigLIP."
            )
    if text["embedding_dim"] != text["hidden_dim"]:
        raise ValueError(
            f"The keras-hub text encoder embeds tokens in {text['embedding_dim']} dims but its blocks are "
            f"{text['hidden_dim']} wide; SigLIP's text tower uses one width."
        )
    height = vision["image_shape"][0]
    return {
        "image": dict(
            image_size=height,
            patch_size=vision["patch_size"],
            width=vision["hidden_dim"],
            depth=vision["num_layers"],
            num_heads=vision["num_heads"],
            mlp_dim=vision["intermediate_dim"],
            layer_norm_epsilon=vision["layer_norm_epsilon"],
        ),
        "text": dict(
            vocabulary_size=text["vocabulary_size"],
            sequence_length=text["max_sequence_length"],
            width=text["hidden_dim"],
            depth=text["num_layers"],
            num_heads=text["num_heads"],
            mlp_dim=text["intermediate_dim"],
            output_dim=text.get("projection_dim") or text["hidden_dim"],
            layer_norm_epsilon=text["layer_norm_epsilon"],
        ),
    }


def _pair(source, target, names):
    return [Rule(f"{source}/{theirs}", f"{target}/{ours}", identity) for theirs, ours in names]


def _layer_norm(source, target):
    return _pair(source, target, (("gamma", "gamma"), ("beta", "beta")))


def _dense(source, target):
    return _pair(source, target, (("kernel", "kernel"), ("bias", "bias")))


def _attention(source, target, width, heads):
    # keras-hub's EinsumDense kernels keep the head axis: (D, H, D/H) in, (H, D/H, D) out.
    head_dim = width // heads
    rules = []
    for name in ("query", "key", "value"):
        rules.append(Rule(f"{source}/{name}/kernel", f"{target}/{name}/kernel",
                          to_shape(width, width, source=(width, heads, head_dim))))
        rules.append(Rule(f"{source}/{name}/bias", f"{target}/{name}/bias", to_shape(width, source=(heads, head_dim))))
    rules.append(Rule(f"{source}/attention_output/kernel", f"{target}/output/kernel",
                      to_shape(width, width, source=(heads, head_dim, width))))
    rules.append(Rule(f"{source}/attention_output/bias", f"{target}/output/bias", identity))
    return rules


def _mlp(source, target):
    return _dense(f"{source}/fc1", f"{target}/hidden") + _dense(f"{source}/fc2", f"{target}/output")


def _tower(source, target, tower):
    rules = []
    for i in range(tower["depth"]):
        src, dst = f"{source}/encoder_block_{i}", f"{target}/block_{i}"
        rules += _layer_norm(f"{src}/layer_norm1", f"{dst}/attention_norm")
        rules += _attention(f"{src}/self_attn", f"{dst}/attention", tower["width"], tower["num_heads"])
        rules += _layer_norm(f"{src}/layer_norm2", f"{dst}/mlp_norm")
        rules += _mlp(f"{src}/mlp", f"{dst}/mlp")
    return rules + _layer_norm(f"{source}/post_layer_norm", f"{target}/encoder_norm")


def rules(config):
    """The conversion table for a model built from `config` (see `infer_config`)."""
    image, text = config["image"], config["text"]
    scalar = scalar_of(())  # SigLIPHead's logit_scale and logit_bias are scalars
    return [
        Rule("vision/embedding/patch_embedding/kernel",
             "image_encoder/patch_embedding/patch_projection/kernel", identity),
        Rule("vision/embedding/patch_embedding/bias", "image_encoder/patch_embedding/patch_projection/bias", identity),
        Rule("vision/embedding/position_embedding/embeddings", "image_encoder/patch_embedding/position_embedding",
             add_axis),
        *_tower("vision", "image_encoder", image),
        Rule("vision/head/probe", "image_encoder/map_pooling/probe", identity),
        *_attention("vision/head/attention", "image_encoder/map_pooling/attention", image["width"], image["num_heads"]),
        *_layer_norm("vision/head/layernorm", "image_encoder/map_pooling/layer_norm"),
        *_mlp("vision/head/mlp", "image_encoder/map_pooling/mlp"),
        Rule("text/embedding/token_embedding/embeddings", "text_encoder/token_embedding/embeddings", identity),
        Rule("text/embedding/position_embedding/embeddings", "text_encoder/position_embedding", add_axis),
        *_tower("text", "text_encoder", text),
        *_dense("text/head", "text_encoder/head"),
        Rule("logit_scale", "siglip/log_temperature", scalar),
        Rule("logit_bias", "siglip/bias", scalar),
    ]


# keras-hub stores position ids as (non-trainable) weights: not parameters of the model.
IGNORED_KEYS = ("vision/embedding/position_ids", "text/embedding/position_ids")
