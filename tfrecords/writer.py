"""Writes a ``Source`` as TFRecord shards plus ``manifest.json``; verifies a directory.

Layout of an output directory::

    manifest.json                        class names, counts, shards + sha256, source
    train-00000-of-00004.tfrecord        shards, ``records_per_shard`` records each
    ...
    .progress/<shard>.json               state of shards completed by an unfinished run

Images are loaded and checked (decoded) by the converter's ``load`` in worker
processes; the parent serializes them in order, so the output is identical
for any number of workers. Each shard is written under a temporary name and
renamed when complete, then its state (sha256, record count, fingerprint of
the items it holds) is recorded; re-running the same conversion keeps
complete shards whose checksum still matches, so an interrupted conversion
resumes. The manifest is written last, atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import struct
import sys
from collections.abc import Iterator
from typing import Any

from tfrecords import schema
from tfrecords.errors import BadRecord, ManifestError
from tfrecords.source import Source

WRITER_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS_DIR = ".progress"
FORMAT = "wsolkeras.tfrecords"
# Skipped-record messages kept per shard in the manifest (all are counted).
MAX_MESSAGES_PER_SHARD = 50
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")
_TEMP_MARK = ".tmp-"

log = logging.getLogger(__name__)


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``<split>-00000-of-000NN.tfrecord``."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def write_json_atomic(path: str, data: Any) -> None:
    """Writes JSON under a temporary name in the same folder, then renames it."""
    temp = f"{path}{_TEMP_MARK}{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=1, sort_keys=False)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def count_records(path: str) -> int:
    """Counts the records of a TFRecord file from its framing (no TensorFlow).

    Raises:
      ValueError: the file ends inside a record (truncated).
    """
    count = 0
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        offset = 0
        while offset < size:
            header = file.read(12)
            if len(header) < 12:
                raise ValueError(f"truncated record header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + 12 + length + 4
            if end > size:
                raise ValueError(
                    f"truncated record at byte {offset} (needs {end}, file has {size})"
                )
            file.seek(length + 4, os.SEEK_CUR)
            offset = end
            count += 1
    return count


def read_manifest(output_dir: str) -> dict:
    """Reads ``<output_dir>/manifest.json``.

    Raises:
      ManifestError: missing, unreadable, or not a wsolkeras manifest, with
        what to do.
    """
    path = os.path.join(output_dir, MANIFEST)
    if not os.path.isfile(path):
        raise ManifestError(
            f"{path} does not exist: {output_dir!r} is not a converted data set (or its "
            "conversion did not finish). Convert one with: python -m apps.convert "
            f"--dataset=NAME --data_dir=... --output_dir={output_dir}"
        )
    try:
        with open(path, encoding="utf-8") as file:
            manifest = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise ManifestError(
            f"{path} cannot be read ({error}): re-run the conversion with --overwrite"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f'{path} is not a wsolkeras manifest (no "format": "{FORMAT}")')
    return manifest


def _fingerprint(source: Source, split: str, index: int, num_shards: int, items: list) -> str:
    """Identifies what a shard holds: source, options, converter version and its items."""
    digest = hashlib.sha256()
    header = [WRITER_VERSION, source.name, source.version, source.class_names, source.info]
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    digest.update(f"|{split}|{index}|{num_shards}|".encode())
    for item in items:
        digest.update(repr(item).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# --- worker side: runs in child processes (no TensorFlow) --------------------

_LOAD = None


def _init_worker(load, single_threaded: bool = False) -> None:
    global _LOAD
    _LOAD = load
    if single_threaded:
        # One worker per core already: OpenCV's own thread pool would oversubscribe.
        import cv2

        cv2.setNumThreads(1)


def _load_one(item: Any) -> tuple:
    """(True, record, n_clipped) or (False, message) for a BadRecord."""
    try:
        record = _LOAD(item)
        if not isinstance(record, schema.Record):
            raise TypeError(f"load({item!r}) returned {type(record).__name__}, not a Record")
        record, n_clipped = schema.check_record(record, decode=True)
        return True, record, n_clipped
    except BadRecord as error:
        return False, str(error)
    except OSError as error:  # a converter that did not wrap a missing/unreadable file
        return False, f"item {item!r}: {error}"


# --- parent side --------------------------------------------------------------


def _shard_plan(source: Source, records_per_shard: int) -> list[dict]:
    plan = []
    for split, items in source.splits.items():
        items = list(items)
        num_shards = math.ceil(len(items) / records_per_shard)
        for index in range(num_shards):
            chunk = items[index * records_per_shard : (index + 1) * records_per_shard]
            plan.append(
                {
                    "split": split,
                    "index": index,
                    "file": shard_name(split, index, num_shards),
                    "items": chunk,
                    "fingerprint": _fingerprint(source, split, index, num_shards, chunk),
                }
            )
    return plan


def _previous_states(output_dir: str) -> dict[str, dict]:
    """Shard states from an earlier manifest and from an unfinished run's progress files."""
    states: dict[str, dict] = {}
    try:
        manifest = read_manifest(output_dir)
        for split in manifest.get("splits", {}).values():
            for shard in split.get("shards", []):
                states[shard["file"]] = shard
    except ManifestError:
        pass
    progress = os.path.join(output_dir, PROGRESS_DIR)
    if os.path.isdir(progress):
        for name in os.listdir(progress):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(progress, name), encoding="utf-8") as file:
                    state = json.load(file)
                states[state["file"]] = state
            except (OSError, json.JSONDecodeError, KeyError, TypeError):
                continue  # an unreadable state only means the shard is redone
    return states


