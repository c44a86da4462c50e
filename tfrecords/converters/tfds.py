"""Any TFDS image dataset with a box feature, from a local TFDS data directory.

``tfds.builder(tfds_name, data_dir=data_dir)`` on an already prepared
dataset (``caltech_birds2011``, ``stanford_dogs``, ...); nothing is ever
downloaded: an unprepared dataset is an error that says how to prepare it.

Features used (found by type, so other datasets work too):

- the image: the ``image`` feature (an ``Image`` with 3 channels);
- the label: the ``label`` ``ClassLabel`` (else the only top-level one);
  class names from it, or, when it has no names (``caltech_birds2011``),
  from the ``label_name`` text feature, read once over the splits;
- the boxes: a top-level ``BBoxFeature`` (one box, ``caltech_birds2011``'s
  ``bbox``) or a ``BBoxFeature`` inside a ``Sequence`` (several boxes,
  ``stanford_dogs``' ``objects/bbox``);
- the mask: a 1-channel ``Image`` feature whose name contains ``mask``
  (``caltech_birds2011``'s ``segmentation_mask``), foreground where > 0.5,
  the rule the ``cub`` converter applies to the same PNGs.

Box rounding: TFDS stores ``(ymin, xmin, ymax, xmax)`` divided by the image
size as float32. We multiply by the image's width/height and round to the
nearest integer: ``x0 = round(xmin * W)``, ``x1 = round(xmax * W)`` (same
for y). The TFDS builders of CUB and Stanford Dogs divide integer pixel
values by the size, which this recovers exactly (float32 keeps them within
1e-4 pixel), so ``tfds`` + ``caltech_birds2011`` gives the boxes of the
``cub`` converter (``x + width`` at the right edge) and ``tfds`` +
``stanford_dogs`` those of the ``dogs`` converter. Coordinates at the edge
(``1.0 -> W``) are clipped to ``W - 1`` and counted, as in those converters.

The image bytes are stored as TFDS holds them (not re-encoded).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tfrecords.converters import common
from tfrecords.errors import BadRecord
from tfrecords.schema import Record
from tfrecords.source import Source

VERSION = "1"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which TFDS features hold the image, label, boxes and mask."""

    image: str
    label: str
    boxes: str  # "bbox" or "objects/bbox"
    boxes_in_sequence: bool
    mask: str | None
    label_name: str | None


@dataclasses.dataclass(frozen=True)
class TfdsItem:
    tfds_name: str
    data_dir: str
    split: str
    index: int
    layout: Layout


def make_source(data_dir: str, tfds_name: str) -> Source:
    """The ``Source`` of a prepared TFDS dataset (its splits, in TFDS order).

    Args:
      data_dir: the local TFDS data directory (``~/tensorflow_datasets``).
      tfds_name: the dataset's TFDS name, optionally with config/version
        (``caltech_birds2011``, ``stanford_dogs:0.2.0``).
    """
    if not tfds_name:
        raise ValueError("--tfds_name is required (e.g. caltech_birds2011, stanford_dogs)")
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    builder = _builder(tfds_name, data_dir)
    layout = feature_layout(builder.info.features, tfds_name)
    splits_info = builder.info.splits
    if not splits_info:
        raise ValueError(f"TFDS dataset {tfds_name} in {data_dir} lists no splits")
    splits = {
        _split_name(split): [
            TfdsItem(tfds_name, data_dir, split, index, layout)
            for index in range(splits_info[split].num_examples)
        ]
        for split in splits_info.keys()
    }
    label_feature = builder.info.features[layout.label]
    class_names = list(label_feature.names)
    if layout.label_name is not None and class_names == [str(k) for k in range(len(class_names))]:
        class_names = _names_from_examples(builder, layout, class_names)
    return Source(
        name="tfds",
        class_names=class_names,
        splits=splits,
        load=load,
        info={
            "dataset": f"tfds:{tfds_name}",
            "data_dir": data_dir,
            "options": {"tfds_name": tfds_name},
            "notes": (
                f"TFDS {builder.info.full_name}; image={layout.image}, label={layout.label}, "
                f"boxes={layout.boxes}, mask={layout.mask}; pixel box = round(v * size)"
            ),
        },
        version=VERSION,
    )


