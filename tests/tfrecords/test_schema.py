"""The schema: round trip, the box convention, validation of bad records."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfrecords import schema
from tfrecords.errors import BadRecord


def _png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def _jpeg(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", array)
    assert ok
    return data.tobytes()


def _record(**overrides) -> schema.Record:
    rng = np.random.default_rng(0)
    height, width = 30, 50
    mask = np.zeros((height, width), np.uint8)
    mask[5:20, 10:40] = 255
    ignore = np.zeros((height, width), np.uint8)
    ignore[0:3, 0:3] = 255
    fields = dict(
        image=_png(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)),
        image_format="png",
        height=height,
        width=width,
        filename="images/bird 1.png",
        source_id="bird_1",
        label=7,
        label_text="Crested Auklet",
        boxes=np.array([[10, 5, 39, 19], [0, 0, 49, 29]], np.float64),
        mask_png=_png(mask),
        ignore_png=_png(ignore),
    )
    fields.update(overrides)
    return schema.Record(**fields)


def test_round_trip_gives_back_the_values():
    record = _record()
    serialized = schema.to_example(record, decode=True).SerializeToString()
    parsed = {key: value.numpy() for key, value in schema.parse_example(serialized).items()}
    assert parsed["image"] == record.image
    assert parsed["format"] == b"png"
    assert (parsed["height"], parsed["width"]) == (30, 50)
    assert parsed["filename"] == b"images/bird 1.png"
    assert parsed["id"] == b"bird_1"
    assert parsed["label"] == 7 and parsed["label_text"] == b"Crested Auklet"
    assert parsed["mask_png"] == record.mask_png and parsed["ignore_png"] == record.ignore_png
    assert parsed["num_boxes"] == 2
    # Stored meaning: inclusive pixel / size, pipeline order (ymin, xmin, ymax, xmax).
    expected = np.array([[5 / 30, 10 / 50, 19 / 30, 39 / 50], [0, 0, 29 / 30, 49 / 50]])
    np.testing.assert_allclose(parsed["boxes"], expected, rtol=1e-6)


def test_feature_names_are_the_object_detection_apis():
    example = schema.to_example(_record())
    keys = set(example.features.feature)
    assert {
        "image/encoded",
        "image/format",
        "image/height",
        "image/width",
        "image/filename",
        "image/source_id",
        "image/class/label",
        "image/class/text",
        "image/object/bbox/xmin",
        "image/object/bbox/ymin",
        "image/object/bbox/xmax",
        "image/object/bbox/ymax",
        "image/segmentation/mask",
        "image/segmentation/ignore_mask",
    } == keys
    # xmin holds x0 / W.
    xmin = example.features.feature["image/object/bbox/xmin"].float_list.value
    np.testing.assert_allclose(xmin, [10 / 50, 0.0], rtol=1e-6)


def test_optional_masks_absent_parse_as_empty_and_no_boxes_is_allowed():
    record = _record(mask_png=None, ignore_png=None, boxes=np.zeros((0, 4)))
    parsed = schema.parse_example(schema.to_example(record).SerializeToString())
    assert parsed["mask_png"].numpy() == b"" and parsed["ignore_png"].numpy() == b""
    assert parsed["num_boxes"].numpy() == 0
    assert parsed["boxes"].shape == (0, 4)


def test_boxes_to_pixels_is_the_protocols_floor_rule():
    rng = np.random.default_rng(1)
    for _ in range(300):
        width, height = rng.integers(20, 3000, 2)
        size = int(rng.choice([224, 448, 96, 500]))
        x0, x1 = np.sort(rng.integers(0, width, 2))
        y0, y1 = np.sort(rng.integers(0, height, 2))
        record = _record(
            image=_png(np.zeros((2, 2, 3), np.uint8)),
            height=int(height),
            width=int(width),
            boxes=np.array([[x0, y0, x1, y1]]),
            mask_png=None,
            ignore_png=None,
        )
        parsed = schema.parse_example(schema.to_example(record).SerializeToString())
        pixels = schema.boxes_to_pixels(
            parsed["boxes"].numpy()[None], [parsed["num_boxes"].numpy()], size
        )
        # The protocol: floor(x * S / W) in integers, per axis.
        expected = [
            x0 * size // width,
            y0 * size // height,
            x1 * size // width,
            y1 * size // height,
        ]
        assert pixels[0].tolist() == [expected], (width, height, size)


def test_boxes_to_pixels_pads_and_rectangular_sizes():
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0] = [0.1, 0.2, 0.5, 0.9]
    boxes[1, :2] = [[0.0, 0.0, 0.99, 0.99], [0.25, 0.25, 0.5, 0.5]]
    pixels = schema.boxes_to_pixels(boxes, [1, 2], (100, 200))
    assert pixels[0].tolist() == [[40, 10, 180, 50]]
    assert pixels[1].tolist() == [[0, 0, 198, 99], [50, 25, 100, 50]]


def test_pixel_boxes_to_normalized_matches_to_example():
    record = _record()
    parsed = schema.parse_example(schema.to_example(record).SerializeToString())
    np.testing.assert_allclose(
        schema.pixel_boxes_to_normalized(record.boxes, record.width, record.height),
        parsed["boxes"].numpy(),
        rtol=1e-6,
    )


def test_clip_boxes_clips_and_counts():
    boxes = np.array([[-5, 2, 10, 10], [0, 0, 49, 29], [40, 20, 60, 35], [3, 3, 4, 4]])
    clipped, count = schema.clip_boxes(boxes, 50, 30)
    assert count == 2
    assert clipped.tolist() == [[0, 2, 10, 10], [0, 0, 49, 29], [40, 20, 49, 29], [3, 3, 4, 4]]


def test_inverted_box_is_an_error_naming_the_line():
    with pytest.raises(BadRecord, match=r"bounding_boxes.txt:12.*x1 < x0"):
        schema.clip_boxes([[10, 0, 5, 4]], 50, 30, where="bounding_boxes.txt:12")
    with pytest.raises(BadRecord, match=r"y1 < y0"):
        schema.clip_boxes([[0, 9, 5, 4]], 50, 30)


def test_check_record_rejects_bad_images_naming_the_file():
    good = _record()
    truncated = _jpeg(np.full((30, 50, 3), 128, np.uint8))[:200]
    cases = {
        "does not decode": dict(image=truncated, image_format="jpeg"),
        r"says 60x30": dict(width=60),
        "is png, but the record says jpeg": dict(image_format="jpeg"),
        "mask is 10x10": dict(mask_png=_png(np.zeros((10, 10), np.uint8))),
        "1-channel PNG": dict(mask_png=_png(np.zeros((30, 50, 3), np.uint8))),
        "image_format must be": dict(image_format="gif"),
    }
    for message, override in cases.items():
        with pytest.raises(BadRecord, match=message) as info:
            schema.check_record(_record(**override))
        assert good.filename in str(info.value)


def test_check_record_counts_clipped_boxes():
    record, count = schema.check_record(_record(boxes=np.array([[10, 5, 80, 19]])))
    assert count == 1 and record.boxes.tolist() == [[10, 5, 49, 19]]


def test_parse_example_runs_inside_tf_data():
    serialized = [schema.to_example(_record(label=i)).SerializeToString() for i in range(3)]
    labels = [
        int(element["label"])
        for element in tf.data.Dataset.from_tensor_slices(serialized).map(schema.parse_example)
    ]
    assert labels == [0, 1, 2]
