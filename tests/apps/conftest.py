"""Fixtures for the evaluate / export / extract app tests: one tiny trained run per session.

``trained_run`` trains a small CNN for two epochs on a tiny synthetic set with
``python -m apps.train`` (about 20 s), as a user would; ``exported`` exports it
with ``python -m apps.export``; ``reference`` predicts with the run's Keras
model, independently of ``wsolkeras.export``.
"""

import json
import os

import pytest

from tests.apps.app_runner import run_app
from tests.apps.serving_helpers import Reference


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """``(model_dir, data_dir)`` of a finished two-epoch apps.train run on a tiny synthetic set."""
    parent = tmp_path_factory.mktemp("trained")
    model_dir, data_dir = parent / "run", parent / "data"
    result = run_app(
        "train",
        f"--data_dir={data_dir}",
        "--synthetic_num_classes=3",
        "--synthetic_image_size=48",
        "--synthetic_train_size=64",
        "--synthetic_val_size=16",
        "--synthetic_test_size=24",
        "--resize_size=40",
        "--crop_size=32",
        "--batch_size=16",
        "--eval_batch_size=16",
        "--epochs=2",
        "--eval_every=0",
        "--num_summary_images=2",
        "--top_k=2",
        "--verbose=2",
        f"--model_dir={model_dir}",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return str(model_dir), str(data_dir)


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory):
    """``(version_dir, export_dir)``: the run exported with python -m apps.export."""
    model_dir, _ = trained_run
    export_dir = tmp_path_factory.mktemp("exports")
    result = run_app("export", f"--model_dir={model_dir}", f"--export_dir={export_dir}")
    assert result.returncode == 0, result.stderr[-4000:]
    return str(export_dir / "wsol" / "1"), str(export_dir)


@pytest.fixture(scope="session")
def run_config(trained_run):
    with open(os.path.join(trained_run[0], "config.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def reference(trained_run):
    return Reference(trained_run[0])
