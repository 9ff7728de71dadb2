"""Runs every docstring example (`>>>`) of every module under keras_siglip/ with the stdlib doctest.

One test per module that has examples, on whichever backend KERAS_BACKEND selects, so
tools/test_all.sh runs them on JAX, TensorFlow and PyTorch. Examples must print the same on
every backend: format numbers and convert tensors to Python or NumPy values before printing.
Examples marked `# doctest: +SKIP` (ones that would download, say) are not run. A module that
cannot be imported because an optional dependency is absent (TensorFlow, keras-hub, ...) is
skipped with the missing module's name as the reason.
"""

import doctest
import importlib
import pathlib

import keras
import numpy as np
import pytest

import keras_siglip

PACKAGE_DIR = pathlib.Path(keras_siglip.__file__).parent
OPTION_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules_with_examples():
    """Dotted names of the package's modules whose source holds a `>>>` example.

    Found from the files, without importing anything, so collection works whatever is installed.
    """
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _missing_dependency(error):
    """The optional top-level module whose absence caused `error`, or None."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name:
            missing = error.name.split(".")[0]
            return None if missing == "keras_siglip" else missing
        error = error.__cause__ or error.__context__
    return None


def _import_or_skip(name):
    try:
        return importlib.import_module(name)
    except ImportError as error:
        missing = _missing_dependency(error)
        if missing is None:
            raise
        pytest.skip(f"{name} needs {missing!r}, which is not installed: {error}")


@pytest.mark.parametrize("module_name", _modules_with_examples())
def test_docstring_examples(module_name):
    module = _import_or_skip(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTION_FLAGS)
    report = []
    tests = [test for test in finder.find(module, module_name) if test.examples]
    for test in sorted(tests, key=lambda test: test.name):
        # The same starting point for every docstring, whatever ran before it.
        keras.utils.clear_session(free_memory=False)
        keras.config.set_dtype_policy("float32")
        keras.utils.set_random_seed(0)
        np.random.seed(0)
        runner.run(test, out=report.append, clear_globs=True)
    results = runner.summarize(verbose=False)
    if results.failed:
        pytest.fail(
            f"{results.failed} of {results.attempted} examples failed on "
            f"{keras.backend.backend()}:\n" + "".join(report),
            pytrace=False,
        )
