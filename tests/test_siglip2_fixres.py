"""SigLIP 2 FixRes: transformers folders (plain SiglipModel + Gemma tokenizer), big_vision .npz, export, presets.

The reference checkpoints are random `SiglipModel`s written by transformers itself with a
Gemma-sized 256k vocabulary (tiny width), the tokenizer files written by transformers'
GemmaTokenizer and the image processor config by its SiglipImageProcessor; the reference
outputs are transformers' own forward on the ids of its own Siglip2Tokenizer and the pixels of
its own image processor.
"""

import os
import warnings

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gemma_vocabulary import (  # noqa: E402
    HARD_TEXTS, transformers_siglip2_tokenizer, write_gemma_spm, write_transformers_tokenizer,
)
from keras_siglip import SigLIP, SigLIP2Tokenizer, SigLIPImagePreprocessor  # noqa: E402
from keras_siglip.presets import load_preset, registry  # noqa: E402

GEMMA_VOCABULARY = 256_000
IMAGE_SIZE = 32
SEQUENCE_LENGTH = 64
# "B-like": towers of one width; "g-opt-like": a wider image tower (3 heads) and a text head into it.
CONFIGS = {
    "same_width": dict(vision=dict(hidden_size=32, num_attention_heads=2, patch_size=8),
                       text=dict(hidden_size=32, num_attention_heads=2)),
    "g_opt_like": dict(vision=dict(hidden_size=48, num_attention_heads=3, patch_size=16),
                       text=dict(hidden_size=32, num_attention_heads=2, projection_size=48)),
}


def write_checkpoint(folder, spm_file, vision, text, seed=0):
    """A random FixRes SigLIP 2 transformers folder: SiglipModel, Gemma tokenizer files, image processor."""
    common = dict(intermediate_size=64, num_hidden_layers=2)
    config = transformers.SiglipConfig(
        text_config=dict(common, vocab_size=GEMMA_VOCABULARY, max_position_embeddings=SEQUENCE_LENGTH,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2, **text),
        vision_config=dict(common, image_size=IMAGE_SIZE, **vision))
    torch.manual_seed(seed)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    write_transformers_tokenizer(spm_file, folder)
    transformers.SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    ).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    return write_gemma_spm(str(tmp_path_factory.mktemp("gemma") / "tokenizer.model"))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, spm_file, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp(f"siglip2_{request.param}"))
    return folder, write_checkpoint(folder, spm_file, **CONFIGS[request.param])


def raw_images(count=3, seed=0):
    """uint8 images at the model resolution (each library's preprocessor only rescales them)."""
    return np.random.default_rng(seed).integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("uint8")


def transformers_outputs(reference, folder, images, texts):
    """transformers' ids, pixels and normalised embeddings, each made by transformers' own preprocessing."""
    ids = transformers_siglip2_tokenizer(folder)(
        texts, padding="max_length", truncation=True, max_length=SEQUENCE_LENGTH, return_tensors="pt")["input_ids"]
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = reference(input_ids=ids[: len(images)], pixel_values=pixels)
        texts_out = reference(input_ids=ids, pixel_values=pixels[:1])
    return ids.numpy(), out.image_embeds.numpy(), texts_out.text_embeds.numpy()


