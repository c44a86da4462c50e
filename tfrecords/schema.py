"""The one TFRecord schema of wsolkeras, and the one box convention.

Feature names are those of the TensorFlow Object Detection API:

| feature | type | meaning |
| --- | --- | --- |
| ``image/encoded`` | bytes | the image file (JPEG or PNG) as stored |
| ``image/format`` | bytes | ``jpeg`` or ``png`` |
| ``image/height``, ``image/width`` | int64 | size of the stored image |
| ``image/filename`` | bytes | path relative to the dataset root (for messages) |
| ``image/source_id`` | bytes | unique id within the dataset |
| ``image/class/label`` | int64 | class id (index into the manifest's ``class_names``) |
| ``image/class/text`` | bytes | class name |
| ``image/object/bbox/{xmin,ymin,xmax,ymax}`` | float, one per box | see below |
| ``image/segmentation/mask`` | bytes, optional | 1-channel PNG, > 0 = foreground |
| ``image/segmentation/ignore_mask`` | bytes, optional | 1-channel PNG, > 0 = ignore |

Box convention (fixed in docs/INTERFACES.md; this module is the one place
that converts, at the edges):

- A ``Record`` (what converters produce) holds *inclusive, 0-based* pixel
  boxes ``(x0, y0, x1, y1)`` of the stored image: ``x1`` is the last pixel
  column inside the box. The WSOL protocol counts boxes inclusively.
- Stored: ``xmin = x0 / W``, ``ymin = y0 / H``, ``xmax = x1 / W``,
  ``ymax = y1 / H``. A resize to ``S`` maps pixel ``x`` to ``x * S / W``,
  so a stored value ``v`` is the box at any size ``S`` as ``v * S``.
- In the pipeline and the library (``parse_example``, ``wsolkeras.data``):
  float32 ``(ymin, xmin, ymax, xmax)`` with the stored meaning, the order of
  TensorFlow's image ops.
- For the metrics: inclusive pixel boxes ``(x0, y0, x1, y1)`` at the
  evaluation size ``S`` via ``boxes_to_pixels``: ``floor(v * S + 1e-4)``,
  which is the protocol's ``floor(x * S / W)`` (the 1e-4 absorbs float32
  rounding of ``x / W`` for images narrower than 10,000 px).

TensorFlow is imported only by the functions that need it, so that the
writer's worker processes (which build ``Record``s) never load it.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np

from tfrecords.errors import BadRecord

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_FILENAME = "image/filename"
IMAGE_SOURCE_ID = "image/source_id"
CLASS_LABEL = "image/class/label"
CLASS_TEXT = "image/class/text"
BBOX_XMIN = "image/object/bbox/xmin"
BBOX_YMIN = "image/object/bbox/ymin"
BBOX_XMAX = "image/object/bbox/xmax"
BBOX_YMAX = "image/object/bbox/ymax"
MASK = "image/segmentation/mask"
IGNORE_MASK = "image/segmentation/ignore_mask"

IMAGE_FORMATS = ("jpeg", "png")
# PIL's names for the formats we store.
_PIL_FORMATS = {"JPEG": "jpeg", "PNG": "png", "MPO": "jpeg"}
# Offset that makes floor(v * S) equal floor(x * S / W) despite float32 v.
PIXEL_EPS = 1e-4


@dataclasses.dataclass
class Record:
    """One image as a converter produces it (boxes in pixels of THIS image).

    Attributes:
      image: encoded JPEG or PNG, as it will be stored.
      image_format: ``"jpeg"`` or ``"png"``.
      height, width: size of ``image`` in pixels.
      filename: path relative to the dataset root (used in messages).
      source_id: unique id within the dataset.
      label: class id.
      label_text: class name.
      boxes: float ``[N, 4]`` inclusive, 0-based pixel ``(x0, y0, x1, y1)``;
        ``N`` may be 0.
      mask_png: optional 1-channel PNG of the image's size, > 0 = foreground.
      ignore_png: optional 1-channel PNG of the image's size, > 0 = ignore.
    """

    image: bytes
    image_format: str
    height: int
    width: int
    filename: str
    source_id: str
    label: int
    label_text: str
    boxes: np.ndarray
    mask_png: bytes | None = None
    ignore_png: bytes | None = None


def clip_boxes(boxes: Any, width: int, height: int, *, where: str = "") -> tuple[np.ndarray, int]:
    """Clips inclusive pixel boxes to the image and counts the boxes changed.

    Args:
      boxes: ``[N, 4]`` inclusive pixel ``(x0, y0, x1, y1)``.
      width, height: image size; valid coordinates are ``0..W-1``, ``0..H-1``.
      where: the file (and line) the boxes come from, for the error message.

    Returns:
      ``(clipped float64 [N, 4], number of boxes that had to be clipped)``.

    Raises:
      BadRecord: a box with ``x1 < x0`` or ``y1 < y0``, a non-finite value,
        or a shape other than ``[N, 4]``.
    """
    place = f" in {where}" if where else ""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), np.float64), 0
    if array.ndim != 2 or array.shape[1] != 4:
        raise BadRecord(f"boxes{place} must be [N, 4] (x0, y0, x1, y1), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise BadRecord(f"a box{place} has a non-finite coordinate: {array.tolist()}")
    for x0, y0, x1, y1 in array:
        if x1 < x0 or y1 < y0:
            raise BadRecord(
                f"box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}){place} has x1 < x0 or "
                "y1 < y0: fix the annotation (boxes are inclusive pixel corners) or skip "
                "the record with --skip_bad"
            )
    clipped = array.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, width - 1)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, height - 1)
    n_clipped = int(np.sum(np.any(clipped != array, axis=1)))
    return clipped, n_clipped


def _image_info(data: bytes, what: str, where: str, *, decode: bool) -> tuple[str, int, int, str]:
    """(format, width, height, PIL mode) of an encoded image; decodes it fully when asked."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if decode:
                image.load()  # a truncated file fails here, not at Image.open
            return _PIL_FORMATS.get(image.format, str(image.format)), *image.size, image.mode
    except Exception as error:  # PIL raises several types for undecodable files
        raise BadRecord(
            f"{what} of {where} does not decode ({type(error).__name__}: {error}): "
            "replace the file or skip the record with --skip_bad"
        ) from None


