"""big_vision `.npz` checkpoints (`params/img/...`, `params/txt/...`, `params/t`, `params/b`).

Both layouts are read: one `encoderblock_{i}` per layer, and the stacked "scan"
layout (`encoderblock/...` with a leading depth axis), which `unstack_scan`
rewrites into the first. The config is read off the array shapes, except the
text tower's pooling (`pool_type` in big_vision's config, not in the weights):
`infer_config` takes it, `"last"` by default as in big_vision, and a checkpoint
whose text tower has a MAP head (`pool_type="map"`) is refused by name.
Exporting runs `rules` backwards (`checkpoint.export_arrays`) and writes the
per-layer layout under `params/`.
"""

import re

from keras_siglip.presets.checkpoint import Rule, identity, scalar, to_shape

_SCAN = re.compile(r"^(.*)/encoderblock/(.*)$")


def normalize_keys(arrays):
    """Drops the leading `params/` and unstacks the "scan" layout into per-layer keys."""
    result = {}
    for key, array in arrays.items():
        key = key[len("params/") :] if key.startswith("params/") else key
        scanned = _SCAN.match(key)
        if scanned:
            for i in range(array.shape[0]):
                result[f"{scanned.group(1)}/encoderblock_{i}/{scanned.group(2)}"] = array[i]
        else:
            result[key] = array
    return result


def _depth(arrays, prefix):
    pattern = re.compile(re.escape(prefix) + r"/encoderblock_(\d+)/")
    found = {int(m.group(1)) for key in arrays if (m := pattern.match(key))}
    if not found:
        raise ValueError(f"The checkpoint has no encoder blocks under {prefix!r}.")
    return max(found) + 1


def _shape(arrays, key):
    if key not in arrays:
        raise ValueError(f"The big_vision checkpoint lacks the key {key!r}; is this a SigLIP checkpoint?")
    return arrays[key].shape


# big_vision's text `pool_type` -> our TextEncoder pooling ("mean" and "gap" are one thing there).
TEXT_POOL_TYPES = {"last": "last", "first": "first", "gap": "gap", "mean": "gap"}


def text_pooling(arrays, pool_type="last"):
    """Our text pooling for big_vision's `pool_type`, refusing what the towers cannot do.

    Args:
        arrays: the (normalised) checkpoint, to find a text MAP head.
        pool_type: the `pool_type` of the checkpoint's text tower (its config).
    """
    if any(key.startswith("txt/MAPHead_0/") for key in arrays):
        raise ValueError(
            "The checkpoint's text tower pools with a MAP head (txt/MAPHead_0, big_vision pool_type='map'); "
            "keras_siglip's TextEncoder pools the last, first or mean token only."
        )
    if pool_type not in TEXT_POOL_TYPES:
        raise ValueError(
            f"big_vision text pool_type {pool_type!r} is not supported; keras_siglip reads "
            f"{sorted(TEXT_POOL_TYPES)} (SigLIP's own is 'last')."
        )
    return TEXT_POOL_TYPES[pool_type]


def infer_config(arrays, text_pool_type="last"):
    """The `{"image": ..., "text": ...}` config of a (normalised) big_vision SigLIP checkpoint.

    Args:
        arrays: `{key: array}` after `normalize_keys`.
        text_pool_type: big_vision's `pool_type` of the text tower; the weights
            do not record it (only `"map"` leaves a trace, and is refused).
    """
    patch, _, _, width = _shape(arrays, "img/embedding/kernel")
    patches = _shape(arrays, "img/pos_embedding")[1]
    side = int(round(patches**0.5))
    if side * side != patches:
        raise ValueError(f"img/pos_embedding holds {patches} positions, not a square grid.")
    image_block = "img/Transformer/encoderblock_0"
    image = dict(
        image_size=side * patch,
        patch_size=patch,
        width=width,
        depth=_depth(arrays, "img/Transformer"),
        num_heads=_shape(arrays, f"{image_block}/MultiHeadDotProductAttention_0/query/kernel")[1],
        mlp_dim=_shape(arrays, f"{image_block}/MlpBlock_0/Dense_0/kernel")[1],
        output_dim=arrays["img/head/kernel"].shape[1] if "img/head/kernel" in arrays else None,
    )
    vocabulary, text_width = _shape(arrays, "txt/Embed_0/embedding")
    text_block = "txt/Encoder_0/encoderblock_0"
    text = dict(
        vocabulary_size=vocabulary,
        sequence_length=_shape(arrays, "txt/pos_embedding")[1],
        width=text_width,
        depth=_depth(arrays, "txt/Encoder_0"),
        num_heads=_shape(arrays, f"{text_block}/MultiHeadDotProductAttention_0/query/kernel")[1],
        mlp_dim=_shape(arrays, f"{text_block}/MlpBlock_0/Dense_0/kernel")[1],
        output_dim=arrays["txt/head/kernel"].shape[1] if "txt/head/kernel" in arrays else None,
        pooling=text_pooling(arrays, text_pool_type),
    )
    return {"image": image, "text": text}


