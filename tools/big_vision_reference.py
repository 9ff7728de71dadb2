"""big_vision's SigLIP forward pass in plain NumPy, straight off the checkpoint's keys.

Shares no code with the Keras layers, so it can judge a conversion: it reads
`img/...`, `txt/...`, `t`, `b` arrays (after `big_vision_format.normalize_keys`)
and follows big_vision's `vit.py`, `two_towers.py` and text transformer.
"""

import math

import numpy as np

from keras_siglip.presets.checkpoint import as_float32


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
    params = {key: as_float32(value).astype(np.float64) for key, value in params.items()}
    images = np.asarray(images, np.float64)

    def normalize(x):
        return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)

    image_embeddings = normalize(encode_images(params, images))
    text_embeddings = normalize(encode_texts(params, np.asarray(token_ids)))
    logits = np.exp(params["t"].reshape(())) * image_embeddings @ text_embeddings.T + params["b"].reshape(())
    return image_embeddings, text_embeddings, logits
