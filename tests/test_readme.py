"""The README's Python examples run as written."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples():
    assert _python_blocks(), "README.md lost its Python examples"


def test_layers_example_builds_a_working_model():
    namespace: dict = {}
    exec(_python_blocks()[0], namespace)  # noqa: S102
    model = namespace["model"]
    logits = model(np.zeros((2, 224, 224, 3), "float32"), training=False)
    assert tuple(logits.shape) == (2, 200)


def test_extractor_example_runs():
    exec(_python_blocks()[1], {})  # noqa: S102 -- it asserts the map shape itself


def test_metrics_example_runs():
    namespace: dict = {}
    exec(_python_blocks()[2], namespace)  # noqa: S102
    assert 0.0 <= namespace["result"]["mean"] <= 100.0
