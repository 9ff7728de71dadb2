"""Hugging Face transformers `SiglipModel` checkpoints (config.json + safetensors).

The config is read without importing transformers: missing fields take
`SiglipTextConfig` / `SiglipVisionConfig` defaults, as transformers does.
`rules` serves both directions: `checkpoint.assign` reads a checkpoint with it,
`checkpoint.export_arrays` writes one; `to_hf_config` is `infer_config`'s inverse.
"""

import numpy as np

from keras_siglip.presets.checkpoint import (
    Rule, Transform, add_axis, identity, permute, scalar, siglip_layout_problems, transpose,
)

_TOWER_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    layer_norm_eps=1e-6,
    hidden_act="gelu_pytorch_tanh",
)
_TEXT_DEFAULTS = dict(_TOWER_DEFAULTS, vocab_size=32_000, max_position_embeddings=64)
_VISION_DEFAULTS = dict(_TOWER_DEFAULTS, image_size=224, patch_size=16, num_channels=3, vision_use_head=True)


def _tower(config, defaults):
    merged = dict(defaults)
    merged.update({key: value for key, value in config.items() if value is not None})
    return merged


def infer_config(hf_config):
    """Our `{"image": ..., "text": ...}` config from a transformers SigLIP config.json dict."""
    if hf_config.get("model_type") != "siglip":
        raise ValueError(
            f"Expected a transformers config with model_type 'siglip', got {hf_config.get('model_type')!r}."
        )
    vision = _tower(hf_config.get("vision_config") or {}, _VISION_DEFAULTS)
    text = _tower(hf_config.get("text_config") or {}, _TEXT_DEFAULTS)
    for name, tower in (("vision_config", vision), ("text_config", text)):
        if tower["hidden_act"] != "gelu_pytorch_tanh":
            raise ValueError(
                f"{name}.hidden_act is {tower['hidden_act']!r}; keras_siglip's towers use the tanh "
                "GELU ('gelu_pytorch_tanh') of every released SigLIP."
            )
    if not vision["vision_use_head"]:
        raise ValueError("vision_config.vision_use_head is false; SigLIP's image tower pools with its MAP head.")
    if vision["num_channels"] != 3:
        raise ValueError(f"vision_config.num_channels is {vision['num_channels']}; only RGB (3) is supported.")

    def tower(config):
        return dict(
            width=config["hidden_size"],
            depth=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            mlp_dim=config["intermediate_size"],
            layer_norm_epsilon=config["layer_norm_eps"],
        )

    return {
        "image": dict(image_size=vision["image_size"], patch_size=vision["patch_size"], **tower(vision)),
        "text": dict(
            vocabulary_size=text["vocab_size"],
            sequence_length=text["max_position_embeddings"],
            output_dim=text.get("projection_size") or text["hidden_size"],
            **tower(text),
        ),
    }


def _linear(source, target):
    return [Rule(f"{source}.weight", f"{target}/kernel", transpose), Rule(f"{source}.bias", f"{target}/bias", identity)]


def _layer_norm(source, target):
    return [Rule(f"{source}.weight", f"{target}/gamma", identity), Rule(f"{source}.bias", f"{target}/beta", identity)]


def _blocks(source, target, depth):
    rules = []
    for i in range(depth):
        src, dst = f"{source}.encoder.layers.{i}", f"{target}/block_{i}"
        rules += _layer_norm(f"{src}.layer_norm1", f"{dst}/attention_norm")
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("output", "out_proj")):
            rules += _linear(f"{src}.self_attn.{theirs}", f"{dst}/attention/{ours}")
        rules += _layer_norm(f"{src}.layer_norm2", f"{dst}/mlp_norm")
        rules += _linear(f"{src}.mlp.fc1", f"{dst}/mlp/hidden") + _linear(f"{src}.mlp.fc2", f"{dst}/mlp/output")
    return rules


def _in_projection(part):
    """One of q, k, v from torch `MultiheadAttention`'s stacked `in_proj` (3*D, ...) array.

    Exporting writes the three parts back in q, k, v order (`piece`).
    """

    def take(array):
        width = array.shape[0] // 3
        piece = array[part * width : (part + 1) * width]
        return piece.T if piece.ndim == 2 else piece

    def give(value):
        return value.T if value.ndim == 2 else value

    return Transform(take, give, f"in_projection_{'qkv'[part]}", piece=part)


