"""Datasets described by the WSOL protocol's metadata files (Choe et al. 2020).

``metadata_dir`` holds one folder per split (``train/``, ``val/``, ``test/``)
with ``image_ids.txt`` (one path a line, relative to ``data_dir``),
``class_labels.txt`` (``path,label``), ``image_sizes.txt`` (``path,W,H``;
optional) and ``localization.txt`` (optional: the weakly supervised train
splits have none), either with boxes ``path,x0,y0,x1,y1`` (one line per box)
or OpenImages-style masks ``path,mask_path,ignore_path`` (one line per
instance mask; the ignore path only on an image's first line).

This is how the protocol publishes its CUB (with the CUBV2 ``val``),
ImageNet and OpenImages splits, so converting with this converter gives
exactly the protocol's splits, labels and boxes.

Conventions:

- Splits: every sub-folder of ``metadata_dir`` with an ``image_ids.txt``,
  named after the folder (``train``, ``val``, ``test``); order of
  ``image_ids.txt``.
- Labels: ``class_labels.txt``'s integers as they are. Class names are not
  part of the format: when ``metadata_dir/class_names.txt`` exists (one name
  a line, line ``k`` = label ``k - 1``) it is used, else the names are
  ``class_<id>`` for ids ``0 .. max label``.
- Boxes: ``x0,y0,x1,y1`` as they are (the protocol's boxes are inclusive
  0-based pixel corners).
- Masks: the union of an image's instance masks with the protocol's rule
  (``mask > 0.5`` on the 8-bit values), stored at the image's size (a mask
  of another size is first resized to it, nearest neighbour, as the
  protocol resizes each mask); the ignore mask is the ignore region minus
  the foreground, as the protocol defines it.
- ``image_sizes.txt``: when given, an image whose decoded size differs is a
  BadRecord (the protocol rescales boxes with these sizes).
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
SPLIT_ORDER = ("train", "val", "test")
CLASS_NAMES_FILE = "class_names.txt"


@dataclasses.dataclass(frozen=True)
class MetadataItem:
    image_id: str
    split: str
    ids_line: int
    label: int
    label_text: str
    label_line: int
    size: tuple[int, int] | None  # (W, H) from image_sizes.txt
    size_line: int
    boxes: tuple[tuple[int, tuple[float, float, float, float]], ...]  # (line, box)
    masks: tuple[tuple[int, str], ...]  # (line, mask path)
    ignore: tuple[int, str] | None  # (line, ignore path)
    data_dir: str


def make_source(data_dir: str, metadata_dir: str) -> Source:
    """The ``Source`` of a dataset described by WSOL metadata files.

    Args:
      data_dir: the image root; image and mask paths are relative to it.
      metadata_dir: the folder holding one sub-folder per split.
    """
    data_dir = common.require_dir(
        os.path.abspath(os.path.expanduser(data_dir)), what="--data_dir (the image root)"
    )
    if not metadata_dir:
        raise ValueError("--metadata_dir is required: the folder with train/, val/, test/")
    metadata_dir = common.require_dir(
        os.path.abspath(os.path.expanduser(metadata_dir)), what="--metadata_dir"
    )
    split_names = sorted(
        (
            name
            for name in os.listdir(metadata_dir)
            if os.path.isfile(os.path.join(metadata_dir, name, "image_ids.txt"))
        ),
        key=lambda name: (
            SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER),
            name,
        ),
    )
    if not split_names:
        raise FileNotFoundError(
            f"{metadata_dir} has no <split>/image_ids.txt: give the folder holding the "
            "protocol's train/, val/, test/ (e.g. wsolevaluation's metadata/CUB)"
        )

    raw = {split: _read_split(os.path.join(metadata_dir, split)) for split in split_names}
    max_label = max(
        (label for split in raw.values() for label, _ in split["labels"].values()), default=-1
    )
    names_path = os.path.join(metadata_dir, CLASS_NAMES_FILE)
    if os.path.isfile(names_path):
        class_names = [
            line.fields[0]
            for line in common.read_index(names_path, what=CLASS_NAMES_FILE, maxsplit=0)
        ]
        if len(class_names) <= max_label:
            raise ValueError(
                f"{names_path} names {len(class_names)} classes but class_labels.txt uses "
                f"label {max_label}"
            )
    else:
        class_names = [f"class_{k}" for k in range(max_label + 1)]

    splits = {}
    for split, tables in raw.items():
        items = []
        for ids_line in tables["ids"]:
            image_id = ids_line.fields[0]
            if image_id not in tables["labels"]:
                raise ValueError(
                    f"{ids_line.where}: {image_id} has no line in "
                    f"{os.path.join(metadata_dir, split, 'class_labels.txt')}"
                )
            label, label_line = tables["labels"][image_id]
            size, size_line = tables["sizes"].get(image_id, (None, 0))
            loc = tables["localization"].get(image_id, {"boxes": [], "masks": [], "ignore": None})
            items.append(
                MetadataItem(
                    image_id=image_id,
                    split=split,
                    ids_line=ids_line.lineno,
                    label=label,
                    label_text=class_names[label],
                    label_line=label_line,
                    size=size,
                    size_line=size_line,
                    boxes=tuple(loc["boxes"]),
                    masks=tuple(loc["masks"]),
                    ignore=loc["ignore"],
                    data_dir=data_dir,
                )
            )
        splits[split] = items

    return Source(
        name="wsol_metadata",
        class_names=class_names,
        splits=splits,
        load=load,
        info={
            "dataset": os.path.basename(metadata_dir.rstrip(os.sep)),
            "data_dir": data_dir,
            "options": {"metadata_dir": metadata_dir},
            "notes": "WSOL protocol metadata; boxes as given (inclusive, 0-based); masks: union "
            "of instances > 0.5, ignore minus foreground; class names "
            + ("from class_names.txt" if os.path.isfile(names_path) else "class_<id>"),
        },
        version=VERSION,
    )


def load(item: MetadataItem) -> Record:
    """Reads one image (and its masks) into a ``Record``."""
    ids = f"{item.split}/image_ids.txt line {item.ids_line}"
    path = os.path.join(item.data_dir, item.image_id)
    where = common.listed(path, ids)
    data, fmt, width, height = common.stored_image(
        common.read_bytes(path, where=where), where=where
    )
    if item.size is not None and item.size != (width, height):
        raise BadRecord(
            f"{where}: the image is {width}x{height} but {item.split}/image_sizes.txt line "
            f"{item.size_line} says {item.size[0]}x{item.size[1]}: the image or the metadata "
            "is not the protocol's"
        )
    for line, box in item.boxes:
        common.check_box(box, where=f"{item.split}/localization.txt line {line}")
    boxes = np.asarray([box for _, box in item.boxes], np.float64).reshape(-1, 4)

    mask = ignore = None
    if item.masks:
        foreground = np.zeros((height, width), bool)
        for line, mask_path in item.masks:
            foreground |= _mask(item, mask_path, line, width, height) > 0.5
        mask = common.mask_png(foreground)
        if item.ignore is not None:
            line, ignore_path = item.ignore
            region = _mask(item, ignore_path, line, width, height) > 0.5
            ignore = common.mask_png(region & ~foreground)
    return Record(
        image=data,
        image_format=fmt,
        height=height,
        width=width,
        filename=item.image_id,
        source_id=item.image_id,
        label=item.label,
        label_text=item.label_text,
        boxes=boxes,
        mask_png=mask,
        ignore_png=ignore,
    )


def _mask(item: MetadataItem, rel: str, line: int, width: int, height: int) -> np.ndarray:
    """An 8-bit mask file at the image's size (nearest neighbour when it differs)."""
    from PIL import Image

    path = os.path.join(item.data_dir, rel)
    where = common.listed(path, f"{item.split}/localization.txt line {line}")
    image = common.decode_image(common.read_bytes(path, where=where), where=where, mode="L")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(image, np.uint8)


