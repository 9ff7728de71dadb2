"""SigLIP 2 NaFlex: transformers `Siglip2Model` checkpoints, preprocessing, training, export, bad input.

The reference is transformers itself (torch, CPU): it writes the random-weight
checkpoints, preprocesses the same raw images with its own
`Siglip2ImageProcessor` and computes the embeddings.
"""

import os

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import keras_siglip  # noqa: E402
from keras_siglip import SigLIP  # noqa: E402
from keras_siglip.models.siglip.naflex_image_encoder import NaFlexImageEncoder  # noqa: E402
from keras_siglip.models.siglip.naflex_image_preprocessor import NaFlexImagePreprocessor  # noqa: E402

# An odd tower: patch 6 (not 16), 3 heads, a 5x5 position grid resized to non-square patch grids.
PATCH, GRID, MAX_PATCHES, VOCABULARY, LENGTH = 6, 5, 40, 50, 8
SIZES = [(30, 90), (200, 100), (7, 300), (64, 64), (45, 20)]


def tiny_siglip2(folder, seed=0):
    """A random transformers Siglip2Model saved to `folder`; every weight perturbed away from its init."""
    tower = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3)
    config = transformers.Siglip2Config(
        text_config=dict(tower, vocab_size=VOCABULARY, max_position_embeddings=LENGTH, projection_size=24),
        vision_config=dict(tower, patch_size=PATCH, num_patches=GRID * GRID),
    )
    torch.manual_seed(seed)
    model = transformers.Siglip2Model(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    transformers.Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=MAX_PATCHES).save_pretrained(folder)
    return model


def raw_images(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def token_ids(seed=2):
    return np.random.default_rng(seed).integers(0, VOCABULARY, (len(SIZES), LENGTH)).astype("int32")


def hf_embeddings(model, folder, images, ids):
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(), **inputs)
    return out.image_embeds.numpy(), out.text_embeds.numpy()


def as_numpy(outputs):
    return [keras.ops.convert_to_numpy(outputs[k]) for k in ("image_embeddings", "text_embeddings")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("siglip2"))
    return folder, tiny_siglip2(folder)


