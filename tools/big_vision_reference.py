"""A SigLIP forward pass in plain NumPy over a big_vision checkpoint's keys: a test and tool oracle.

Not part of the package: `tests/test_convert_big_vision.py` and
`tools/convert_big_vision.py` judge big_vision conversions with it. It is our
own re-implementation (no big_vision code), written from big_vision's model
definitions (`models/vit.py`, `models/proj/image_text/two_towers.py` and
`text_transformer.py`) and sharing no code with keras_siglip, so a conversion
bug cannot cancel out. The real big_vision is not a usable reference here: it
is not on PyPI (only a GitHub repository, with flax and its own configs), so
the tests cannot run its model; transformers checkpoints, by contrast, are
tested against transformers itself (`tests/test_convert_hf.py`).

It reads the `img/...`, `txt/...`, `t`, `b` arrays of a checkpoint (after
`keras_siglip.presets.big_vision_format.normalize_keys`), float32 or bf16
stored as 2-byte void, and computes in float64.
"""

import math

import numpy as np


def _as_float64(array):
    """float64 copy; bf16 (stored by `np.savez` as 2-byte void) is the top half of a float32."""
    array = np.asarray(array)
    if array.dtype.kind == "V":
        if array.dtype.itemsize != 2:
            raise ValueError(f"cannot read an array stored as opaque {array.dtype}")
        high = np.frombuffer(array.tobytes(), "<u2").astype("<u4") << 16
        return high.view("<f4").reshape(array.shape).astype(np.float64)
    return array.astype(np.float64)


def _layer_norm(x, params, prefix, epsilon=1e-6):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * params[f"{prefix}/scale"] + params[f"{prefix}/bias"]


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _attention(queries, keys_values, params, prefix):
    def project(x, name):  # (D, heads, head_dim) kernels, as flax's DenseGeneral stores them
        return np.einsum("bld,dhk->blhk", x, params[f"{prefix}/{name}/kernel"]) + params[f"{prefix}/{name}/bias"]

    q, k, v = project(queries, "query"), project(keys_values, "key"), project(keys_values, "value")
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1])
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    weights = scores / scores.sum(-1, keepdims=True)
    attended = np.einsum("bhqs,bshk->bqhk", weights, v)
    return np.einsum("bqhk,hkd->bqd", attended, params[f"{prefix}/out/kernel"]) + params[f"{prefix}/out/bias"]


def _mlp(x, params, prefix):
    x = _gelu_tanh(x @ params[f"{prefix}/Dense_0/kernel"] + params[f"{prefix}/Dense_0/bias"])
    return x @ params[f"{prefix}/Dense_1/kernel"] + params[f"{prefix}/Dense_1/bias"]


def _encoder(x, params, prefix):
    i = 0
    while f"{prefix}/encoderblock_{i}/LayerNorm_0/scale" in params:
        block = f"{prefix}/encoderblock_{i}"
        y = _layer_norm(x, params, f"{block}/LayerNorm_0")
        x = x + _attention(y, y, params, f"{block}/MultiHeadDotProductAttention_0")
        x = x + _mlp(_layer_norm(x, params, f"{block}/LayerNorm_1"), params, f"{block}/MlpBlock_0")
        i += 1
    return _layer_norm(x, params, f"{prefix}/encoder_norm")


def _head(x, params, prefix):
    if f"{prefix}/head/kernel" not in params:
        return x
    return x @ params[f"{prefix}/head/kernel"] + params[f"{prefix}/head/bias"]


def encode_images(params, images):
    """Unnormalised image embeddings of float images (B, H, W, 3) in [-1, 1]."""
    kernel = params["img/embedding/kernel"]
    patch = kernel.shape[0]
    batch, height, width, channels = images.shape
    grid = images.reshape(batch, height // patch, patch, width // patch, patch, channels)
    tokens = np.einsum("byixjc,ijcd->byxd", grid, kernel).reshape(batch, -1, kernel.shape[-1])
    tokens = tokens + params["img/embedding/bias"] + params["img/pos_embedding"]
    tokens = _encoder(tokens, params, "img/Transformer")
    probe = np.broadcast_to(params["img/MAPHead_0/probe"], (batch, 1, tokens.shape[-1]))
    pooled = _attention(probe, tokens, params, "img/MAPHead_0/MultiHeadDotProductAttention_0")
    pooled = pooled + _mlp(_layer_norm(pooled, params, "img/MAPHead_0/LayerNorm_0"), params, "img/MAPHead_0/MlpBlock_0")
    return _head(pooled[:, 0], params, "img")


def encode_texts(params, token_ids):
    """Unnormalised text embeddings of token ids (B, L); pools the last token."""
    tokens = params["txt/Embed_0/embedding"][token_ids] + params["txt/pos_embedding"][:, : token_ids.shape[1]]
    tokens = _encoder(tokens, params, "txt/Encoder_0")
    return _head(tokens[:, -1], params, "txt")


def forward(params, images, token_ids):
    """`(image_embeddings, text_embeddings, logits)`, L2-normalised as big_vision does, in float64."""
    params = {key: _as_float64(value) for key, value in params.items()}
    images = np.asarray(images, np.float64)

    def normalize(x):
        return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)

    image_embeddings = normalize(encode_images(params, images))
    text_embeddings = normalize(encode_texts(params, np.asarray(token_ids)))
    logits = np.exp(params["t"].reshape(())) * image_embeddings @ text_embeddings.T + params["b"].reshape(())
    return image_embeddings, text_embeddings, logits