def as_numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_transformers_folder_loads_with_gemma_tokenizer_and_matches(checkpoint):
    folder, reference = checkpoint
    model, tokenizer, image_converter = load_preset(folder)
    assert isinstance(tokenizer, SigLIP2Tokenizer) and tokenizer.sequence_length == SEQUENCE_LENGTH
    assert tokenizer.padding_id == 0 and tokenizer.eos_id == 1
    assert isinstance(image_converter, SigLIPImagePreprocessor) and image_converter.image_size == (IMAGE_SIZE,) * 2
    assert model.text_encoder.vocabulary_size == GEMMA_VOCABULARY
    assert model.count_params() == sum(p.numel() for p in reference.parameters())
    images = raw_images()
    ids, image_embeddings, text_embeddings = transformers_outputs(reference, folder, images, HARD_TEXTS)
    our_ids = as_numpy(tokenizer(HARD_TEXTS))
    np.testing.assert_array_equal(our_ids, ids)
    np.testing.assert_allclose(as_numpy(model.encode_images(image_converter(images))), image_embeddings,
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(as_numpy(model.encode_texts(our_ids)), text_embeddings, atol=1e-5, rtol=0)


def big_vision_npz(reference, path):
    """The big_vision SigLIP 2 FixRes `.npz` of a transformers SiglipModel, in big_vision's "scan" layout.

    transformers' convert_siglip2_to_hf key map run backwards: flax kernels (in, out), attention
    (D, H, D/H) / (H, D/H, D), the patch stem (p, p, 3, D), the MAP head's stacked q/k/v split,
    no image head, the text head into the image width.
    """
    state = {key: value.numpy() for key, value in reference.state_dict().items()}
    out = {}

    def dense(source, target):
        out[f"{target}/kernel"], out[f"{target}/bias"] = state[f"{source}.weight"].T, state[f"{source}.bias"]

    def norm(source, target):
        out[f"{target}/scale"], out[f"{target}/bias"] = state[f"{source}.weight"], state[f"{source}.bias"]

    def attention(parts, output, target, width, heads):
        for name, (weight, bias) in zip(("query", "key", "value"), parts):
            out[f"{target}/{name}/kernel"] = weight.T.reshape(width, heads, width // heads)
            out[f"{target}/{name}/bias"] = bias.reshape(heads, width // heads)
        out[f"{target}/out/kernel"] = output[0].T.reshape(heads, width // heads, width)
        out[f"{target}/out/bias"] = output[1]

    def tower(source, target, config):
        width, heads = config.hidden_size, config.num_attention_heads
        layers = []
        for i in range(config.num_hidden_layers):
            before = set(out)
            s, t = f"{source}.encoder.layers.{i}", f"{target}/encoderblock"
            norm(f"{s}.layer_norm1", f"{t}/LayerNorm_0")
            norm(f"{s}.layer_norm2", f"{t}/LayerNorm_1")
            parts = [(state[f"{s}.self_attn.{n}_proj.weight"], state[f"{s}.self_attn.{n}_proj.bias"]) for n in "qkv"]
            output = (state[f"{s}.self_attn.out_proj.weight"], state[f"{s}.self_attn.out_proj.bias"])
            attention(parts, output, f"{t}/MultiHeadDotProductAttention_0", width, heads)
            dense(f"{s}.mlp.fc1", f"{t}/MlpBlock_0/Dense_0")
            dense(f"{s}.mlp.fc2", f"{t}/MlpBlock_0/Dense_1")
            layers.append({key: out.pop(key) for key in set(out) - before})
        for key in layers[0]:  # scan: one key per weight, the layers stacked on axis 0
            out[key] = np.stack([layer[key] for layer in layers])

    vision, text = reference.config.vision_config, reference.config.text_config
    out["img/embedding/kernel"] = state["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)
    out["img/embedding/bias"] = state["vision_model.embeddings.patch_embedding.bias"]
    out["img/pos_embedding"] = state["vision_model.embeddings.position_embedding.weight"][None]
    tower("vision_model", "img/Transformer", vision)
    norm("vision_model.post_layernorm", "img/Transformer/encoder_norm")
    out["img/MAPHead_0/probe"] = state["vision_model.head.probe"]
    weight, bias = state["vision_model.head.attention.in_proj_weight"], state["vision_model.head.attention.in_proj_bias"]
    attention(list(zip(np.split(weight, 3), np.split(bias, 3))),
              (state["vision_model.head.attention.out_proj.weight"], state["vision_model.head.attention.out_proj.bias"]),
              "img/MAPHead_0/MultiHeadDotProductAttention_0", vision.hidden_size, vision.num_attention_heads)
    norm("vision_model.head.layernorm", "img/MAPHead_0/LayerNorm_0")
    dense("vision_model.head.mlp.fc1", "img/MAPHead_0/MlpBlock_0/Dense_0")
    dense("vision_model.head.mlp.fc2", "img/MAPHead_0/MlpBlock_0/Dense_1")
    out["txt/Embed_0/embedding"] = state["text_model.embeddings.token_embedding.weight"]
    out["txt/pos_embedding"] = state["text_model.embeddings.position_embedding.weight"][None]
    tower("text_model", "txt/Encoder_0", text)
    norm("text_model.final_layer_norm", "txt/Encoder_0/encoder_norm")
    dense("text_model.head", "txt/head")
    out["t"], out["b"] = state["logit_scale"], state["logit_bias"]
    np.savez(path, **{f"params/{key}": value for key, value in out.items()})
    return path


def test_big_vision_npz_matches_transformers(checkpoint, spm_file, tmp_path):
    folder, reference = checkpoint
    path = big_vision_npz(reference, str(tmp_path / "siglip2.npz"))
    model, tokenizer, image_converter = load_preset(path)
    assert tokenizer is None  # a .npz holds no vocabulary: big_vision's is the Gemma tokenizer
    vision, text = reference.config.vision_config, reference.config.text_config
    assert model.image_encoder.num_heads == vision.num_attention_heads
    assert model.text_encoder.num_heads == text.num_attention_heads
    assert model.text_encoder.output_dim == vision.hidden_size
    images = raw_images()
    ids, image_embeddings, text_embeddings = transformers_outputs(reference, folder, images, HARD_TEXTS)
    tokenizer = SigLIP2Tokenizer(spm_file, lowercase=True)  # big_vision's ASCII lower; these texts agree
    np.testing.assert_allclose(as_numpy(model.encode_images(image_converter(images))), image_embeddings,
                               atol=1e-5, rtol=0)
    ascii_texts = [t for t in HARD_TEXTS if t.lower() == t.encode().lower().decode()]
    rows = [HARD_TEXTS.index(t) for t in ascii_texts]
    np.testing.assert_allclose(as_numpy(model.encode_texts(tokenizer(ascii_texts))), text_embeddings[rows],
                               atol=1e-5, rtol=0)


def test_big_vision_npz_every_key_and_shape_checked(checkpoint, tmp_path):
    _, reference = checkpoint
    path = big_vision_npz(reference, str(tmp_path / "siglip2.npz"))
    arrays = dict(np.load(path))
    for edit, message in (
        (lambda a: a.pop("params/txt/head/bias"), "txt/head/bias"),
        (lambda a: a.update({"params/img/surprise": np.zeros(2, "float32")}), "img/surprise"),
        (lambda a: a.update({"params/txt/head/bias": np.zeros(5, "float32")}), r"txt/head/bias.*\(5,\)"),
    ):
        edited = dict(arrays)
        edit(edited)
        np.savez(tmp_path / "edited.npz", **edited)
        with pytest.raises(ValueError, match=message):
            SigLIP.from_preset(str(tmp_path / "edited.npz"))


def test_export_to_transformers_round_trip(checkpoint, tmp_path):
    import keras_siglip

    folder, reference = checkpoint
    model, tokenizer, image_converter = load_preset(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # SigLIP2Tokenizer's rules are transformers' Siglip2Tokenizer's: no warning
        keras_siglip.export(model, tmp_path / "hf", tokenizer=tokenizer, image_converter=image_converter)
    assert os.path.exists(tmp_path / "hf" / "tokenizer.model")
    processor = transformers.AutoProcessor.from_pretrained(str(tmp_path / "hf"))
    exported = transformers.SiglipModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(processor.tokenizer).__name__ == "Siglip2Tokenizer"
    inputs = processor(text=HARD_TEXTS, images=list(raw_images()), padding="max_length", truncation=True,
                       max_length=SEQUENCE_LENGTH, return_tensors="pt")
    np.testing.assert_array_equal(inputs["input_ids"].numpy(), as_numpy(tokenizer(HARD_TEXTS)))
    with torch.no_grad():
        out = exported(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
    np.testing.assert_allclose(out.image_embeds.numpy(), as_numpy(model.encode_images(image_converter(raw_images()))),
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.text_embeds.numpy(), as_numpy(model.encode_texts(tokenizer(HARD_TEXTS))),
                               atol=1e-5, rtol=0)
    reloaded, reloaded_tokenizer, _ = load_preset(str(tmp_path / "hf"))
    assert isinstance(reloaded_tokenizer, SigLIP2Tokenizer)
    np.testing.assert_array_equal(as_numpy(reloaded_tokenizer(HARD_TEXTS)), as_numpy(tokenizer(HARD_TEXTS)))


def test_export_to_keras_hub_round_trip(checkpoint, tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    import keras_siglip

    folder, _ = checkpoint
    model, tokenizer, image_converter = load_preset(folder)
    with pytest.warns(UserWarning, match="strips punctuation"):  # keras-hub lowercases only when canonicalising
        keras_siglip.export(model, tmp_path / "kh", format="keras_hub", tokenizer=tokenizer,
                            image_converter=image_converter)
    hub_preprocessor = keras_hub.models.SigLIPPreprocessor.from_preset(str(tmp_path / "kh"))
    assert isinstance(hub_preprocessor.tokenizer, keras_hub.models.GemmaTokenizer)
    plain = ["a photo of a cat", "two dogs 🐶 playing", "", " ".join(["a red car"] * 40)]  # no case, no punctuation
    packed = hub_preprocessor({"prompts": plain, "images": raw_images(len(plain)).astype("float32")})
    np.testing.assert_array_equal(as_numpy(packed["token_ids"]), as_numpy(tokenizer(plain)))
    backbone = keras_hub.models.SigLIPBackbone.from_preset(str(tmp_path / "kh"))
    text = as_numpy(backbone.get_text_embeddings(packed["token_ids"]))
    np.testing.assert_allclose(text / np.linalg.norm(text, axis=-1, keepdims=True),
                               as_numpy(model.encode_texts(tokenizer(plain))), atol=1e-5, rtol=0)
    reloaded, reloaded_tokenizer, _ = load_preset(str(tmp_path / "kh"))
    assert isinstance(reloaded_tokenizer, SigLIP2Tokenizer)
    np.testing.assert_array_equal(as_numpy(reloaded_tokenizer(plain)), as_numpy(tokenizer(plain)))


def test_native_preset_round_trip(checkpoint, tmp_path):
    from keras_siglip.presets import save_preset

    folder, _ = checkpoint
    model, tokenizer, image_converter = load_preset(folder)
    save_preset(str(tmp_path / "ours"), model, tokenizer, image_converter)
    reloaded, reloaded_tokenizer, reloaded_converter = load_preset(str(tmp_path / "ours"))
    assert type(reloaded_tokenizer) is SigLIP2Tokenizer
    assert reloaded_tokenizer.get_config() == tokenizer.get_config()
    np.testing.assert_allclose(as_numpy(reloaded.encode_texts(reloaded_tokenizer(HARD_TEXTS))),
                               as_numpy(model.encode_texts(tokenizer(HARD_TEXTS))), atol=0)
    assert reloaded_converter.image_size == image_converter.image_size


@pytest.mark.backend_independent
def test_registry_lists_every_released_fixres_checkpoint():
    table = registry.list_presets(print_table=False)
    fixres = {name: row for name, row in table.items() if name in registry.SIGLIP2_FIXRES}
    assert len(fixres) == 15
    keras_hub = pytest.importorskip("keras_hub")
    hub_presets = {name for name in keras_hub.models.SigLIPBackbone.presets if name.startswith("siglip2_")}
    assert hub_presets <= set(fixres)  # every keras-hub SigLIP 2 preset, by its own name
    for name, row in fixres.items():
        sources = row["sources"]
        assert sources[0].startswith("hf://google/siglip2-") and sources[-1].startswith("gs://big_vision/siglip2/")
        if name in hub_presets:
            assert keras_hub.models.SigLIPBackbone.presets[name]["kaggle_handle"] in sources
        # The parameter count is the one transformers' SiglipModel has for the same dimensions.
        from keras_siglip.presets import hf_format

        with torch.device("meta"):
            hf_model = transformers.SiglipModel(transformers.SiglipConfig(
                **{k: v for k, v in hf_format.to_hf_config(registry.PRESETS[name]["config"]).items()
                   if k in ("text_config", "vision_config")}))
        assert row["parameters"] == sum(p.numel() for p in hf_model.parameters()), name
    g_opt = registry.PRESETS["siglip2_giant_opt_patch16_384"]["config"]
    assert (g_opt["image"]["width"], g_opt["image"]["depth"], g_opt["text"]["width"], g_opt["text"]["depth"],
            g_opt["text"]["output_dim"]) == (1536, 40, 1152, 27, 1536)


def test_builtin_preset_from_its_npz_gets_the_gemma_tokenizer(checkpoint, spm_file, tmp_path, monkeypatch):
    """A SigLIP 2 preset read from big_vision's .npz (no vocabulary inside) gets the preset's Gemma vocabulary."""
    from keras_siglip.presets import big_vision_format
    from keras_siglip.presets.checkpoint import load_npz

    _, reference = checkpoint
    path = big_vision_npz(reference, str(tmp_path / "siglip2.npz"))
    config = big_vision_format.infer_config(big_vision_format.normalize_keys(load_npz(path)))
    monkeypatch.setitem(registry.PRESETS, "siglip2_test", {
        "config": config, "sources": [path], "description": "test", "vocabulary": spm_file})
    model, tokenizer, image_converter = load_preset("siglip2_test")
    assert isinstance(tokenizer, SigLIP2Tokenizer) and tokenizer.sequence_length == SEQUENCE_LENGTH
    assert image_converter.image_size == (IMAGE_SIZE,) * 2
    for name, entry in registry.SIGLIP2_FIXRES.items():
        assert entry["vocabulary"] == "gs://big_vision/gemma_tokenizer.model", name
