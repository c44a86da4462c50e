"""The writer: shards, manifest, resume after interruption, --overwrite, --verify, bad records."""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfrecords import schema, writer
from tfrecords.converters import synthetic
from tfrecords.errors import BadRecord
from tfrecords.source import Source

# Test hooks for the toy loader (it runs in this process: workers=0).
CALLS = []
FAIL_AFTER = {"calls": None}
BAD_ITEMS = set()


def toy_load(item: int) -> schema.Record:
    if FAIL_AFTER["calls"] is not None and len(CALLS) >= FAIL_AFTER["calls"]:
        raise RuntimeError("simulated interruption")
    CALLS.append(item)
    if item in BAD_ITEMS:
        raise BadRecord(f"images/{item}.png (index.txt line {item + 1}): file is missing")
    image = np.full((12, 16, 3), item, np.uint8)
    ok, png = cv2.imencode(".png", image)
    assert ok
    # Item 5's box sticks out of the image: it must be clipped and counted.
    boxes = np.array([[1, 2, 20 if item == 5 else 9, 8]], np.float64)
    return schema.Record(
        png.tobytes(),
        "png",
        12,
        16,
        f"images/{item}.png",
        f"id{item}",
        item % 3,
        f"class{item % 3}",
        boxes,
    )


@pytest.fixture(autouse=True)
def _reset_hooks():
    CALLS.clear()
    FAIL_AFTER["calls"] = None
    BAD_ITEMS.clear()
    yield


def _source(num_train=10, num_val=3) -> Source:
    return Source(
        name="toy",
        class_names=["class0", "class1", "class2"],
        splits={"train": list(range(num_train)), "val": list(range(100, 100 + num_val))},
        load=toy_load,
        info={"dataset": "toy", "data_dir": "/nowhere"},
        version="3",
    )


def _write(source, output_dir, **kwargs):
    kwargs = {"records_per_shard": 4, "workers": 0, "progress": False, **kwargs}
    return writer.write_dataset(source, str(output_dir), **kwargs)


def _ids(output_dir, split):
    manifest = writer.read_manifest(str(output_dir))
    paths = [
        os.path.join(output_dir, shard["file"]) for shard in manifest["splits"][split]["shards"]
    ]
    return [
        schema.parse_example(record)["id"].numpy().decode()
        for record in tf.data.TFRecordDataset(paths)
    ]


