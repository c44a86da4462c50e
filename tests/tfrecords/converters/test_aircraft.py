"""The FGVC-Aircraft converter on a tiny 2013b layout, through the real writer."""

import os
import shutil

import numpy as np
import pytest

from tests.tfrecords.converters import fixtures
from tfrecords.converters import aircraft
from tfrecords.errors import BadRecord
from tfrecords.writer import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return fixtures.write_aircraft(str(tmp_path_factory.mktemp("aircraft")))


def _boxes(root: str) -> dict:
    """images_box.txt read independently: id -> 0-based inclusive box (README: (1,1) origin)."""
    with open(os.path.join(root, "data", "images_box.txt")) as file:
        rows = [line.split() for line in file if line.strip()]
    return {row[0]: tuple(float(v) - 1 for v in row[1:]) for row in rows}


def _split_ids(root: str, level: str, split: str) -> list[tuple[str, str]]:
    with open(os.path.join(root, "data", f"images_{level}_{split}.txt")) as file:
        return [tuple(line.rstrip("\n").split(" ", 1)) for line in file if line.strip()]


def test_variants_with_banner_cropped(dataset, tmp_path):
    root = dataset["root"]
    manifest = write_dataset(aircraft.make_source(root), str(tmp_path), workers=0, progress=False)
    assert manifest["class_names"] == dataset["variants"]
    boxes = _boxes(root)
    clipped = 0
    for split in ("train", "val", "test"):
        want = _split_ids(root, "variant", split)
        records = fixtures.read_records(str(tmp_path), split)
        assert [r["id"] for r in records] == [image_id for image_id, _ in want]
        for record, (image_id, variant) in zip(records, want, strict=True):
            size = dataset["images"][image_id]
            width, height = size["width"], size["height"] - 20
            assert (record["width"], record["height"], record["format"]) == (width, height, "jpeg")
            assert record["label"] == dataset["variants"].index(variant)
            assert record["label_text"] == variant
            np.testing.assert_allclose(
                record["boxes"], [fixtures.normalized(boxes[image_id], width, height)], atol=1e-6
            )
            clipped += boxes[image_id][3] > height - 1
            # The stored image is the original without its bottom 20 rows.
            with open(os.path.join(root, "data", "images", f"{image_id}.jpg"), "rb") as file:
                original = fixtures.decode_rgb(file.read())
            stored = fixtures.decode_rgb(record["image"])
            assert stored.shape == (height, width, 3)
            assert np.abs(stored.astype(int) - original[:height].astype(int)).mean() < 3
            assert stored[-1].mean() < 250  # no banner row left
        assert manifest["splits"][split]["num_records"] == len(want)
    assert clipped == 1
    assert manifest["splits"]["test"]["num_clipped_boxes"] == 1
    assert manifest["source"]["options"] == {"label_level": "variant", "crop_banner": True}


def test_family_level_without_crop(dataset, tmp_path):
    root = dataset["root"]
    source = aircraft.make_source(
        os.path.join(root, "data"), label_level="family", crop_banner=False
    )
    assert source.class_names == dataset["families"]
    manifest = write_dataset(source, str(tmp_path), workers=0, progress=False)
    boxes = _boxes(root)
    records = fixtures.read_records(str(tmp_path), "val")
    want = dict(_split_ids(root, "family", "val"))
    assert len(records) == len(want)
    for record in records:
        size = dataset["images"][record["id"]]
        assert record["label_text"] == want[record["id"]] == size["family"]
        assert record["label"] == dataset["families"].index(size["family"])
        assert (record["width"], record["height"]) == (size["width"], size["height"])
        with open(os.path.join(root, "data", "images", f"{record['id']}.jpg"), "rb") as file:
            assert record["image"] == file.read()
        np.testing.assert_allclose(
            record["boxes"],
            [fixtures.normalized(boxes[record["id"]], size["width"], size["height"])],
            atol=1e-6,
        )
    assert manifest["splits"]["test"]["num_clipped_boxes"] == 0


def test_bad_inputs_name_file_and_line(dataset, tmp_path):
    root = str(tmp_path / "fgvc-aircraft-2013b")
    shutil.copytree(dataset["root"], root)
    train = _split_ids(root, "variant", "train")
    images = os.path.join(root, "data", "images")
    os.remove(os.path.join(images, f"{train[1][0]}.jpg"))
    with open(os.path.join(images, f"{train[2][0]}.jpg"), "wb") as file:
        file.write(b"GIF89a broken")
    box_path = os.path.join(root, "data", "images_box.txt")
    with open(box_path) as file:
        lines = file.read().splitlines()
    number = next(k for k, line in enumerate(lines) if line.startswith(train[3][0]))
    lines[number] = f"{train[3][0]} 30 5 10 20"  # xmax < xmin
    with open(box_path, "w") as file:
        file.write("\n".join(lines) + "\n")

    items = aircraft.make_source(root).splits["train"]
    with pytest.raises(
        BadRecord, match=rf"(?s){train[1][0]}\.jpg.*images_variant_train\.txt line 2"
    ):
        aircraft.load(items[1])
    with pytest.raises(BadRecord, match=r"images_variant_train\.txt line 3\).*decode"):
        aircraft.load(items[2])
    with pytest.raises(BadRecord, match=rf"images_box\.txt line {number + 1}"):
        aircraft.load(items[3])
    manifest = write_dataset(
        aircraft.make_source(root), str(tmp_path / "out"), workers=0, skip_bad=True, progress=False
    )
    assert manifest["splits"]["train"]["num_skipped"] == 3
    assert manifest["splits"]["train"]["num_records"] == len(train) - 3

    with pytest.raises(ValueError, match="label_level"):
        aircraft.make_source(root, label_level="model")
    with open(os.path.join(root, "data", "images_variant_val.txt"), "a") as file:
        file.write("0000001 747-400\n")
    with pytest.raises(ValueError, match=r"images_variant_val\.txt line \d+: variant '747-400'"):
        aircraft.make_source(root)
