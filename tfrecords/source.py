"""What a converter hands the writer: class names, items per split, and a loader."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from tfrecords.schema import Record


@dataclasses.dataclass
class Source:
    """A dataset ready to be written by ``tfrecords.writer.write_dataset``.

    Attributes:
      name: converter name, e.g. ``"cub"``.
      class_names: index = label id.
      splits: split name -> items, in a deterministic order. Items are small
        and picklable (paths, ids, tuples): they travel to worker processes,
        and their ``repr`` fingerprints a shard so that an interrupted
        conversion can resume.
      load: a MODULE-LEVEL function (picklable; it runs in worker processes)
        taking one item and returning a ``Record``; raises ``BadRecord`` for
        an item that cannot be converted.
      info: written to ``manifest.json["source"]``: dataset name, data_dir,
        options, notes. JSON-serialisable.
      version: the converter's version, written to the manifest and part of
        each shard's fingerprint (bump it when a converter's output changes,
        so that re-running does not keep stale shards).
    """

    name: str
    class_names: list[str]
    splits: dict[str, list]
    load: Callable[[Any], Record]
    info: dict
    version: str = "1"