def test_shards_and_manifest(tmp_path):
    manifest = _write(_source(), tmp_path)
    names = sorted(name for name in os.listdir(tmp_path) if name.endswith(".tfrecord"))
    assert names == [
        "train-00000-of-00003.tfrecord",
        "train-00001-of-00003.tfrecord",
        "train-00002-of-00003.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
    assert not os.path.exists(tmp_path / writer.PROGRESS_DIR)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["class_names"] == ["class0", "class1", "class2"]
    assert manifest["dataset"] == "toy" and manifest["converter_version"] == "3"
    assert manifest["source"] == {"dataset": "toy", "data_dir": "/nowhere"}
    train = manifest["splits"]["train"]
    assert train["num_records"] == 10 and manifest["splits"]["val"]["num_records"] == 3
    assert [shard["num_records"] for shard in train["shards"]] == [4, 4, 2]
    assert train["num_clipped_boxes"] == 1 and train["num_skipped"] == 0
    assert train["num_with_boxes"] == 10 and train["max_boxes"] == 1
    for shard in train["shards"]:
        path = tmp_path / shard["file"]
        assert shard["sha256"] == writer.file_sha256(str(path))
        assert writer.count_records(str(path)) == shard["num_records"]
    assert _ids(tmp_path, "train") == [f"id{i}" for i in range(10)]
    assert writer.verify(str(tmp_path)) == []


def test_interrupted_conversion_resumes_without_duplicates(tmp_path):
    FAIL_AFTER["calls"] = 6  # dies inside the second shard
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _write(_source(), tmp_path)
    assert not (tmp_path / "manifest.json").exists()
    assert (tmp_path / "train-00000-of-00003.tfrecord").exists()
    assert not (tmp_path / "train-00001-of-00003.tfrecord").exists()
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    first_shard = (tmp_path / "train-00000-of-00003.tfrecord").read_bytes()
    # A killed run leaves its temporary file behind: the next run removes it.
    (tmp_path / "train-00001-of-00003.tfrecord.tmp-99999").write_bytes(b"partial")

    FAIL_AFTER["calls"] = None
    CALLS.clear()
    manifest = _write(_source(), tmp_path)
    assert CALLS == [4, 5, 6, 7, 8, 9, 100, 101, 102]  # the complete shard was kept
    assert (tmp_path / "train-00000-of-00003.tfrecord").read_bytes() == first_shard
    assert _ids(tmp_path, "train") == [f"id{i}" for i in range(10)]
    assert manifest["splits"]["train"]["num_records"] == 10
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    assert writer.verify(str(tmp_path)) == []

    # The same command again does nothing; --overwrite redoes everything.
    CALLS.clear()
    _write(_source(), tmp_path)
    assert CALLS == []
    _write(_source(), tmp_path, overwrite=True)
    assert sorted(CALLS) == [*range(10), 100, 101, 102]


def test_a_changed_shard_or_source_is_redone(tmp_path):
    _write(_source(), tmp_path)
    shard = tmp_path / "train-00001-of-00003.tfrecord"
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF
    shard.write_bytes(bytes(data))
    CALLS.clear()
    _write(_source(), tmp_path)
    assert CALLS == [4, 5, 6, 7]  # only the shard whose checksum no longer matches
    assert writer.verify(str(tmp_path)) == []
    # More items: different shard count, everything rewritten, stale shards removed.
    CALLS.clear()
    _write(_source(num_train=13), tmp_path)
    assert CALLS == list(range(13))  # val is unchanged: kept
    names = sorted(name for name in os.listdir(tmp_path) if name.startswith("train"))
    assert names == [f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    assert writer.verify(str(tmp_path)) == []


def test_verify_finds_corrupt_truncated_missing_and_stray_shards(tmp_path):
    _write(_source(), tmp_path)
    corrupt = tmp_path / "train-00000-of-00003.tfrecord"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0x01
    corrupt.write_bytes(bytes(data))
    truncated = tmp_path / "train-00001-of-00003.tfrecord"
    truncated.write_bytes(truncated.read_bytes()[:-10])
    (tmp_path / "val-00000-of-00001.tfrecord").unlink()
    (tmp_path / "train-00009-of-00010.tfrecord").write_bytes(b"")
    problems = writer.verify(str(tmp_path))
    text = "\n".join(problems)
    assert "train-00000-of-00003.tfrecord: sha256 does not match" in text
    assert "train-00001-of-00003.tfrecord: sha256 does not match" in text
    assert "train-00001-of-00003.tfrecord: truncated record" in text
    assert "val-00000-of-00001.tfrecord: missing" in text
    assert "train-00009-of-00010.tfrecord: a shard the manifest does not list" in text
    assert "train-00002" not in text


def test_verify_without_manifest(tmp_path):
    problems = writer.verify(str(tmp_path))
    assert len(problems) == 1 and "manifest.json does not exist" in problems[0]


def test_bad_record_stops_with_its_message_or_is_skipped_and_counted(tmp_path):
    BAD_ITEMS.add(6)
    with pytest.raises(BadRecord, match=r"(?s)images/6.png \(index.txt line 7\).*--skip_bad"):
        _write(_source(), tmp_path)
    assert (tmp_path / "train-00000-of-00003.tfrecord").exists()  # kept for the resume
    manifest = _write(_source(), tmp_path, skip_bad=True)
    train = manifest["splits"]["train"]
    assert train["num_skipped"] == 1 and train["num_records"] == 9
    assert train["skipped"] == ["images/6.png (index.txt line 7): file is missing"]
    assert _ids(tmp_path, "train") == [f"id{i}" for i in range(10) if i != 6]
    # Without --skip_bad a shard that skipped records is redone, so the error shows again.
    with pytest.raises(BadRecord, match="images/6.png"):
        _write(_source(), tmp_path)


def test_oserror_in_load_becomes_a_bad_record(tmp_path):
    source = _source()
    source.load = _missing_file_load
    with pytest.raises(BadRecord, match=r"item 0: .*No such file"):
        _write(source, tmp_path)


def _missing_file_load(item):
    with open(f"/nonexistent/{item}.jpg", "rb") as file:
        return file.read()


def test_worker_processes_give_identical_shards(tmp_path):
    source = synthetic.make_source(
        num_classes=4, image_size=48, train_size=24, val_size=0, test_size=0, seed=3
    )
    serial = writer.write_dataset(
        source, str(tmp_path / "a"), records_per_shard=10, workers=0, progress=False
    )
    parallel = writer.write_dataset(
        source, str(tmp_path / "b"), records_per_shard=10, workers=2, progress=False
    )
    assert [s["sha256"] for s in serial["splits"]["train"]["shards"]] == [
        s["sha256"] for s in parallel["splits"]["train"]["shards"]
    ]
    assert len(serial["splits"]["train"]["shards"]) == 3


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="records_per_shard"):
        _write(_source(), tmp_path, records_per_shard=0)
    source = _source()
    source.splits = {"train-all": [1]}
    with pytest.raises(ValueError, match="split name 'train-all'"):
        _write(source, tmp_path)
