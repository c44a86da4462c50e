"""Outputs that appear complete or not at all: write to a temporary name, then rename.

A run killed at any moment (SIGKILL, a pre-empted machine) must never leave a
half-written checkpoint, ``metrics.json`` or SavedModel under its final name,
because the next run trusts what it finds there. ``os.replace`` is atomic
within one filesystem, so the temporary name lives beside the final one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any


def temporary_name(path: str) -> str:
    """A sibling of ``path`` that keeps its suffix (Keras checks ``.keras`` / ``.weights.h5``)."""
    directory, name = os.path.split(os.path.abspath(path))
    stem, dot, suffix = name.partition(".")
    return os.path.join(directory, f".{stem}.tmp-{os.getpid()}{dot}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path to write ``path`` to; renames it into place on success.

    Works for a file or a directory. On an exception the temporary output is
    removed and ``path`` is left as it was.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_name(path)
    _remove(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            # A directory cannot replace a non-empty one; move the old one
            # aside first so the final name is never missing for long.
            old = temporary_name(path) + ".old"
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