def _is_complete(output_dir: str, shard: dict, state: dict | None, skip_bad: bool) -> bool:
    if not state or state.get("fingerprint") != shard["fingerprint"]:
        return False
    if state.get("num_skipped", 0) and not skip_bad:
        return False  # redo it so that the bad record is reported again
    path = os.path.join(output_dir, shard["file"])
    return os.path.isfile(path) and file_sha256(path) == state.get("sha256")


def _remove_stale_files(output_dir: str, splits: list[str], keep: set[str]) -> None:
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if ".tfrecord" + _TEMP_MARK in name or name.startswith(MANIFEST + _TEMP_MARK):
            os.remove(path)  # a file an interrupted run was writing
            continue
        match = _SHARD_RE.match(name)
        if match and match["split"] in splits and name not in keep:
            log.info("removing %s: not part of this conversion", name)
            os.remove(path)


def _results(load, items: Iterator, workers: int) -> Iterator[tuple]:
    """Loads items in order, in ``workers`` processes (0: in this process)."""
    if workers == 0:
        _init_worker(load)
        yield from map(_load_one, items)
        return
    # spawn, not fork: the parent may hold TensorFlow's or OpenCV's threads.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(load, True)) as pool:
        yield from pool.imap(_load_one, items, chunksize=8)


def _progress_bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with tensorflow-datasets
        return None
    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def write_dataset(
    source: Source,
    output_dir: str,
    *,
    records_per_shard: int = 512,
    workers: int | None = None,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict:
    """Writes ``source`` as TFRecord shards and ``manifest.json`` in ``output_dir``.

    Args:
      source: from a converter's ``make_source``.
      output_dir: created if needed.
      records_per_shard: items per shard (a shard holds fewer when records
        are skipped).
      workers: loader processes; ``None``: one per CPU; 0: load in this
        process.
      overwrite: rewrite every shard, even complete ones.
      skip_bad: skip records whose ``load`` raises ``BadRecord`` (counted,
        with their messages, in the manifest) instead of stopping.
      progress: show a progress bar on stderr.

    Returns:
      The manifest (also written to ``<output_dir>/manifest.json``).

    Raises:
      BadRecord: a bad record when ``skip_bad`` is False; shards completed
        before it are kept, so re-running after fixing the data resumes.
    """
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    if not source.class_names:
        raise ValueError(f"source {source.name!r} has no class names")
    for split in source.splits:
        if not re.fullmatch(r"[A-Za-z0-9_]+", split):
            raise ValueError(f"split name {split!r} must be letters, digits or '_'")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    os.makedirs(output_dir, exist_ok=True)
    progress_dir = os.path.join(output_dir, PROGRESS_DIR)
    os.makedirs(progress_dir, exist_ok=True)

    plan = _shard_plan(source, records_per_shard)
    previous = {} if overwrite else _previous_states(output_dir)
    _remove_stale_files(output_dir, list(source.splits), {shard["file"] for shard in plan})
    states: dict[str, dict] = {}
    for shard in plan:
        state = previous.get(shard["file"])
        if _is_complete(output_dir, shard, state, skip_bad):
            states[shard["file"]] = state
    pending = [shard for shard in plan if shard["file"] not in states]
    if len(states):
        log.info("%d of %d shards are complete and verified: kept", len(states), len(plan))

    total = sum(len(shard["items"]) for shard in pending)
    bar = _progress_bar(total, progress)
    results = _results(source.load, (item for s in pending for item in s["items"]), workers)
    try:
        for shard in pending:
            if bar is not None:
                bar.set_description(shard["split"])
            states[shard["file"]] = _write_shard(output_dir, shard, results, skip_bad, bar)
            write_json_atomic(
                os.path.join(progress_dir, shard["file"] + ".json"), states[shard["file"]]
            )
    finally:
        results.close()  # stops the worker pool when a bad record ends the run
        if bar is not None:
            bar.close()

    manifest = _manifest(source, plan, states, records_per_shard)
    for split, counts in manifest["splits"].items():
        if counts["num_clipped_boxes"]:
            log.warning(
                "%s: %d box(es) outside their image were clipped to it",
                split,
                counts["num_clipped_boxes"],
            )
        if counts["num_skipped"]:
            log.warning(
                "%s: %d bad record(s) skipped (listed in manifest.json)",
                split,
                counts["num_skipped"],
            )
    write_json_atomic(os.path.join(output_dir, MANIFEST), manifest)
    shutil.rmtree(progress_dir, ignore_errors=True)
    return manifest


def _write_shard(output_dir: str, shard: dict, results: Iterator, skip_bad: bool, bar) -> dict:
    import tensorflow as tf  # the parent only: workers never load it

    path = os.path.join(output_dir, shard["file"])
    temp = f"{path}{_TEMP_MARK}{os.getpid()}"
    state = {
        "file": shard["file"],
        "split": shard["split"],
        "num_records": 0,
        "num_skipped": 0,
        "num_clipped_boxes": 0,
        "num_masks": 0,
        "num_ignore_masks": 0,
        "max_boxes": 0,
        "num_with_boxes": 0,
        "skipped": [],
    }
    try:
        with tf.io.TFRecordWriter(temp) as writer:
            for _ in shard["items"]:
                result = next(results)
                if bar is not None:
                    bar.update(1)
                if not result[0]:
                    if not skip_bad:
                        raise BadRecord(
                            f"{result[1]}\n(conversion stopped; shards finished so far are kept "
                            "and re-running resumes; --skip_bad skips such records)"
                        )
                    state["num_skipped"] += 1
                    if len(state["skipped"]) < MAX_MESSAGES_PER_SHARD:
                        state["skipped"].append(result[1])
                    log.warning("skipped: %s", result[1])
                    continue
                _, record, n_clipped = result
                if n_clipped:
                    log.debug(
                        "%s: %d box(es) outside the image, clipped", record.filename, n_clipped
                    )
                writer.write(schema.to_example(record).SerializeToString(deterministic=True))
                state["num_records"] += 1
                state["num_clipped_boxes"] += n_clipped
                state["num_masks"] += record.mask_png is not None
                state["num_ignore_masks"] += record.ignore_png is not None
                state["max_boxes"] = max(state["max_boxes"], len(record.boxes))
                state["num_with_boxes"] += len(record.boxes) > 0
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    state["sha256"] = file_sha256(path)
    state["fingerprint"] = shard["fingerprint"]
    return state


def _manifest(source: Source, plan: list[dict], states: dict, records_per_shard: int) -> dict:
    splits = {}
    for split in source.splits:
        shards = [states[shard["file"]] for shard in plan if shard["split"] == split]
        total = sum(shard["num_records"] for shard in shards)
        num_masks = sum(shard["num_masks"] for shard in shards)
        num_ignore = sum(shard["num_ignore_masks"] for shard in shards)
        splits[split] = {
            "num_records": total,
            "num_items": len(source.splits[split]),
            "num_skipped": sum(shard["num_skipped"] for shard in shards),
            "num_clipped_boxes": sum(shard["num_clipped_boxes"] for shard in shards),
            "max_boxes": max([shard["max_boxes"] for shard in shards], default=0),
            "num_with_boxes": sum(shard.get("num_with_boxes", 0) for shard in shards),
            "has_masks": total > 0 and num_masks == total,
            "has_ignore_masks": total > 0 and num_ignore == total,
            "num_masks": num_masks,
            "num_ignore_masks": num_ignore,
            "skipped": [message for shard in shards for message in shard["skipped"]],
            "shards": [
                {
                    key: shard[key]
                    for key in (
                        "file",
                        "num_records",
                        "sha256",
                        "fingerprint",
                        "num_skipped",
                        "num_clipped_boxes",
                        "num_masks",
                        "num_ignore_masks",
                        "max_boxes",
                        "num_with_boxes",
                        "skipped",
                    )
                }
                for shard in shards
            ],
        }
    return {
        "format": FORMAT,
        "writer_version": WRITER_VERSION,
        "dataset": source.name,
        "converter_version": source.version,
        "source": source.info,
        "num_classes": len(source.class_names),
        "class_names": list(source.class_names),
        "records_per_shard": records_per_shard,
        "splits": splits,
    }


def verify(output_dir: str) -> list[str]:
    """Re-checks a converted directory against its manifest.

    Returns:
      Problems found, one sentence each naming the file (empty: all good):
      missing manifest or shard, sha256 mismatch, truncated shard, record
      count mismatch, shards on disk that the manifest does not list.
    """
    try:
        manifest = read_manifest(output_dir)
    except ManifestError as error:
        return [str(error)]
    problems = []
    listed = set()
    for split_name, split in manifest.get("splits", {}).items():
        total = 0
        for shard in split.get("shards", []):
            listed.add(shard["file"])
            path = os.path.join(output_dir, shard["file"])
            if not os.path.isfile(path):
                problems.append(f"{path}: missing (listed in the manifest); reconvert")
                continue
            if file_sha256(path) != shard["sha256"]:
                problems.append(
                    f"{path}: sha256 does not match the manifest (the shard is corrupted or "
                    "was changed); reconvert with --overwrite"
                )
            try:
                count = count_records(path)
            except ValueError as error:
                problems.append(f"{path}: {error}; reconvert with --overwrite")
                continue
            if count != shard["num_records"]:
                problems.append(
                    f"{path}: holds {count} records, the manifest says {shard['num_records']}"
                )
            total += shard["num_records"]
        if total != split.get("num_records"):
            problems.append(
                f"{output_dir}: split {split_name!r} shards hold {total} records, the manifest "
                f"says {split.get('num_records')}"
            )
    for name in sorted(os.listdir(output_dir)):
        if _SHARD_RE.match(name) and name not in listed:
            problems.append(f"{os.path.join(output_dir, name)}: a shard the manifest does not list")
    return problems


def shard_paths(output_dir: str, split: str, manifest: dict | None = None) -> list[tuple[str, int]]:
    """``[(path, num_records)]`` of a split's shards, from the manifest.

    Raises:
      ManifestError: the split does not exist (the message lists those that do).
    """
    manifest = manifest or read_manifest(output_dir)
    splits = manifest["splits"]
    if split not in splits:
        raise ManifestError(f"{output_dir} has no split {split!r}; it has {sorted(splits)}")
    return [
        (os.path.join(output_dir, shard["file"]), int(shard["num_records"]))
        for shard in splits[split]["shards"]
    ]