def check_record(record: Record, *, decode: bool = True) -> tuple[Record, int]:
    """Validates a record and clips its boxes; no TensorFlow needed.

    Args:
      record: as a converter produced it.
      decode: decode the image and masks fully (catches truncated files).

    Returns:
      ``(record with clipped boxes, number of boxes clipped)``.

    Raises:
      BadRecord: naming ``record.filename`` and what is wrong.
    """
    where = record.filename or record.source_id
    if record.image_format not in IMAGE_FORMATS:
        raise BadRecord(
            f"{where}: image_format must be one of {IMAGE_FORMATS}, got {record.image_format!r}"
        )
    if int(record.height) <= 0 or int(record.width) <= 0:
        raise BadRecord(f"{where}: image size must be positive, got {record.width}x{record.height}")
    if int(record.label) < 0:
        raise BadRecord(f"{where}: label must be >= 0, got {record.label}")
    if not record.source_id:
        raise BadRecord(f"{where}: source_id is empty")
    if not isinstance(record.image, bytes | bytearray) or not record.image:
        raise BadRecord(f"{where}: the image is empty")
    if decode:
        fmt, width, height, _ = _image_info(record.image, "the image", where, decode=True)
        if fmt != record.image_format:
            raise BadRecord(
                f"{where}: the image is {fmt}, but the record says {record.image_format}"
            )
        if (width, height) != (int(record.width), int(record.height)):
            raise BadRecord(
                f"{where}: the image is {width}x{height} but the record (index) says "
                f"{record.width}x{record.height}: fix the size in the index"
            )
        for what, data in (("the mask", record.mask_png), ("the ignore mask", record.ignore_png)):
            if data is None:
                continue
            fmt, mask_w, mask_h, mode = _image_info(data, what, where, decode=True)
            if fmt != "png" or mode not in ("L", "1"):
                raise BadRecord(f"{where}: {what} must be a 1-channel PNG, got {fmt} mode {mode}")
            if (mask_w, mask_h) != (width, height):
                raise BadRecord(f"{where}: {what} is {mask_w}x{mask_h}, the image {width}x{height}")
    boxes, n_clipped = clip_boxes(record.boxes, int(record.width), int(record.height), where=where)
    return dataclasses.replace(record, boxes=boxes), n_clipped


def _tf():
    import tensorflow as tf

    return tf


