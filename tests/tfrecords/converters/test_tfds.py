"""The TFDS converter on tiny TFDS datasets prepared offline in a temporary data_dir.

The test builders have the feature layouts of TFDS's ``caltech_birds2011``
(one ``bbox``, ``segmentation_mask``, ``label_name``) and ``stanford_dogs``
(``objects/bbox``) and are built from the CUB and Stanford Dogs fixtures the
way those TFDS builders divide pixel boxes by the image size (clamped at
1.0). They are prepared without registering them, so the converter opens
them from their files, as it opens any prepared dataset. The real builders'
feature layouts are checked from their code (no data needed).
"""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.tfrecords.converters import fixtures
from tfrecords.converters import cub, dogs
from tfrecords.converters import tfds as tfds_converter
from tfrecords.writer import write_dataset

with tfds.core.registered.skip_registration():

    class WsolTinyBirds(tfds.core.GeneratorBasedBuilder):
        """caltech_birds2011's features, from a CUB-200-2011 fixture."""

        VERSION = tfds.core.Version("1.0.0")
        cub_root = ""
        segmentations = ""

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(),
                        "image/filename": tfds.features.Text(),
                        "label": tfds.features.ClassLabel(num_classes=3),
                        "label_name": tfds.features.Text(),
                        "bbox": tfds.features.BBoxFeature(),
                        "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples("1"), "test": self._generate_examples("0")}

        def _generate_examples(self, is_train):
            def table(name):
                with open(os.path.join(self.cub_root, name)) as file:
                    return {p[0]: p[1:] for p in (line.split() for line in file) if p}

            images, labels = table("images.txt"), table("image_class_labels.txt")
            splits, boxes = table("train_test_split.txt"), table("bounding_boxes.txt")
            for image_id, (path,) in images.items():
                if splits[image_id][0] != is_train:
                    continue
                image_path = os.path.join(self.cub_root, "images", path)
                width, height = fixtures.Image.open(image_path).size
                x, y, w, h = map(float, boxes[image_id])
                stem = os.path.splitext(path)[0]
                mask = fixtures.decode_png(
                    open(os.path.join(self.segmentations, stem + ".png"), "rb").read()
                )
                yield (
                    image_id,
                    {
                        "image": image_path,
                        "image/filename": path,
                        "label": int(labels[image_id][0]) - 1,
                        "label_name": path.split("/")[0].split(".", 1)[1].lower(),
                        "bbox": tfds.features.BBox(
                            ymin=y / height,
                            xmin=x / width,
                            ymax=min((y + h) / height, 1.0),
                            xmax=min((x + w) / width, 1.0),
                        ),
                        "segmentation_mask": mask[:, :, None],
                    },
                )

    class WsolTinyDogs(tfds.core.GeneratorBasedBuilder):
        """stanford_dogs' features, from a Stanford Dogs fixture."""

        VERSION = tfds.core.Version("1.0.0")
        images = {}
        root = ""

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(),
                        "image/filename": tfds.features.Text(),
                        "label": tfds.features.ClassLabel(
                            names=[f.split("-", 1)[1].lower() for f in fixtures.DOG_FOLDERS]
                        ),
                        "objects": tfds.features.Sequence({"bbox": tfds.features.BBoxFeature()}),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples("train"),
                "test": self._generate_examples("test"),
            }

        def _generate_examples(self, split):
            for file, info in sorted(self.images.items()):
                if info["split"] != split:
                    continue
                width, height = info["width"], info["height"]
                yield (
                    file,
                    {
                        "image": os.path.join(self.root, "Images", file),
                        "image/filename": file,
                        "label": info["label"] - 1,
                        "objects": [
                            {
                                "bbox": tfds.features.BBox(
                                    ymin=min(b[1] / height, 1.0),
                                    xmin=min(b[0] / width, 1.0),
                                    ymax=min(b[3] / height, 1.0),
                                    xmax=min(b[2] / width, 1.0),
                                )
                            }
                            for b in info["boxes"]
                        ],
                    },
                )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("tfds")
    cub_data = fixtures.write_cub(str(base / "cub"))
    dogs_data = fixtures.write_dogs(str(base / "dogs"))
    data_dir = str(base / "tensorflow_datasets")
    WsolTinyBirds.cub_root, WsolTinyBirds.segmentations = (
        cub_data["root"],
        cub_data["segmentations"],
    )
    WsolTinyDogs.images, WsolTinyDogs.root = dogs_data["images"], dogs_data["root"]
    for builder_class in (WsolTinyBirds, WsolTinyDogs):
        builder_class(data_dir=data_dir).download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return {"data_dir": data_dir, "cub": cub_data, "dogs": dogs_data}


