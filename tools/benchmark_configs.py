"""The model and batch configurations the training benchmarks share."""

CONFIGS = {
    # Small enough for two CPU cores; the shapes of a real model otherwise.
    "small": dict(width=256, depth=4, num_heads=4, mlp_dim=1024, image_size=64, patch_size=8,
                  sequence_length=16, vocabulary_size=8_000, batch_size=64, dtype="float32"),
    # The setting the peers publish figures for: B/16-224, text 64, vocab 32k, batch 256, bf16.
    "B16": dict(width=768, depth=12, num_heads=12, mlp_dim=3072, image_size=224, patch_size=16,
                sequence_length=64, vocabulary_size=32_000, batch_size=256, dtype="mixed_bfloat16"),
}
