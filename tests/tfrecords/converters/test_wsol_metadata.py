"""The WSOL-metadata converter: box metadata (CUB/ImageNet style) and OpenImages masks."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.tfrecords.converters import fixtures
from tfrecords.converters import wsol_metadata
from tfrecords.errors import BadRecord
from tfrecords.writer import write_dataset


def _localization(path: str) -> dict:
    """localization.txt read independently: image id -> list of (x0, y0, x1, y1)."""
    boxes = {}
    with open(path) as file:
        for line in file:
            fields = line.strip().split(",")
            boxes.setdefault(fields[0], []).append(tuple(float(v) for v in fields[1:]))
    return boxes


def test_boxes_and_splits(tmp_path):
    data_dir, metadata_dir = str(tmp_path / "images"), str(tmp_path / "metadata")
    written = fixtures.write_wsol_boxes(data_dir, metadata_dir)
    source = wsol_metadata.make_source(data_dir, metadata_dir=metadata_dir)
    assert list(source.splits) == ["train", "val", "test"]
    assert source.class_names == ["class_0", "class_1"]
    manifest = write_dataset(source, str(tmp_path / "out"), workers=0, progress=False)
    for split, entries in written.items():
        records = fixtures.read_records(str(tmp_path / "out"), split)
        with open(os.path.join(metadata_dir, split, "image_ids.txt")) as file:
            assert [r["id"] for r in records] == file.read().split()
        loc_path = os.path.join(metadata_dir, split, "localization.txt")
        boxes = _localization(loc_path) if os.path.exists(loc_path) else {}
        for record, entry in zip(records, entries, strict=True):
            width, height = entry["width"], entry["height"]
            assert record["label"] == entry["label"]
            assert record["label_text"] == f"class_{entry['label']}"
            with open(os.path.join(data_dir, record["id"]), "rb") as file:
                assert record["image"] == file.read()
            want = boxes.get(record["id"], [])
            assert record["num_boxes"] == len(want) == len(entry["boxes"])
            if want:
                np.testing.assert_allclose(
                    record["boxes"],
                    [fixtures.normalized(b, width, height) for b in want],
                    atol=1e-6,
                )
    assert manifest["splits"]["val"]["max_boxes"] == 2
    assert manifest["splits"]["train"]["max_boxes"] == 0
    assert manifest["splits"]["test"]["num_clipped_boxes"] == 1


def test_openimages_masks(tmp_path):
    data_dir, metadata_dir = str(tmp_path / "images"), str(tmp_path / "metadata")
    written = fixtures.write_wsol_masks(data_dir, metadata_dir)
    with open(os.path.join(metadata_dir, "class_names.txt"), "w") as file:
        file.write("Cat\nDog\n")
    source = wsol_metadata.make_source(data_dir, metadata_dir=metadata_dir)
    assert source.class_names == ["Cat", "Dog"]
    manifest = write_dataset(source, str(tmp_path / "out"), workers=0, progress=False)
    for split, entries in written.items():
        assert manifest["splits"][split]["has_masks"]
        assert manifest["splits"][split]["has_ignore_masks"]
        records = fixtures.read_records(str(tmp_path / "out"), split)
        for record, entry in zip(records, entries, strict=True):
            width, height = entry["width"], entry["height"]
            # The protocol: union of instance masks > 0.5 (each at the image size,
            # nearest neighbour), ignore = ignore region minus foreground.
            union = np.zeros((height, width), bool)
            for _, array in entry["masks"]:
                if array.shape != (height, width):
                    array = np.asarray(
                        Image.fromarray(array).resize((width, height), Image.Resampling.NEAREST)
                    )
                union |= array > 0.5
            ignore = (entry["ignore"][1] > 0.5) & ~union
            np.testing.assert_array_equal(fixtures.decode_png(record["mask_png"]) > 0, union)
            np.testing.assert_array_equal(fixtures.decode_png(record["ignore_png"]) > 0, ignore)
            assert record["num_boxes"] == 0
            assert record["label_text"] == ["Cat", "Dog"][entry["label"]]
    two = [e for e in written["val"] if len(e["masks"]) == 2]
    assert two and two[0]["masks"][1][1].shape != (two[0]["height"], two[0]["width"])


def test_bad_inputs_name_file_and_line(tmp_path):
    data_dir, metadata_dir = str(tmp_path / "images"), str(tmp_path / "metadata")
    written = fixtures.write_wsol_boxes(data_dir, metadata_dir)
    test = written["test"]
    os.remove(os.path.join(data_dir, test[0]["id"]))
    with open(os.path.join(data_dir, test[1]["id"]), "wb") as file:
        file.write(b"\xff\xd8\xff garbage")
    loc = os.path.join(metadata_dir, "test", "localization.txt")
    with open(loc) as file:
        lines = file.read().splitlines()
    lines[2] = f"{test[2]['id']},20,5,4,9"  # x1 < x0
    with open(loc, "w") as file:
        file.write("\n".join(lines) + "\n")
    sizes = os.path.join(metadata_dir, "val", "image_sizes.txt")
    with open(sizes) as file:
        size_lines = file.read().splitlines()
    size_lines[1] = f"{written['val'][1]['id']},500,375"
    with open(sizes, "w") as file:
        file.write("\n".join(size_lines) + "\n")

    source = wsol_metadata.make_source(data_dir, metadata_dir=metadata_dir)
    items = source.splits["test"]
    with pytest.raises(BadRecord, match=rf"(?s){test[0]['id']}.*test/image_ids\.txt line 1"):
        wsol_metadata.load(items[0])
    with pytest.raises(BadRecord, match=r"test/image_ids\.txt line 2\).*decode"):
        wsol_metadata.load(items[1])
    with pytest.raises(BadRecord, match=r"test/localization\.txt line 3"):
        wsol_metadata.load(items[2])
    with pytest.raises(BadRecord, match=r"val/image_sizes\.txt line 2 says 500x375"):
        wsol_metadata.load(source.splits["val"][1])
    manifest = write_dataset(
        source, str(tmp_path / "out"), workers=0, skip_bad=True, progress=False
    )
    assert manifest["splits"]["test"]["num_skipped"] == 3
    assert manifest["splits"]["val"]["num_skipped"] == 1


def test_metadata_errors(tmp_path):
    data_dir, metadata_dir = str(tmp_path / "images"), str(tmp_path / "metadata")
    fixtures.write_wsol_boxes(data_dir, metadata_dir)
    with pytest.raises(FileNotFoundError, match="image_ids.txt"):
        wsol_metadata.make_source(data_dir, metadata_dir=data_dir + "/train")
    with open(os.path.join(metadata_dir, "val", "class_labels.txt"), "a") as file:
        file.write("val/x.jpg,one\n")
    with pytest.raises(ValueError, match=r"val/class_labels\.txt line 5: field 2"):
        wsol_metadata.make_source(data_dir, metadata_dir=metadata_dir)
    shutil.rmtree(os.path.join(metadata_dir, "val"))
    with open(os.path.join(metadata_dir, "test", "localization.txt"), "a") as file:
        file.write("test/a.jpg,1,2,3\n")
    with pytest.raises(ValueError, match=r"test/localization\.txt line \d+: expected"):
        wsol_metadata.make_source(data_dir, metadata_dir=metadata_dir)
