"""big_vision SigLIP 2 NaFlex `.npz` checkpoints (`naflex_vit.py` image tower).

A NaFlex image tower differs from SigLIP's ViT in two arrays only: its patch
embedding `img/embedding/kernel` is a Dense `(p * p * 3, D)` (patches
flattened in (row, column, channel) order) rather than a `(p, p, 3, D)`
convolution, and `img/pos_embedding` is the learned `(G, G, D)` grid rather
than `(1, N, D)`. Everything else, text tower included, is read by
`big_vision_format`'s table.
"""

import math

from keras_siglip.presets import big_vision_format
from keras_siglip.presets.checkpoint import Rule, identity


def is_naflex(arrays):
    """Whether a (normalised) big_vision checkpoint holds a NaFlex image tower."""
    kernel = arrays.get("img/embedding/kernel")
    return kernel is not None and kernel.ndim == 2


def infer_config(arrays, text_pool_type="last"):
    """The `{"image": ..., "text": ...}` config of a (normalised) big_vision NaFlex checkpoint."""
    patch_dim, width = arrays["img/embedding/kernel"].shape
    patch = math.isqrt(patch_dim // 3)
    if patch * patch * 3 != patch_dim:
        raise ValueError(f"img/embedding/kernel has {patch_dim} inputs, not the p * p * 3 of square RGB patches.")
    grid = big_vision_format._shape(arrays, "img/pos_embedding")
    if len(grid) != 3 or grid[0] != grid[1] or grid[2] != width:
        raise ValueError(f"img/pos_embedding has shape {tuple(grid)}; a NaFlex tower's is (G, G, {width}).")
    # Shapes the FixRes reader understands: a (p, p, 3, D) stem and a (1, G*G, D) grid.
    square = dict(arrays)
    square["img/embedding/kernel"] = arrays["img/embedding/kernel"].reshape(patch, patch, 3, width)
    square["img/pos_embedding"] = arrays["img/pos_embedding"].reshape(1, grid[0] * grid[1], width)
    config = big_vision_format.infer_config(square, text_pool_type=text_pool_type)
    del config["image"]["image_size"]
    config["image"]["position_grid_size"] = grid[0]
    return config


def rules(config):
    """The conversion table for a NaFlex model built from `config` (see `infer_config`)."""
    grid, patch = config["image"]["position_grid_size"], config["image"]["patch_size"]
    square = dict(config, image=dict({k: v for k, v in config["image"].items() if k != "position_grid_size"},
                                     image_size=grid * patch))
    table = [rule for rule in big_vision_format.rules(square)
             if not rule.target.startswith("image_encoder/patch_embedding/")]
    ours = "image_encoder/patch_embedding"
    return [
        Rule("img/embedding/kernel", f"{ours}/patch_dense/kernel", identity),
        Rule("img/embedding/bias", f"{ours}/patch_dense/bias", identity),
        Rule("img/pos_embedding", f"{ours}/position_embedding", identity),
        *table,
    ]
