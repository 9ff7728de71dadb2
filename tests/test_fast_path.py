"""The training fast path (fused projections, rematerialisation, mixed_bfloat16) computes what the plain path does."""

import keras
import numpy as np
import pytest
from conftest import random_pairs, tiny_siglip

from keras_siglip import ImageEncoder, TextEncoder
from keras_siglip.models.siglip.layers import EncoderBlock, MlpBlock, MultiHeadAttention, compile_encoder_blocks


def _copy_weights(source, target):
    for a, b in zip(source.weights, target.weights, strict=True):
        assert a.path.split("/")[-1] == b.path.split("/")[-1]
        b.assign(a)


@pytest.mark.parametrize("cross", [False, True])
def test_fused_projections_equal_separate_ones(cross):
    rng = np.random.default_rng(0)
    query = rng.normal(size=(3, 5, 16)).astype("float32")
    key_value = rng.normal(size=(3, 7, 16)).astype("float32") if cross else None
    fused = MultiHeadAttention(num_heads=4)
    separate = MultiHeadAttention(num_heads=4, fused_projections=False)
    shapes = (query.shape,) if key_value is None else (query.shape, key_value.shape)
    fused.build(*shapes)
    separate.build(*shapes)
    # Distinct biases, so a bias joined in the wrong order would show.
    for layer in (fused.query, fused.key, fused.value):
        layer.bias.assign(rng.normal(size=(16,)).astype("float32"))
    _copy_weights(fused, separate)
    args = (query,) if key_value is None else (query, key_value)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fused(*args)), keras.ops.convert_to_numpy(separate(*args)), atol=1e-5
    )
    assert MultiHeadAttention.from_config(separate.get_config()).fused_projections is False


@pytest.mark.parametrize(
    "make_layer, lora_dense",
    [
        (lambda: MultiHeadAttention(num_heads=2), lambda layer: layer.value),
        (lambda: MlpBlock(mlp_dim=16), lambda layer: layer.output_projection),
    ],
    ids=["attention_value", "mlp_output"],
)
def test_a_lora_projection_reaches_the_output(make_layer, lora_dense):
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(2, 4, 8)).astype("float32")
    layer = make_layer()
    layer.build(tokens.shape)
    before = keras.ops.convert_to_numpy(layer(tokens))
    lora_dense(layer).enable_lora(rank=2)
    lora_dense(layer).lora_kernel_b.assign(rng.normal(size=(2, 8)).astype("float32"))
    # The LoRA update must reach the output (through the Dense layer's `kernel`, which includes it).
    assert not np.allclose(keras.ops.convert_to_numpy(layer(tokens)), before, atol=1e-4)


def test_remat_towers_train_exactly_like_plain_ones_and_keep_the_setting():
    batch = random_pairs(8)
    losses = {}
    for remat in (False, True):
        keras.utils.set_random_seed(0)
        model = tiny_siglip(remat=remat)
        model.compile()
        losses[remat] = [float(model.train_on_batch(batch)) for _ in range(2)]
        assert model.image_encoder.remat is remat and model.text_encoder.remat is remat
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    config = model.get_config()
    assert ImageEncoder.from_config(config["image_encoder"]["config"]).remat
    assert TextEncoder.from_config(config["text_encoder"]["config"]).remat


def test_fast_path_loss_after_20_steps_matches_float32_within_bfloat16_tolerance():
    batch = random_pairs(16, seed=3)
    losses = {}
    for policy, remat in (("float32", False), ("mixed_bfloat16", True)):
        keras.config.set_dtype_policy(policy)
        keras.utils.set_random_seed(0)
        model = tiny_siglip(remat=remat)
        assert model.image_encoder.compute_dtype == ("bfloat16" if policy == "mixed_bfloat16" else "float32")
        model.compile()
        losses[policy] = np.array([float(model.train_on_batch(batch)) for _ in range(20)])
        embeddings = model.predict(batch, verbose=0)
        assert embeddings["image_embeddings"].dtype == np.float32  # float32 out, whatever the policy
        assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(w))) for w in model.weights)
    # bfloat16 keeps 8 significant bits (relative step 2**-8 = 0.4%); 1% allows a
    # few roundings' drift over 20 steps, while a loss or norm computed in
    # bfloat16, or a diverging step, is far outside it.
    np.testing.assert_allclose(losses["mixed_bfloat16"], losses["float32"], rtol=1e-2)
    assert losses["float32"][-1] < 0.5 * losses["float32"][0]  # it trained
    assert not np.array_equal(losses["mixed_bfloat16"], losses["float32"])  # and bfloat16 really ran


def test_quantized_projections_run_as_their_dense_layers():
    rng = np.random.default_rng(3)
    tokens = rng.normal(size=(2, 4, 8)).astype("float32")
    for layer in (MultiHeadAttention(num_heads=2), MlpBlock(mlp_dim=16)):
        layer.build(tokens.shape)
        before = keras.ops.convert_to_numpy(layer(tokens))
        for dense in layer._flatten_layers(include_self=False):
            dense.quantize("int8")
        assert not layer.plain
        # int8 kernels: within a few percent of the float result, not equal to it.
        after = keras.ops.convert_to_numpy(layer(tokens))
        np.testing.assert_allclose(after, before, atol=0.05 * np.abs(before).max())
        assert not np.array_equal(after, before)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the compiled path is torch.compile")
def test_a_compiled_encoder_block_computes_what_the_eager_one_does_without_graph_breaks():
    # The compiled function is the blocks' own `forward_impl`, weights included as inputs:
    # blocks of one kind and input shape share a graph, and nothing leaves it.
    import torch

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 6, 16)).astype("float32")
    for output_position in (None, -1):
        blocks = [EncoderBlock(num_heads=4, mlp_dim=32, output_position=output_position) for _ in range(2)]
        for block in blocks:
            block.build(x.shape)
            # Distinct norms and biases, so a weight read in the wrong place shows.
            block.set_weights([rng.normal(size=w.shape).astype("float32") * 0.3 for w in block.get_weights()])
        with torch.no_grad():
            eager = [keras.ops.convert_to_numpy(block(x)) for block in blocks]
            assert compile_encoder_blocks(blocks[0]) == [blocks[0]] and blocks[0].torch_compile
            compile_encoder_blocks(blocks[1])
            compiled = [keras.ops.convert_to_numpy(block(x)) for block in blocks]
        for got, expected in zip(compiled, eager):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        compile_encoder_blocks(blocks[0], jit_compile=False)
        assert not blocks[0].torch_compile
    counters = torch._dynamo.utils.counters
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2  # one per block kind, shared by both blocks


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="jit_compile=True means torch.compile on PyTorch only")
def test_torch_jit_compile_compiles_the_encoder_blocks_and_trains_like_eager():
    import torch

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    batch = random_pairs(8)
    losses = {}
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)
        model = tiny_siglip()
        model.compile(jit_compile=jit_compile)
        losses[jit_compile] = [float(model.train_on_batch(batch)) for _ in range(3)]
        blocks = [layer for layer in model._flatten_layers() if isinstance(layer, EncoderBlock)]
        assert len(blocks) == 4 and all(b.torch_compile is jit_compile for b in blocks)
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    counters = torch._dynamo.utils.counters
    assert not counters["graph_break"], dict(counters["graph_break"])
    # Image blocks, text blocks, the text tower's one-token last block: one graph each.
    assert counters["stats"]["unique_graphs"] == 3
    # Evaluation and prediction at another batch size use the compiled blocks too.
    embeddings = model.predict(random_pairs(5), batch_size=5, verbose=0)
    assert embeddings["text_embeddings"].shape == (5, 32)