def feature_layout(features, tfds_name: str = "the dataset") -> Layout:
    """Finds the image, label, box and mask features of a TFDS ``FeaturesDict``.

    Raises:
      ValueError: no image, label or box feature, listing the features there are.
    """
    import tensorflow_datasets as tfds

    top = dict(features.items())
    described = ", ".join(f"{k}: {type(v).__name__}" for k, v in top.items())
    images = {k: v for k, v in top.items() if isinstance(v, tfds.features.Image)}
    image = "image" if "image" in images else None
    if image is None:
        rgb = [k for k, v in images.items() if v.shape[-1] == 3]
        image = rgb[0] if len(rgb) == 1 else None
    if image is None:
        raise ValueError(f"{tfds_name} has no 3-channel 'image' feature ({described})")
    labels = [k for k, v in top.items() if isinstance(v, tfds.features.ClassLabel)]
    label = "label" if "label" in labels else (labels[0] if len(labels) == 1 else None)
    if label is None:
        raise ValueError(f"{tfds_name} has no ClassLabel 'label' feature ({described})")

    boxes, in_sequence = None, False
    for key, feature in top.items():
        if isinstance(feature, tfds.features.BBoxFeature):
            boxes = key
            break
        if isinstance(feature, tfds.features.Sequence):
            inner = feature.feature
            if isinstance(inner, tfds.features.FeaturesDict):
                for sub_key, sub in inner.items():
                    if isinstance(sub, tfds.features.BBoxFeature):
                        boxes, in_sequence = f"{key}/{sub_key}", True
                        break
            elif isinstance(inner, tfds.features.BBoxFeature):
                boxes, in_sequence = key, True
        if boxes is not None:
            break
    if boxes is None:
        raise ValueError(
            f"{tfds_name} has no box feature (BBoxFeature, alone or in a Sequence): a WSOL "
            f"dataset needs boxes to evaluate ({described})"
        )
    masks = [k for k, v in images.items() if k != image and "mask" in k and v.shape[-1] == 1]
    label_name = "label_name" if isinstance(top.get("label_name"), tfds.features.Text) else None
    return Layout(
        image=image,
        label=label,
        boxes=boxes,
        boxes_in_sequence=in_sequence,
        mask=masks[0] if masks else None,
        label_name=label_name,
    )


def load(item: TfdsItem) -> Record:
    """Reads example ``item.index`` of a split into a ``Record``."""
    example = _example(item)
    layout = item.layout
    where = f"tfds {item.tfds_name} {item.split}[{item.index}]"
    data, fmt, width, height = common.stored_image(bytes(example[layout.image]), where=where)
    if layout.boxes_in_sequence and "/" in layout.boxes:
        outer, inner = layout.boxes.split("/")
        normalized = np.asarray(example[outer][inner], np.float64).reshape(-1, 4)
    else:
        normalized = np.asarray(example[layout.boxes], np.float64).reshape(-1, 4)
    # TFDS (ymin, xmin, ymax, xmax) in [0, 1] -> nearest pixel (x0, y0, x1, y1).
    boxes = np.rint(normalized[:, [1, 0, 3, 2]] * [width, height, width, height])
    for number, box in enumerate(boxes, start=1):
        common.check_box(box, where=f"{where} box {number}")
    mask = None
    if layout.mask is not None:
        values = common.gray_mask(
            bytes(example[layout.mask]), where=f"{where} {layout.mask}", size=(width, height)
        )
        mask = common.mask_png(values > 0.5)
    label = int(example[layout.label])
    filename = example.get("image/filename", b"")
    filename = filename.decode("utf-8", "replace") if isinstance(filename, bytes) else ""
    label_text = _label_text(item, label, example)
    return Record(
        image=data,
        image_format=fmt,
        height=height,
        width=width,
        filename=filename or f"{item.split}[{item.index}]",
        source_id=f"{item.split}/{item.index}" if not filename else filename,
        label=label,
        label_text=label_text,
        boxes=boxes,
        mask_png=mask,
    )