def _layer_norm(source, target):
    return [Rule(f"{source}/scale", f"{target}/gamma", identity), Rule(f"{source}/bias", f"{target}/beta", identity)]


def _dense(source, target):
    return [Rule(f"{source}/kernel", f"{target}/kernel", identity), Rule(f"{source}/bias", f"{target}/bias", identity)]


def _attention(source, target, width, heads):
    # flax's DenseGeneral keeps the head axis: (D, H, D/H) in, (H, D/H, D) out.
    head_dim = width // heads
    rules = []
    for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
        rules.append(Rule(f"{source}/{theirs}/kernel", f"{target}/{ours}/kernel",
                          to_shape(width, width, source=(width, heads, head_dim))))
        rules.append(Rule(f"{source}/{theirs}/bias", f"{target}/{ours}/bias",
                          to_shape(width, source=(heads, head_dim))))
    rules.append(Rule(f"{source}/out/kernel", f"{target}/output/kernel",
                      to_shape(width, width, source=(heads, head_dim, width))))
    rules.append(Rule(f"{source}/out/bias", f"{target}/output/bias", identity))
    return rules


def _mlp(source, target):
    return _dense(f"{source}/Dense_0", f"{target}/hidden") + _dense(f"{source}/Dense_1", f"{target}/output")


def _blocks(source, target, tower):
    rules = []
    for i in range(tower["depth"]):
        src, dst = f"{source}/encoderblock_{i}", f"{target}/block_{i}"
        rules += _layer_norm(f"{src}/LayerNorm_0", f"{dst}/attention_norm")
        rules += _attention(f"{src}/MultiHeadDotProductAttention_0", f"{dst}/attention", tower["width"],
                            tower["num_heads"])
        rules += _layer_norm(f"{src}/LayerNorm_1", f"{dst}/mlp_norm")
        rules += _mlp(f"{src}/MlpBlock_0", f"{dst}/mlp")
    return rules + _layer_norm(f"{source}/encoder_norm", f"{target}/encoder_norm")


def rules(config):
    """The conversion table for a model built from `config` (see `infer_config`)."""
    image, text = config["image"], config["text"]
    table = [
        Rule("img/embedding/kernel", "image_encoder/patch_embedding/patch_projection/kernel", identity),
        Rule("img/embedding/bias", "image_encoder/patch_embedding/patch_projection/bias", identity),
        Rule("img/pos_embedding", "image_encoder/patch_embedding/position_embedding", identity),
        Rule("img/MAPHead_0/probe", "image_encoder/map_pooling/probe", identity),
        *_attention("img/MAPHead_0/MultiHeadDotProductAttention_0", "image_encoder/map_pooling/attention",
                    image["width"], image["num_heads"]),
        *_layer_norm("img/MAPHead_0/LayerNorm_0", "image_encoder/map_pooling/layer_norm"),
        *_mlp("img/MAPHead_0/MlpBlock_0", "image_encoder/map_pooling/mlp"),
        *_blocks("img/Transformer", "image_encoder", image),
        Rule("txt/Embed_0/embedding", "text_encoder/token_embedding/embeddings", identity),
        Rule("txt/pos_embedding", "text_encoder/position_embedding", identity),
        *_blocks("txt/Encoder_0", "text_encoder", text),
        Rule("t", "siglip/log_temperature", scalar),
        Rule("b", "siglip/bias", scalar),
    ]
    if image.get("output_dim"):
        table += _dense("img/head", "image_encoder/head")
    if text.get("output_dim"):
        table += _dense("txt/head", "text_encoder/head")
    return table


def check_exportable(config):
    """Refuses, naming the problem, a model big_vision's two_towers SigLIP cannot hold."""
    image = config["image"]
    problems = []
    if image["pooling"] != "map":
        problems.append(f"the image tower pools with {image['pooling']!r}; keras_siglip writes big_vision's "
                        "MAP head only")
    if image["position_embedding"] != "learned":
        problems.append(f"the image tower's position embedding is {image['position_embedding']!r}, not a "
                        "learned weight")
    if problems:
        raise ValueError("Cannot export to big_vision: " + "; ".join(problems) + ".")


def to_npz_arrays(arrays):
    """`{"params/<key>": array}`: big_vision's flat `.npz` layout, one key per layer."""
    return {f"params/{key}": value for key, value in arrays.items()}


def pool_type(config):
    """big_vision's text `pool_type` for our config (the `.npz` holds weights only: pass it to big_vision)."""
    return {"last": "last", "first": "first", "gap": "gap"}[config["text"]["pooling"]]
