"""Optional dependencies, imported on first use with an ImportError that names the extra to install.

`pip install keras-siglip` installs Keras and NumPy only; the rest comes with extras
(see pyproject.toml):

| extra | installs | needed by |
|---|---|---|
| `jax`, `torch`, `tensorflow` | the Keras backend | training and inference on it |
| `tensorflow` | tensorflow, tensorflow-text, keras-hub | `SigLIPTokenizer`, `SigLIPImagePreprocessor`, the readers of `keras_siglip.data`, `KerasHubImageEncoder` and preset files, on every backend |
| `presets` | the above, safetensors, huggingface-hub | transformers checkpoints and `hf://` handles |
| `train` | the above, scikit-learn, matplotlib, tensorboard, absl-py | the main job (`python -m keras_siglip.train`) |
"""

import importlib

# module -> (pip package, extra that installs it)
PACKAGES = {
    "tensorflow": ("tensorflow", "tensorflow"),
    "tensorflow_text": ("tensorflow-text", "tensorflow"),
    "keras_hub": ("keras-hub", "tensorflow"),
    "safetensors": ("safetensors", "presets"),
    "huggingface_hub": ("huggingface-hub", "presets"),
    "sklearn": ("scikit-learn", "train"),
    "matplotlib": ("matplotlib", "train"),
}


def require(*modules, purpose):
    """Imports `modules` (names in `PACKAGES`); one missing raises an ImportError naming its extra.

    Returns the module, or a tuple of them when several are asked for.

    >>> require("keras_hub", purpose="KerasHubImageEncoder")  # doctest: +SKIP
    ImportError: KerasHubImageEncoder needs keras-hub, which is not installed: pip install "keras-siglip[tensorflow]"
    """
    loaded = []
    for name in modules:
        package, extra = PACKAGES[name]
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise ImportError(
                f'{purpose} needs {package}, which is not installed: pip install "keras-siglip[{extra}]"'
            ) from error
        if name == "tensorflow" and not hasattr(module, "executing_eagerly"):
            # `pip uninstall tensorflow` can leave an empty folder that imports as a namespace package.
            raise ImportError(
                f"{purpose} needs tensorflow; {getattr(module, '__path__', '?')} is an incomplete install: "
                f'pip install "keras-siglip[{extra}]"'
            )
        loaded.append(module)
    return loaded[0] if len(loaded) == 1 else tuple(loaded)