def _split_name(split: str) -> str:
    return split.replace("-", "_")


def _builder(tfds_name: str, data_dir: str):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as error:  # tfds raises its own types for unknown names
        raise ValueError(f"no TFDS dataset {tfds_name!r}: {error}") from None
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {tfds_name} is not prepared in {data_dir} (no "
            f"{builder.data_dir}). This converter never downloads: prepare it where you "
            f"have the data (`tfds build {tfds_name} --data_dir={data_dir}`, with "
            "--manual_dir for manual datasets) and point --data_dir at that folder"
        )
    return builder


def _dataset(tfds_name: str, data_dir: str, split: str, start: int, layout: Layout):
    """The split from example ``start`` on, with images and masks left encoded."""
    import tensorflow_datasets as tfds

    decoders = {layout.image: tfds.decode.SkipDecoding()}
    if layout.mask is not None:
        decoders[layout.mask] = tfds.decode.SkipDecoding()
    builder = _builder(tfds_name, data_dir)
    dataset = builder.as_dataset(
        split=f"{split}[{start}:]",
        shuffle_files=False,
        decoders=decoders,
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
    )
    return iter(tfds.as_numpy(dataset))


# Per worker process: an iterator per split and the index it yields next, so
# that a worker reading consecutive items reads the split sequentially; the
# writer hands each worker chunks of consecutive items, so it skips the other
# workers' chunks by reading on (cheap: images stay encoded) unless the gap is
# larger than _MAX_SKIP, where it reopens the split at the item.
_READERS: dict[tuple, list] = {}
_MAX_SKIP = 512


def _example(item: TfdsItem) -> dict:
    key = (item.tfds_name, item.data_dir, item.split)
    reader = _READERS.get(key)
    if reader is None or reader[1] > item.index or item.index - reader[1] > _MAX_SKIP:
        reader = _READERS[key] = [
            _dataset(item.tfds_name, item.data_dir, item.split, item.index, item.layout),
            item.index,
        ]
    iterator = reader[0]
    try:
        while reader[1] < item.index:
            next(iterator)
            reader[1] += 1
        example = next(iterator)
    except StopIteration:
        _READERS.pop(key, None)
        raise BadRecord(
            f"tfds {item.tfds_name} {item.split}[{item.index}]: the split ends before this "
            "example (its dataset_info.json does not match its files: re-prepare it)"
        ) from None
    reader[1] += 1
    return example


_NAMES: dict[tuple, list[str]] = {}


def _label_text(item: TfdsItem, label: int, example: dict) -> str:
    if item.layout.label_name is not None:
        value = example.get(item.layout.label_name, b"")
        if isinstance(value, bytes) and value:
            return value.decode("utf-8", "replace")
    key = (item.tfds_name, item.data_dir)
    if key not in _NAMES:
        builder = _builder(item.tfds_name, item.data_dir)
        _NAMES[key] = list(builder.info.features[item.layout.label].names)
    names = _NAMES[key]
    return names[label] if 0 <= label < len(names) else str(label)


def _names_from_examples(builder, layout: Layout, default: list[str]) -> list[str]:
    """Class names from the per-example ``label_name`` text (one pass, images not decoded)."""
    import tensorflow_datasets as tfds

    names = list(default)
    seen = set()
    decoders = {layout.image: tfds.decode.SkipDecoding()}
    if layout.mask is not None:
        decoders[layout.mask] = tfds.decode.SkipDecoding()
    for split in builder.info.splits.keys():
        dataset = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
        dataset = dataset.map(lambda ex: (ex[layout.label], ex[layout.label_name]))
        for label, name in tfds.as_numpy(dataset):
            label = int(label)
            if label not in seen and 0 <= label < len(names):
                names[label] = name.decode("utf-8", "replace")
                seen.add(label)
        if len(seen) == len(names):
            break
    return names
