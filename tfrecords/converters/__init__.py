"""The converters: one module per dataset source, each with ``make_source(data_dir, **options)``.

The registry is data: a converter's name -> its module's import path.
"""

from __future__ import annotations

import importlib
from types import ModuleType

CONVERTERS = {
    "synthetic": "tfrecords.converters.synthetic",
    "cub": "tfrecords.converters.cub",
    "aircraft": "tfrecords.converters.aircraft",
    "dogs": "tfrecords.converters.dogs",
    "wsol_metadata": "tfrecords.converters.wsol_metadata",
    "tfds": "tfrecords.converters.tfds",
    "folder": "tfrecords.converters.folder",
}


def get(name: str) -> ModuleType:
    """The converter module called ``name``.

    Raises:
      ValueError: an unknown name; the message lists the valid ones.
    """
    if name not in CONVERTERS:
        raise ValueError(
            f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(CONVERTERS))}"
        )
    return importlib.import_module(CONVERTERS[name])