def test_preprocessor_equals_transformers_processor():
    images = raw_images()
    for patch, count in ((16, 64), (PATCH, MAX_PATCHES)):
        ours = NaFlexImagePreprocessor(patch, count)(images)
        theirs = transformers.Siglip2ImageProcessorPil(patch_size=patch, max_num_patches=count)(
            images=images, return_tensors="np")
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_siglip2_naflex_checkpoint_matches_transformers(checkpoint):
    folder, reference = checkpoint
    model, _, preprocessor = keras_siglip.presets.load_preset(folder)
    assert isinstance(model.image_encoder, NaFlexImageEncoder)
    assert (preprocessor.patch_size, preprocessor.max_num_patches) == (PATCH, MAX_PATCHES)
    images, ids = raw_images(), token_ids()
    image_embeddings = keras.ops.convert_to_numpy(model.encode_images(preprocessor(images)))
    text_embeddings = keras.ops.convert_to_numpy(model.encode_texts(ids))
    theirs = hf_embeddings(reference, folder, images, ids)
    np.testing.assert_allclose(image_embeddings, theirs[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(text_embeddings, theirs[1], atol=1e-5, rtol=0)
    # predict on the same dict plus token ids gives the same
    predicted = model.predict({**preprocessor(images), "token_ids": ids}, batch_size=len(SIZES), verbose=0)
    np.testing.assert_allclose(predicted["image_embeddings"], theirs[0], atol=1e-5, rtol=0)


def test_padding_changes_nothing(checkpoint):
    model = SigLIP.from_preset(checkpoint[0])
    images = raw_images()
    short = NaFlexImagePreprocessor(PATCH, MAX_PATCHES)(images)
    padded = {key: value for key, value in short.items()}
    extra = 17
    padded["pixel_values"] = np.concatenate(
        [short["pixel_values"], np.random.default_rng(0).normal(size=(len(images), extra, 3 * PATCH**2))
         .astype("float32")], axis=1)
    padded["pixel_attention_mask"] = np.pad(short["pixel_attention_mask"], ((0, 0), (0, extra)))
    np.testing.assert_allclose(*(keras.ops.convert_to_numpy(model.encode_images(x)) for x in (short, padded)),
                               atol=1e-6)


def test_export_to_transformers_round_trip(checkpoint, tmp_path):
    folder, _ = checkpoint
    model = SigLIP.from_preset(folder)
    target = str(tmp_path / "exported")
    preprocessor = NaFlexImagePreprocessor(PATCH, MAX_PATCHES)
    keras_siglip.export(model, target, format="transformers", image_converter=preprocessor)
    with _no_weight_warnings():
        exported = transformers.Siglip2Model.from_pretrained(target).eval()
    images, ids = raw_images(), token_ids()
    theirs = hf_embeddings(exported, target, images, ids)
    ours = as_numpy(model({**preprocessor(images), "token_ids": ids}))
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-5, rtol=0)


class _no_weight_warnings:
    """Fails when transformers reports missing, unexpected or mismatched weights on loading."""

    def __enter__(self):
        import logging

        self.records = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append
        self.logger = logging.getLogger("transformers")
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        words = ("newly initialized", "not used", "missing", "unexpected", "mismatch")
        bad = [r.getMessage() for r in self.records if any(w in r.getMessage().lower() for w in words)]
        assert not bad, bad
        return False


def test_fine_tuning_on_mixed_aspect_images_then_save_and_load(checkpoint, tmp_path):
    model = SigLIP.from_preset(checkpoint[0])
    preprocessor = NaFlexImagePreprocessor(PATCH, MAX_PATCHES)
    data = {**preprocessor(raw_images() + raw_images(seed=3)[:3]),
            "token_ids": np.random.default_rng(4).integers(0, VOCABULARY, (8, LENGTH)).astype("int32")}
    model.compile(learning_rate=3e-3)
    history = model.fit(data, batch_size=8, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    path = str(tmp_path / "naflex.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for mine, theirs in zip(as_numpy(model(data)), as_numpy(loaded(data))):
        np.testing.assert_allclose(mine, theirs, atol=1e-6)


def _batch(count=MAX_PATCHES):
    return {**NaFlexImagePreprocessor(PATCH, count)(raw_images()[:2]), "token_ids": token_ids()[:2]}


@pytest.mark.parametrize(
    "spoil,message",
    [
        (lambda b: b["spatial_shapes"].__setitem__((0, 0), 20), "more than the 40"),
        (lambda b: b["spatial_shapes"].__setitem__((1, 1), 0), "at least one patch"),
        (lambda b: b["pixel_attention_mask"].__setitem__((0, 0), 0), "pixel_attention_mask of image 0"),
        (lambda b: b["pixel_attention_mask"].__setitem__((1, -1), 1), "pixel_attention_mask of image 1"),
    ],
)
def test_bad_naflex_batches_are_refused_before_any_step(checkpoint, spoil, message):
    model = SigLIP.from_preset(checkpoint[0])
    model.compile()
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    batch = _batch()
    spoil(batch)
    for run in (lambda: model.fit(batch, batch_size=2, verbose=0), lambda: model.train_on_batch(batch),
                lambda: model.predict(batch, verbose=0),
                lambda: model.encode_images({k: v for k, v in batch.items() if k != "token_ids"})):
        with pytest.raises(ValueError, match=message):
            run()
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_bad_images_and_shapes_are_refused():
    preprocessor = NaFlexImagePreprocessor(PATCH, MAX_PATCHES)
    with pytest.raises(ValueError, match="zero size"):
        preprocessor([np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        preprocessor([np.zeros((5, 5, 3), np.float32)])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocessor([np.zeros((5, 5, 4), np.uint8)])
    encoder = NaFlexImageEncoder.from_variant("tiny", patch_size=PATCH, position_grid_size=GRID)
    batch = preprocessor(raw_images()[:2])
    with pytest.raises(ValueError, match="keys"):
        encoder({"pixel_values": batch["pixel_values"]})
    with pytest.raises(ValueError, match=r"\(batch, N, 108\)"):
        encoder(dict(batch, pixel_values=batch["pixel_values"][..., :-1]))
    with pytest.raises(ValueError, match="pixel_attention_mask must be"):
        encoder(dict(batch, pixel_attention_mask=batch["pixel_attention_mask"][:, :-1]))
    with pytest.raises(ValueError, match="ints"):
        encoder(dict(batch, spatial_shapes=batch["spatial_shapes"].astype("float32")))


def test_naflex_model_needs_its_keys(checkpoint):
    model = SigLIP.from_preset(checkpoint[0])
    with pytest.raises(ValueError, match="'pixel_values', 'pixel_attention_mask', 'spatial_shapes' and 'token_ids'"):
        model({"images": np.zeros((2, 12, 12, 3), "float32"), "token_ids": token_ids()[:2]})


def test_siglip2_config_whose_position_grid_is_not_square_is_refused(tmp_path):
    config = transformers.Siglip2Config(vision_config=dict(num_patches=24))
    (tmp_path / "config.json").write_text(config.to_json_string())
    with pytest.raises(ValueError, match="num_patches is 24"):
        SigLIP.from_preset(str(tmp_path), load_weights=False)


def test_missing_and_extra_keys_are_named(checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = checkpoint[0]
    arrays = load_file(os.path.join(folder, "model.safetensors"))
    for name, edited, message in (
        ("missing", {k: v for k, v in arrays.items() if "position_embedding" not in k or "text" in k},
         "vision_model.embeddings.position_embedding.weight"),
        ("extra", dict(arrays, **{"vision_model.extra.weight": np.zeros(2, np.float32)}), "vision_model.extra.weight"),
        ("shape", dict(arrays, **{"vision_model.embeddings.patch_embedding.weight": np.zeros((24, 75), np.float32)}),
         "patch_embedding.weight"),
    ):
        target = tmp_path / name
        target.mkdir()
        (target / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
        save_file(edited, str(target / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(ValueError, match=message):
            SigLIP.from_preset(str(target))


def big_vision_npz(reference, path):
    """The big_vision NaFlex `.npz` of a transformers Siglip2Model (transformers' convert_siglip2_to_hf key map)."""
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    heads = reference.config.vision_config.num_attention_heads
    out = {}

    def dense(source, target):
        out[f"{target}/kernel"], out[f"{target}/bias"] = state[f"{source}.weight"].T, state[f"{source}.bias"]

    def norm(source, target):
        out[f"{target}/scale"], out[f"{target}/bias"] = state[f"{source}.weight"], state[f"{source}.bias"]

    def attention(q, k, v, o, target, width):
        for name, (weight, bias) in zip(("query", "key", "value"), (q, k, v)):
            out[f"{target}/{name}/kernel"] = weight.T.reshape(width, heads, width // heads)
            out[f"{target}/{name}/bias"] = bias.reshape(heads, width // heads)
        out[f"{target}/out/kernel"] = o[0].T.reshape(heads, width // heads, width)
        out[f"{target}/out/bias"] = o[1]

    def blocks(source, target, depth, width):
        for i in range(depth):
            s, t = f"{source}.encoder.layers.{i}", f"{target}/encoderblock_{i}"
            norm(f"{s}.layer_norm1", f"{t}/LayerNorm_0")
            norm(f"{s}.layer_norm2", f"{t}/LayerNorm_1")
            attention(*((state[f"{s}.self_attn.{n}_proj.weight"], state[f"{s}.self_attn.{n}_proj.bias"])
                        for n in ("q", "k", "v", "out")), f"{t}/MultiHeadDotProductAttention_0", width)
            dense(f"{s}.mlp.fc1", f"{t}/MlpBlock_0/Dense_0")
            dense(f"{s}.mlp.fc2", f"{t}/MlpBlock_0/Dense_1")

    width = reference.config.vision_config.hidden_size
    dense("vision_model.embeddings.patch_embedding", "img/embedding")
    out["img/pos_embedding"] = state["vision_model.embeddings.position_embedding.weight"].reshape(GRID, GRID, width)
    blocks("vision_model", "img/Transformer", 2, width)
    norm("vision_model.post_layernorm", "img/Transformer/encoder_norm")
    out["img/MAPHead_0/probe"] = state["vision_model.head.probe"]
    w, b = state["vision_model.head.attention.in_proj_weight"], state["vision_model.head.attention.in_proj_bias"]
    attention(*zip(np.split(w, 3), np.split(b, 3)),
              (state["vision_model.head.attention.out_proj.weight"], state["vision_model.head.attention.out_proj.bias"]),
              "img/MAPHead_0/MultiHeadDotProductAttention_0", width)
    norm("vision_model.head.layernorm", "img/MAPHead_0/LayerNorm_0")
    dense("vision_model.head.mlp.fc1", "img/MAPHead_0/MlpBlock_0/Dense_0")
    dense("vision_model.head.mlp.fc2", "img/MAPHead_0/MlpBlock_0/Dense_1")
    out["txt/Embed_0/embedding"] = state["text_model.embeddings.token_embedding.weight"]
    out["txt/pos_embedding"] = state["text_model.embeddings.position_embedding.weight"][None]
    blocks("text_model", "txt/Encoder_0", 2, reference.config.text_config.hidden_size)
    norm("text_model.final_layer_norm", "txt/Encoder_0/encoder_norm")
    dense("text_model.head", "txt/head")
    out["t"], out["b"] = state["logit_scale"], state["logit_bias"]
    np.savez(path, **{f"params/{key}": value for key, value in out.items()})
    return path


def test_big_vision_naflex_npz_matches_transformers(checkpoint, tmp_path):
    folder, reference = checkpoint
    path = big_vision_npz(reference, str(tmp_path / "naflex.npz"))
    model = SigLIP.from_preset(path)
    assert model.image_encoder.position_grid_size == GRID and model.image_encoder.patch_size == PATCH
    images, ids = raw_images(), token_ids()
    preprocessor = NaFlexImagePreprocessor(PATCH, MAX_PATCHES)
    ours = as_numpy(model({**preprocessor(images), "token_ids": ids}))
    theirs = hf_embeddings(reference, folder, images, ids)
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-5, rtol=0)


def test_tf_data_naflex_batches_train_and_bad_ones_are_refused(checkpoint):
    tf = pytest.importorskip("tensorflow")
    model = SigLIP.from_preset(checkpoint[0])
    model.compile()
    good = _batch()
    model.fit(tf.data.Dataset.from_tensor_slices(good).batch(2), verbose=0)
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    bad = _batch()
    bad["pixel_attention_mask"][1, -1] = 1
    with pytest.raises(ValueError, match="pixel_attention_mask (does not mark exactly|of image 1 marks 33)"):
        model.fit(tf.data.Dataset.from_tensor_slices(bad).batch(2), verbose=0)
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_save_to_preset_keeps_the_naflex_preprocessor(checkpoint, tmp_path):
    model = SigLIP.from_preset(checkpoint[0])
    model.save_to_preset(str(tmp_path), image_converter=NaFlexImagePreprocessor(PATCH, 24))
    loaded, _, preprocessor = keras_siglip.presets.load_preset(str(tmp_path))
    assert (preprocessor.patch_size, preprocessor.max_num_patches) == (PATCH, 24)
    inputs = preprocessor(raw_images())
    np.testing.assert_allclose(*(keras.ops.convert_to_numpy(m.encode_images(inputs)) for m in (model, loaded)),
                               atol=1e-6)


def test_export_with_the_siglip2_tokenizer_loads_as_a_siglip2_processor(tmp_path):
    """The exported folder is a whole transformers SigLIP 2: Siglip2Processor tokenises and preprocesses
    as ours, and Siglip2Model embeds what our model embeds."""
    from gemma_vocabulary import HARD_TEXTS, write_gemma_spm

    from keras_siglip import SigLIP2Tokenizer

    spm = write_gemma_spm(str(tmp_path / "gemma.model"))
    tokenizer = SigLIP2Tokenizer(spm, sequence_length=LENGTH)
    model = SigLIP(
        keras_siglip.NaFlexImageEncoder(PATCH, 24, 2, 3, 40, position_grid_size=GRID),
        keras_siglip.TextEncoder(vocabulary_size=tokenizer.vocabulary_size(), sequence_length=LENGTH,
                                 width=24, depth=2, num_heads=3, mlp_dim=40, output_dim=24),
    )
    preprocessor = NaFlexImagePreprocessor(PATCH, MAX_PATCHES)
    target = str(tmp_path / "exported")
    keras_siglip.export(model, target, format="transformers", tokenizer=tokenizer, image_converter=preprocessor)
    processor = transformers.Siglip2Processor.from_pretrained(target)
    texts = HARD_TEXTS[:len(SIZES)]
    # The processor's parts, called one by one: Siglip2Processor's call would impose its default
    # patch size and patch budget (16, 256) on the image processor it loaded.
    theirs_inputs = {
        **processor.tokenizer(texts, padding="max_length", max_length=LENGTH, truncation=True,
                              return_tensors="pt"),
        **processor.image_processor(images=raw_images(), return_tensors="pt"),
    }
    ours_ids = keras.ops.convert_to_numpy(tokenizer(texts))
    np.testing.assert_array_equal(theirs_inputs["input_ids"].numpy(), ours_ids)
    with _no_weight_warnings():
        exported = transformers.Siglip2Model.from_pretrained(target).eval()
    with torch.no_grad():
        out = exported(**{k: v for k, v in theirs_inputs.items() if k != "attention_mask"})
    ours = as_numpy(model({**preprocessor(raw_images()), "token_ids": ours_ids}))
    np.testing.assert_allclose(ours[0], out.image_embeds.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours[1], out.text_embeds.numpy(), atol=1e-5, rtol=0)


def test_the_convert_tool_checks_a_naflex_export_with_transformers(checkpoint, tmp_path):
    from keras_siglip.convert import convert_and_check

    errors = convert_and_check(checkpoint[0], str(tmp_path / "converted"), "transformers", progress="never")
    assert set(errors) == {"image embeddings", "text embeddings", "log temperature and bias"}
    assert max(largest for largest, _ in errors.values()) < 1e-5


def test_export_to_big_vision_writes_the_npz_big_vision_holds(checkpoint, tmp_path):
    """The exported .npz has the keys and arrays of one written with transformers' big_vision key map."""
    folder, reference = checkpoint
    expected = np.load(big_vision_npz(reference, str(tmp_path / "reference.npz")))
    model = SigLIP.from_preset(folder)
    keras_siglip.export(model, str(tmp_path / "exported.npz"), format="big_vision")
    exported = np.load(str(tmp_path / "exported.npz"))
    assert sorted(exported.files) == sorted(expected.files)
    for key in expected.files:
        np.testing.assert_allclose(exported[key], expected[key], atol=1e-6, rtol=0, err_msg=key)
    reloaded = SigLIP.from_preset(str(tmp_path / "exported.npz"))
    x = {**NaFlexImagePreprocessor(PATCH, MAX_PATCHES)(raw_images()), "token_ids": token_ids()}
    for ours, back in zip(as_numpy(model(x)), as_numpy(reloaded(x))):
        np.testing.assert_array_equal(ours, back)


def test_a_naflex_model_is_refused_by_keras_hub_export(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="keras-hub has no NaFlex"):
        keras_siglip.export(SigLIP.from_preset(checkpoint[0]), str(tmp_path / "kh"), format="keras_hub")


def test_the_readers_give_transformers_patches_of_jpeg_and_png_files_and_skip_a_broken_one(tmp_path):
    import io
    import tarfile

    from PIL import Image

    from keras_siglip import SigLIPTokenizer
    from keras_siglip.data import EMBEDDED_VOCABULARY, read_tar_shards

    members, files = [], []
    for i, image in enumerate(raw_images()):
        kind = ("JPEG", "jpg") if i % 2 == 0 else ("PNG", "png")
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=kind[0], quality=90)
        files.append(buffer.getvalue())
        members += [(f"{i:03d}.{kind[1]}", files[-1]), (f"{i:03d}.txt", f"a picture number {i}".encode())]
        if i == 2:
            members += [("002b.jpg", b"not a jpeg at all"), ("002b.txt", b"broken")]
    with tarfile.open(tmp_path / "00000.tar", "w") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    tokenizer = SigLIPTokenizer(str(EMBEDDED_VOCABULARY), sequence_length=LENGTH)
    preprocessor = NaFlexImagePreprocessor(PATCH, MAX_PATCHES)
    dataset = read_tar_shards(str(tmp_path / "{00000..00000}.tar"), tokenizer, preprocessor, 2, training=False,
                              drop_remainder=False)
    batches = list(dataset.as_numpy_iterator())
    ours = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    assert sorted(ours) == ["pixel_attention_mask", "pixel_values", "spatial_shapes", "token_ids"]
    # transformers' processor on the same files as PIL opens them.
    opened = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in files]
    theirs = transformers.Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=MAX_PATCHES)(
        images=opened, return_tensors="np")
    for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    np.testing.assert_array_equal(ours["token_ids"], keras.ops.convert_to_numpy(
        tokenizer([f"a picture number {i}" for i in range(len(SIZES))])))
    assert dataset.skipped_images.count == 1 and "002b" in dataset.skipped_images.names[0]