def _read_split(folder: str) -> dict:
    """The parsed metadata files of one split."""
    ids = common.read_index(os.path.join(folder, "image_ids.txt"), what="image_ids.txt", maxsplit=0)
    labels = {}
    for line in common.read_index(
        os.path.join(folder, "class_labels.txt"), what="class_labels.txt", sep=",", num_fields=2
    ):
        label = common.to_number(line, 1, int)
        if label < 0:
            raise ValueError(f"{line.where}: labels must be >= 0, got {label}")
        labels[line.fields[0]] = (label, line.lineno)
    sizes = {}
    sizes_path = os.path.join(folder, "image_sizes.txt")
    if os.path.isfile(sizes_path):
        for line in common.read_index(sizes_path, what="image_sizes.txt", sep=",", num_fields=3):
            size = (common.to_number(line, 1, int), common.to_number(line, 2, int))
            sizes[line.fields[0]] = (size, line.lineno)
    localization: dict[str, dict] = {}
    loc_path = os.path.join(folder, "localization.txt")
    if os.path.isfile(loc_path):
        for line in common.read_index(loc_path, what="localization.txt", sep=","):
            entry = localization.setdefault(
                line.fields[0], {"boxes": [], "masks": [], "ignore": None}
            )
            if len(line.fields) == 5:
                box = tuple(common.to_number(line, k) for k in range(1, 5))
                entry["boxes"].append((line.lineno, box))
            elif len(line.fields) == 3:
                first = not entry["masks"]
                entry["masks"].append((line.lineno, line.fields[1]))
                if line.fields[2]:
                    if not first:
                        raise ValueError(
                            f"{line.where}: an ignore path may only be on an image's first "
                            "mask line"
                        )
                    entry["ignore"] = (line.lineno, line.fields[2])
            else:
                raise ValueError(
                    f"{line.where}: expected path,x0,y0,x1,y1 or path,mask_path,ignore_path"
                )
    return {"ids": ids, "labels": labels, "sizes": sizes, "localization": localization}