def to_example(record: Record, *, decode: bool = False) -> Any:
    """Builds the ``tf.train.Example`` of a record (validated, boxes normalised).

    Boxes outside the image are clipped here too (use ``check_record`` first
    to count them). ``decode=True`` also decodes the image to check it.
    """
    tf = _tf()
    record, _ = check_record(record, decode=decode)
    width, height = float(record.width), float(record.height)
    boxes = record.boxes

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def strings(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    feature = {
        IMAGE_ENCODED: strings([bytes(record.image)]),
        IMAGE_FORMAT: strings([record.image_format.encode()]),
        IMAGE_HEIGHT: ints([int(record.height)]),
        IMAGE_WIDTH: ints([int(record.width)]),
        IMAGE_FILENAME: strings([record.filename.encode()]),
        IMAGE_SOURCE_ID: strings([record.source_id.encode()]),
        CLASS_LABEL: ints([int(record.label)]),
        CLASS_TEXT: strings([record.label_text.encode()]),
        BBOX_XMIN: floats((boxes[:, 0] / width).tolist()),
        BBOX_YMIN: floats((boxes[:, 1] / height).tolist()),
        BBOX_XMAX: floats((boxes[:, 2] / width).tolist()),
        BBOX_YMAX: floats((boxes[:, 3] / height).tolist()),
    }
    if record.mask_png is not None:
        feature[MASK] = strings([bytes(record.mask_png)])
    if record.ignore_png is not None:
        feature[IGNORE_MASK] = strings([bytes(record.ignore_png)])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def feature_spec() -> dict:
    """The parsing spec of the schema (``tf.io.parse_single_example``)."""
    tf = _tf()
    return {
        IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string),
        IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
        IMAGE_SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
        CLASS_LABEL: tf.io.FixedLenFeature([], tf.int64),
        CLASS_TEXT: tf.io.FixedLenFeature([], tf.string, default_value=""),
        BBOX_XMIN: tf.io.VarLenFeature(tf.float32),
        BBOX_YMIN: tf.io.VarLenFeature(tf.float32),
        BBOX_XMAX: tf.io.VarLenFeature(tf.float32),
        BBOX_YMAX: tf.io.VarLenFeature(tf.float32),
        MASK: tf.io.FixedLenFeature([], tf.string, default_value=""),
        IGNORE_MASK: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def parse_example(serialized: Any) -> dict:
    """Parses one serialized Example into tensors (works inside ``tf.data``).

    Returns a dict with ``image`` (the encoded string), ``format``,
    ``height``, ``width`` (int32), ``filename``, ``id`` (source id),
    ``label`` (int32), ``label_text``, ``boxes`` float32 ``[N, 4]`` ordered
    ``(ymin, xmin, ymax, xmax)`` (stored meaning), ``num_boxes`` (int32),
    ``mask_png`` and ``ignore_png`` (empty strings when absent).
    """
    tf = _tf()
    parsed = tf.io.parse_single_example(serialized, feature_spec())

    def dense(key):
        return tf.sparse.to_dense(parsed[key])

    boxes = tf.stack([dense(BBOX_YMIN), dense(BBOX_XMIN), dense(BBOX_YMAX), dense(BBOX_XMAX)], -1)
    return {
        "image": parsed[IMAGE_ENCODED],
        "format": parsed[IMAGE_FORMAT],
        "height": tf.cast(parsed[IMAGE_HEIGHT], tf.int32),
        "width": tf.cast(parsed[IMAGE_WIDTH], tf.int32),
        "filename": parsed[IMAGE_FILENAME],
        "id": parsed[IMAGE_SOURCE_ID],
        "label": tf.cast(parsed[CLASS_LABEL], tf.int32),
        "label_text": parsed[CLASS_TEXT],
        "boxes": tf.reshape(boxes, [-1, 4]),
        "num_boxes": tf.shape(boxes)[0],
        "mask_png": parsed[MASK],
        "ignore_png": parsed[IGNORE_MASK],
    }


def boxes_to_pixels(boxes: Any, num_boxes: Any, size: int | tuple[int, int]) -> list[np.ndarray]:
    """Pipeline boxes -> inclusive pixel boxes at the evaluation size, for the metrics.

    Args:
      boxes: ``[B, max_boxes, 4]`` float ``(ymin, xmin, ymax, xmax)`` (stored
        meaning), as ``wsolkeras.data`` yields them.
      num_boxes: ``[B]`` valid rows per image.
      size: evaluation size ``S``, or ``(height, width)``.

    Returns:
      One int64 array ``[num_boxes[i], 4]`` of ``(x0, y0, x1, y1)`` per image:
      ``floor(v * S + 1e-4)`` per coordinate, the protocol's
      ``floor(x * S / W)``.
    """
    height, width = (size, size) if np.isscalar(size) else size
    boxes = np.asarray(boxes, dtype=np.float64)
    num_boxes = np.asarray(num_boxes).reshape(-1)
    if boxes.ndim == 2:
        boxes = boxes[None]
    scale = np.array([height, width, height, width], np.float64)
    result = []
    for image_boxes, count in zip(boxes, num_boxes, strict=True):
        pixels = np.floor(image_boxes[: int(count)] * scale + PIXEL_EPS).astype(np.int64)
        pixels[:, [0, 2]] = np.clip(pixels[:, [0, 2]], 0, height - 1)
        pixels[:, [1, 3]] = np.clip(pixels[:, [1, 3]], 0, width - 1)
        result.append(pixels[:, [1, 0, 3, 2]])
    return result


def pixel_boxes_to_normalized(boxes: Any, width: int, height: int) -> np.ndarray:
    """Inclusive pixel ``(x0, y0, x1, y1)`` -> pipeline ``(ymin, xmin, ymax, xmax)`` (float32)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack(
        [boxes[:, 1] / height, boxes[:, 0] / width, boxes[:, 3] / height, boxes[:, 2] / width], -1
    ).astype(np.float32)