def rules(config):
    """The conversion table for a model built from `config` (see `infer_config`)."""
    image, text = config["image"], config["text"]
    pooling = "image_encoder/map_pooling"
    table = [
        Rule("vision_model.embeddings.patch_embedding.weight",
             "image_encoder/patch_embedding/patch_projection/kernel", permute(2, 3, 1, 0)),
        Rule("vision_model.embeddings.patch_embedding.bias",
             "image_encoder/patch_embedding/patch_projection/bias", identity),
        Rule("vision_model.embeddings.position_embedding.weight",
             "image_encoder/patch_embedding/position_embedding", add_axis),
        *_blocks("vision_model", "image_encoder", image["depth"]),
        *_layer_norm("vision_model.post_layernorm", "image_encoder/encoder_norm"),
        Rule("vision_model.head.probe", f"{pooling}/probe", identity),
        *_layer_norm("vision_model.head.layernorm", f"{pooling}/layer_norm"),
        *_linear("vision_model.head.attention.out_proj", f"{pooling}/attention/output"),
        *_linear("vision_model.head.mlp.fc1", f"{pooling}/mlp/hidden"),
        *_linear("vision_model.head.mlp.fc2", f"{pooling}/mlp/output"),
        Rule("text_model.embeddings.token_embedding.weight", "text_encoder/token_embedding/embeddings", identity),
        Rule("text_model.embeddings.position_embedding.weight", "text_encoder/position_embedding", add_axis),
        *_blocks("text_model", "text_encoder", text["depth"]),
        *_layer_norm("text_model.final_layer_norm", "text_encoder/encoder_norm"),
        *(_linear("text_model.head", "text_encoder/head") if text.get("output_dim", text["width"]) else []),
        Rule("logit_scale", "siglip/log_temperature", scalar),
        Rule("logit_bias", "siglip/bias", scalar),
    ]
    for part, name in enumerate(("query", "key", "value")):
        table.append(Rule("vision_model.head.attention.in_proj_weight", f"{pooling}/attention/{name}/kernel",
                          _in_projection(part)))
        table.append(Rule("vision_model.head.attention.in_proj_bias", f"{pooling}/attention/{name}/bias",
                          _in_projection(part)))
    return table


# Buffers some transformers versions save next to the weights.
IGNORED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")



def check_exportable(config):
    """Refuses, naming the problem, a model `SiglipModel` cannot hold."""
    image, text = config["image"], config["text"]
    problems = siglip_layout_problems(config, "SiglipModel's vision tower", "SiglipModel")
    if text["width"] != image["width"] and not text["output_dim"]:
        problems.append("the towers differ in width and the text tower has no head")
    if problems:
        raise ValueError("Cannot export to transformers: " + "; ".join(problems) + ".")


def identity_text_head(config):
    """`text_model.head` arrays for a model without a text head: SiglipModel always has one."""
    width = config["text"]["width"]
    return {"text_model.head.weight": np.eye(width, dtype=np.float32),
            "text_model.head.bias": np.zeros(width, np.float32)}


def to_hf_config(config):
    """A transformers SigLIP config.json dict for our `config`: `infer_config`'s inverse.

    Example:
    >>> from keras_siglip.presets.registry import siglip_config
    >>> hf = to_hf_config(siglip_config("B", 224, 16))
    >>> hf["model_type"], hf["vision_config"]["patch_size"], hf["text_config"]["projection_size"]
    ('siglip', 16, 768)
    """
    image, text = config["image"], config["text"]

    def tower(part):
        return dict(hidden_size=part["width"], intermediate_size=part["mlp_dim"],
                    num_hidden_layers=part["depth"], num_attention_heads=part["num_heads"],
                    layer_norm_eps=part.get("layer_norm_epsilon", 1e-6), hidden_act="gelu_pytorch_tanh",
                    attention_dropout=0.0)

    return {
        "model_type": "siglip",
        "architectures": ["SiglipModel"],
        "initializer_factor": 1.0,
        "text_config": dict(tower(text), model_type="siglip_text_model", vocab_size=text["vocabulary_size"],
                            max_position_embeddings=text["sequence_length"],
                            projection_size=text.get("output_dim") or text["width"],
                            # SigLIP has no BOS and pads with EOS (id 1 in big_vision's vocabularies).
                            pad_token_id=1, bos_token_id=None, eos_token_id=1),
        "vision_config": dict(tower(image), model_type="siglip_vision_model", image_size=image["image_size"],
                              patch_size=image["patch_size"], num_channels=3, vision_use_head=True),
    }