def _by_id(records):
    return {record["id"]: record for record in records}


def test_birds_equal_cub_converter(prepared, tmp_path):
    source = tfds_converter.make_source(prepared["data_dir"], tfds_name="wsol_tiny_birds")
    assert source.class_names == ["black_footed_albatross", "laysan_albatross", "sooty_albatross"]
    assert source.splits["train"][0].layout.mask == "segmentation_mask"
    manifest = write_dataset(source, str(tmp_path / "tfds"), workers=2, progress=False)
    cub_data = prepared["cub"]
    reference = write_dataset(
        cub.make_source(cub_data["root"], segmentations_dir=cub_data["segmentations"]),
        str(tmp_path / "cub"),
        workers=0,
        progress=False,
    )
    for split in ("train", "test"):
        ours = _by_id(fixtures.read_records(str(tmp_path / "tfds"), split))
        theirs = _by_id(fixtures.read_records(str(tmp_path / "cub"), split))
        assert sorted(ours) == sorted(theirs)
        for image_id, record in ours.items():
            want = theirs[image_id]
            assert record["image"] == want["image"]  # the JPEG as TFDS holds it
            assert record["label"] == want["label"]
            assert record["label_text"] == source.class_names[want["label"]]
            np.testing.assert_array_equal(record["boxes"], want["boxes"])
            np.testing.assert_array_equal(
                fixtures.decode_png(record["mask_png"]), fixtures.decode_png(want["mask_png"])
            )
        assert manifest["splits"][split]["num_records"] == len(theirs)
        assert (
            manifest["splits"][split]["num_clipped_boxes"]
            == reference["splits"][split]["num_clipped_boxes"]
        )


def test_dogs_several_boxes_equal_dogs_converter(prepared, tmp_path):
    source = tfds_converter.make_source(prepared["data_dir"], tfds_name="wsol_tiny_dogs")
    assert source.class_names == ["chihuahua", "japanese_spaniel", "maltese_dog"]
    write_dataset(source, str(tmp_path / "tfds"), workers=0, progress=False)
    write_dataset(
        dogs.make_source(prepared["dogs"]["root"]),
        str(tmp_path / "dogs"),
        workers=0,
        progress=False,
    )
    box_counts = []
    for split in ("train", "test"):
        ours = _by_id(fixtures.read_records(str(tmp_path / "tfds"), split))
        theirs = _by_id(fixtures.read_records(str(tmp_path / "dogs"), split))
        assert sorted(ours) == sorted(theirs)
        for image_id, record in ours.items():
            assert record["num_boxes"] == theirs[image_id]["num_boxes"]
            np.testing.assert_array_equal(record["boxes"], theirs[image_id]["boxes"])
            assert record["label"] == theirs[image_id]["label"]
            assert record["mask_png"] == b""
            box_counts.append(int(record["num_boxes"]))
    assert 2 in box_counts and 1 in box_counts


def test_real_builders_layouts_and_no_download(tmp_path):
    birds = tfds.builder("caltech_birds2011", data_dir=str(tmp_path))
    layout = tfds_converter.feature_layout(birds.info.features)
    assert (layout.image, layout.label, layout.boxes, layout.mask, layout.label_name) == (
        "image",
        "label",
        "bbox",
        "segmentation_mask",
        "label_name",
    )
    dogs_layout = tfds_converter.feature_layout(
        tfds.builder("stanford_dogs", data_dir=str(tmp_path)).info.features
    )
    assert (dogs_layout.boxes, dogs_layout.boxes_in_sequence, dogs_layout.mask) == (
        "objects/bbox",
        True,
        None,
    )
    with pytest.raises(FileNotFoundError, match="not prepared.*never downloads"):
        tfds_converter.make_source(str(tmp_path), tfds_name="caltech_birds2011")
    with pytest.raises(ValueError, match="no box feature"):
        tfds_converter.feature_layout(tfds.builder("mnist", data_dir=str(tmp_path)).info.features)
