"""The Stanford Dogs converter on a tiny published layout (.mat lists, VOC XML), real writer."""

import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import scipy.io

from tests.tfrecords.converters import fixtures
from tfrecords.converters import dogs
from tfrecords.errors import BadRecord
from tfrecords.writer import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return fixtures.write_dogs(str(tmp_path_factory.mktemp("dogs")))


def _xml_boxes(path: str) -> list[tuple[float, ...]]:
    """Every <object>'s bndbox, read independently of the converter."""
    root = ET.parse(path).getroot()
    return [
        tuple(float(obj.find(f"bndbox/{tag}").text) for tag in ("xmin", "ymin", "xmax", "ymax"))
        for obj in root.findall("object")
    ]


def test_conversion(dataset, tmp_path):
    root = dataset["root"]
    manifest = write_dataset(dogs.make_source(root), str(tmp_path), workers=0, progress=False)
    assert manifest["class_names"] == ["Chihuahua", "Japanese_spaniel", "Maltese_dog"]
    clipped = 0
    two_dogs = 0
    for split in ("train", "test"):
        mat = scipy.io.loadmat(os.path.join(root, f"{split}_list.mat"))
        files = [str(cell[0][0]) for cell in mat["file_list"]]
        labels = mat["labels"].ravel().astype(int)
        records = fixtures.read_records(str(tmp_path), split)
        assert [r["id"] for r in records] == files  # the .mat order
        assert manifest["splits"][split]["num_records"] == len(files)
        for record, file, label in zip(records, files, labels, strict=True):
            size = dataset["images"][file]
            width, height = size["width"], size["height"]
            assert record["label"] == label - 1
            assert record["label_text"] == manifest["class_names"][label - 1]
            with open(os.path.join(root, "Images", file), "rb") as handle:
                assert record["image"] == handle.read()
            annotation = os.path.join(root, "Annotation", os.path.splitext(file)[0])
            boxes = _xml_boxes(annotation)  # taken as 0-based inclusive, as they are
            assert record["num_boxes"] == len(boxes)
            np.testing.assert_allclose(
                record["boxes"], [fixtures.normalized(b, width, height) for b in boxes], atol=1e-6
            )
            clipped += sum(b[2] > width - 1 or b[3] > height - 1 for b in boxes)
            two_dogs += len(boxes) == 2
    assert two_dogs >= 2 and clipped >= 1
    assert sum(s["num_clipped_boxes"] for s in manifest["splits"].values()) == clipped
    assert max(s["max_boxes"] for s in manifest["splits"].values()) == 2


def test_bad_inputs_name_file_and_entry(dataset, tmp_path):
    root = str(tmp_path / "dogs")
    shutil.copytree(dataset["root"], root)
    items = dogs.make_source(root).splits["train"]
    os.remove(os.path.join(root, "Images", items[0].file))
    with pytest.raises(BadRecord, match=rf"(?s){items[0].file}.*train_list\.mat entry 1"):
        dogs.load(items[0])
    with open(os.path.join(root, "Images", items[1].file), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(BadRecord, match=r"train_list\.mat entry 2\).*decode"):
        dogs.load(items[1])
    annotation = os.path.join(root, "Annotation", items[2].annotation)
    size = dataset["images"][items[2].file]
    with open(annotation, "w") as handle:
        handle.write(
            fixtures.voc_xml("x", size["width"], size["height"], [(2, 3, 20, 30), (25, 9, 12, 30)])
        )  # 2nd: xmax < xmin
    with pytest.raises(BadRecord, match=rf"(?s){items[2].annotation}.*entry 3.*<object> 2"):
        dogs.load(items[2])
    os.remove(os.path.join(root, "Annotation", items[3].annotation))
    with pytest.raises(BadRecord, match=rf"(?s)Annotation.*{items[3].annotation}.*entry 4"):
        dogs.load(items[3])
    manifest = write_dataset(
        dogs.make_source(root), str(tmp_path / "out"), workers=0, skip_bad=True, progress=False
    )
    assert manifest["splits"]["train"]["num_skipped"] == 4


def test_inconsistent_lists(dataset, tmp_path):
    root = str(tmp_path / "dogs")
    shutil.copytree(dataset["root"], root)
    mat = scipy.io.loadmat(os.path.join(root, "test_list.mat"))
    mat["labels"][0, 0] = 2  # a Chihuahua file under the Japanese spaniel's label
    scipy.io.savemat(
        os.path.join(root, "test_list.mat"),
        {k: v for k, v in mat.items() if not k.startswith("__")},
    )
    with pytest.raises(ValueError, match=r"test_list\.mat entry 1: label 2"):
        dogs.make_source(root)
    with pytest.raises(FileNotFoundError, match="train_list.mat"):
        dogs.make_source(str(tmp_path))
