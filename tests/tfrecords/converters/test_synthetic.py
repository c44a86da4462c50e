"""The synthetic creatures: end to end, exact boxes, determinism, classes differ in small parts."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfrecords import schema, writer
from tfrecords.converters import synthetic


def _decode(data: bytes, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def test_end_to_end_counts_classes_and_boxes_equal_the_box_of_the_mask(tmp_path):
    source = synthetic.make_source(
        num_classes=5, image_size=64, train_size=20, val_size=6, test_size=7, seed=11
    )
    manifest = writer.write_dataset(
        source, str(tmp_path), records_per_shard=8, workers=0, progress=False
    )
    assert manifest["class_names"] == synthetic.class_names(5)
    assert len(set(manifest["class_names"])) == 5
    counts = {name: split["num_records"] for name, split in manifest["splits"].items()}
    assert counts == {"train": 20, "val": 6, "test": 7}
    assert all(split["has_masks"] for split in manifest["splits"].values())
    assert writer.verify(str(tmp_path)) == []

    paths = [str(tmp_path / shard["file"]) for shard in manifest["splits"]["train"]["shards"]]
    labels = []
    for serialized in tf.data.TFRecordDataset(paths):
        parsed = {key: value.numpy() for key, value in schema.parse_example(serialized).items()}
        image = _decode(parsed["image"], cv2.IMREAD_COLOR)
        mask = _decode(parsed["mask_png"])
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert set(np.unique(mask)) == {0, 255}
        ys, xs = np.nonzero(mask)
        ((ymin, xmin, ymax, xmax),) = parsed["boxes"]
        stored = np.round(np.array([xmin, ymin, xmax, ymax]) * 64).astype(int).tolist()
        assert stored == [xs.min(), ys.min(), xs.max(), ys.max()]
        labels.append(int(parsed["label"]))
        assert parsed["label_text"].decode() == synthetic.class_names(5)[parsed["label"]]
    assert labels == [i % 5 for i in range(20)]


def test_deterministic_for_a_seed_and_different_across_seeds_and_splits():
    first = synthetic.load((7, "train", 3, 20, 96))
    again = synthetic.load((7, "train", 3, 20, 96))
    assert first.image == again.image and first.mask_png == again.mask_png
    assert synthetic.load((8, "train", 3, 20, 96)).image != first.image
    assert synthetic.load((7, "val", 3, 20, 96)).image != first.image
    assert synthetic.load((7, "train", 4, 20, 96)).image != first.image
    source = synthetic.make_source(num_classes=20, image_size=96, train_size=5, seed=7)
    assert source.splits["train"][3] == (7, "train", 3, 20, 96)


def test_classes_differ_only_in_the_small_parts():
    size = 128
    for pair in [(0, 1), (2, 7), (5, 13)]:
        images, parts, masks = [], [], []
        for label in pair:
            rng = np.random.default_rng(4)  # the same draws for both classes
            image, mask, part = synthetic.render(
                rng, label, size, 20, scale=0.7, plain_background=True, return_parts=True
            )
            images.append(image.astype(int))
            masks.append(mask)
            parts.append(part)
        differ = np.any(images[0] != images[1], axis=-1)
        # Anti-aliased edges reach a pixel beyond a part's mask, and a part hidden
        # under the head still tints the head's anti-aliased rim: allow 2 pixels.
        allowed = cv2.dilate(np.maximum(parts[0], parts[1]), np.ones((5, 5), np.uint8))
        assert differ.any()
        assert not np.any(differ & (allowed == 0)), pair
        # The body plan is shared: outside the parts the object masks agree.
        outside = allowed == 0
        assert np.array_equal(masks[0][outside], masks[1][outside])


def test_discriminative_parts_are_a_small_fraction_of_the_object():
    fractions = []
    for index in range(150):
        label = index % 20
        _, mask, part = synthetic.render(
            synthetic.image_rng(0, "train", index), label, 128, 20, scale=0.7, return_parts=True
        )
        fractions.append(part.sum() / mask.sum())
    fractions = np.array(fractions)
    assert fractions.max() <= 0.15, fractions.max()
    assert 0.03 <= fractions.mean() <= 0.12, fractions.mean()


def test_objects_have_the_documented_sizes_and_lie_inside_the_image():
    size = 96
    sides = []
    for index in range(200):
        _, mask = synthetic.render(synthetic.image_rng(1, "train", index), index % 20, size, 20)
        x0, y0, x1, y1 = synthetic.box_of_mask(mask)
        sides.append(max(x1 - x0 + 1, y1 - y0 + 1) / size)
    sides = np.array(sides)
    # The longest side of the creature's envelope (its body plan with the tallest
    # crest) is uniform in [15%, 70%]; a crestless creature is at most ~10% smaller,
    # and rasterising adds up to 2 px.
    assert sides.min() >= 0.9 * 0.15 - 2 / size and sides.max() <= 0.70 + 2 / size
    assert sides.min() < 0.25 and sides.max() > 0.6


def test_class_attributes_are_distinct_and_spread():
    attributes = synthetic.class_attributes(20)
    assert len(set(attributes)) == 20
    first16 = attributes[:16]
    distances = [
        sum(a != b for a, b in zip(p, q, strict=True))
        for i, p in enumerate(first16)
        for q in first16[i + 1 :]
    ]
    assert min(distances) >= 2
    with pytest.raises(ValueError, match="num_classes must be in"):
        synthetic.make_source(num_classes=81)


def test_preview_is_a_small_png(tmp_path):
    path = tmp_path / "preview.png"
    synthetic.preview(str(path), size=64)
    image = cv2.imread(str(path))
    assert image.shape == (3 * 64, 6 * 64, 3)
    assert path.stat().st_size < 200_000
