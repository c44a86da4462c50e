"""Runs the apps as users do: ``python -m apps.<app>`` in a subprocess from the repository root."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def app_environment() -> dict:
    """The environment an app subprocess gets: TensorFlow backend, quiet logs, no GPU."""
    return dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=ROOT,
        CUDA_VISIBLE_DEVICES="",
    )


def run_app(app: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m apps.<app> <args>`` from the repository root, as users run it."""
    return subprocess.run(
        [sys.executable, "-m", f"apps.{app}", *args],
        cwd=ROOT,
        env=app_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
