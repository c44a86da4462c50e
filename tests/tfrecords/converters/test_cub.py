"""The CUB converter on a tiny CUB-200-2011 (folder and .tgz), through the real writer."""

import os
import pickle
import shutil

import numpy as np
import pytest

from tests.tfrecords.converters import fixtures
from tfrecords.converters import cub
from tfrecords.errors import BadRecord
from tfrecords.writer import write_dataset


def _expected(root: str) -> dict:
    """Per image path, read independently from the fixture's index files."""

    def table(name):
        with open(os.path.join(root, name)) as file:
            return {int(p[0]): p[1:] for p in (line.split() for line in file) if p}

    images, labels = table("images.txt"), table("image_class_labels.txt")
    splits, boxes = table("train_test_split.txt"), table("bounding_boxes.txt")
    expected = {}
    for image_id, (path,) in images.items():
        x, y, w, h = map(float, boxes[image_id])
        expected[path] = {
            "label": int(labels[image_id][0]) - 1,
            "split": "train" if splits[image_id][0] == "1" else "test",
            "box": (x, y, x + w, y + h),  # the protocol's localization.txt derivation
        }
    return expected


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return fixtures.write_cub(str(tmp_path_factory.mktemp("cub")))


def _check(output_dir, manifest, dataset, *, masks):
    root = dataset["root"]
    expected = _expected(root)
    sizes = {image["path"]: image for image in dataset["images"]}
    assert manifest["class_names"] == [
        "Black_footed_Albatross",
        "Laysan_Albatross",
        "Sooty_Albatross",
    ]
    clipped = 0
    for split in ("train", "test"):
        want = [path for path, e in expected.items() if e["split"] == split]
        records = fixtures.read_records(output_dir, split)
        assert manifest["splits"][split]["num_records"] == len(want) == len(records)
        assert sorted(r["id"] for r in records) == sorted(want)
        for record in records:
            e, size = expected[record["id"]], sizes[record["id"]]
            width, height = size["width"], size["height"]
            assert record["label"] == e["label"]
            assert record["label_text"] == manifest["class_names"][e["label"]]
            assert (record["width"], record["height"]) == (width, height)
            with open(os.path.join(root, "images", record["id"]), "rb") as file:
                assert record["image"] == file.read()  # stored as published, not re-encoded
            np.testing.assert_allclose(
                record["boxes"], [fixtures.normalized(e["box"], width, height)], atol=1e-6
            )
            clipped += e["box"][2] > width - 1 or e["box"][3] > height - 1
            if masks:
                png = os.path.join(
                    dataset["segmentations"], os.path.splitext(record["id"])[0] + ".png"
                )
                with open(png, "rb") as file:
                    gray = fixtures.decode_png(file.read())
                stored = fixtures.decode_png(record["mask_png"])
                np.testing.assert_array_equal(stored > 0, gray > 0.5)
                assert 0 < (gray > 0).sum() and (0 < gray).sum() > (gray == 255).sum()
            else:
                assert record["mask_png"] == b""
        assert manifest["splits"][split]["has_masks"] == masks
    assert clipped == 1
    assert sum(s["num_clipped_boxes"] for s in manifest["splits"].values()) == 1


def test_folder_with_segmentations(dataset, tmp_path):
    source = cub.make_source(
        os.path.dirname(dataset["root"]), segmentations_dir=dataset["segmentations"]
    )
    manifest = write_dataset(source, str(tmp_path), workers=0, progress=False)
    _check(str(tmp_path), manifest, dataset, masks=True)


def test_tgz_equals_folder_in_worker_processes(dataset, tmp_path):
    # Members stored in reverse order: the converter must still find each one.
    archive = fixtures.tar_folder(dataset["root"], str(tmp_path / "CUB_200_2011.tgz"), reverse=True)
    masks = fixtures.tar_folder(dataset["segmentations"], str(tmp_path / "segmentations.tgz"))
    source = cub.make_source(archive, segmentations_dir=masks)
    items = source.splits["train"]
    assert pickle.loads(pickle.dumps(items)) == items
    assert [item.offset for item in items] == sorted(item.offset for item in items)
    output = str(tmp_path / "out")
    manifest = write_dataset(source, output, workers=2, records_per_shard=3, progress=False)
    _check(output, manifest, dataset, masks=True)


def test_bad_inputs_name_file_and_line(dataset, tmp_path):
    root = str(tmp_path / "CUB_200_2011")
    shutil.copytree(dataset["root"], root)
    source = cub.make_source(root)
    items = {item.image_id: item for split in source.splits.values() for item in split}

    os.remove(os.path.join(root, "images", items[2].path))  # listed but missing
    with pytest.raises(BadRecord, match=r"(?s)" + items[2].path + r".*images\.txt line 2"):
        cub.load(items[2])

    with open(os.path.join(root, "images", items[4].path), "wb") as file:
        file.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(BadRecord, match=r"(?s)" + items[4].path + r".*images\.txt line 4.*decode"):
        cub.load(items[4])

    with open(os.path.join(root, "bounding_boxes.txt")) as file:
        lines = file.read().splitlines()
    lines[4] = "5 30.0 4.0 -3.0 10.0"  # negative width: x1 < x0
    with open(os.path.join(root, "bounding_boxes.txt"), "w") as file:
        file.write("\n".join(lines) + "\n")
    bad_box = {i.image_id: i for s in cub.make_source(root).splits.values() for i in s}[5]
    with pytest.raises(BadRecord, match=r"bounding_boxes\.txt line 5"):
        cub.load(bad_box)

    segmentations = str(tmp_path / "segmentations")
    shutil.copytree(dataset["segmentations"], segmentations)
    first = cub.make_source(root, segmentations_dir=segmentations).splits["train"][0]
    os.remove(first.mask_path)
    with pytest.raises(BadRecord, match=rf"(?s){first.mask_path}.*images\.txt line 1\)"):
        cub.load(first)

    manifest = write_dataset(
        cub.make_source(root), str(tmp_path / "out"), workers=0, skip_bad=True, progress=False
    )
    assert sum(s["num_skipped"] for s in manifest["splits"].values()) == 3
    assert sum(s["num_records"] for s in manifest["splits"].values()) == len(items) - 3
    with pytest.raises(BadRecord, match=r"\(listed in images\.txt line \d+\)"):
        write_dataset(cub.make_source(root), str(tmp_path / "out2"), workers=0, progress=False)


def test_layout_errors(tmp_path, dataset):
    with pytest.raises(FileNotFoundError, match="images.txt"):
        cub.make_source(str(tmp_path))
    root = str(tmp_path / "CUB_200_2011")
    shutil.copytree(dataset["root"], root)
    with open(os.path.join(root, "image_class_labels.txt"), "a") as file:
        file.write("3 9\n")  # a class id classes.txt does not have (repeated id 3)
    with pytest.raises(ValueError, match=r"image_class_labels\.txt line \d+: class id 9"):
        cub.make_source(root)
