"""FGVC-Aircraft 2013b in the layout its publishers ship.

Reads ``data/images_<level>_{train,val,test}.txt`` (``<image id> <label>``,
the label may contain spaces), ``data/variants.txt`` / ``families.txt`` /
``manufacturers.txt`` (one name a line: the class list), ``data/images_box.txt``
(``<image id> xmin ymin xmax ymax``) and ``data/images/<id>.jpg``.

Conventions:

- Splits: the official ``train``, ``val`` and ``test`` (3,334 / 3,333 /
  3,333 images); the apps choose the CAM threshold on ``val``.
- Labels: ``label_level`` picks variant (100 classes), family (70) or
  manufacturer (30); the label id is the class's line in the class list
  (0-based), the class name its text.
- Boxes: the dataset's README gives boxes in pixels with the top-left pixel
  at ``(1, 1)``, corners included; we subtract 1 from every coordinate to
  get our 0-based inclusive box.
- Banner: the bottom 20 rows of every image are a copyright banner (the
  README says so, and asks users to remove it). With ``crop_banner`` (the
  default) they are cropped and the image is re-encoded as JPEG (quality
  95, 4:4:4); boxes keep their coordinates (the crop is at the bottom) and
  a box reaching into the banner is clipped to the new last row and counted
  in the manifest.
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
BANNER_ROWS = 20
JPEG_QUALITY = 95
LABEL_LEVELS = {
    "variant": "variants.txt",
    "family": "families.txt",
    "manufacturer": "manufacturers.txt",
}
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class AircraftItem:
    image_id: str
    index_file: str  # images_<level>_<split>.txt
    index_line: int
    label: int
    label_text: str
    box: tuple[float, float, float, float]  # 1-based inclusive, as in images_box.txt
    box_line: int
    images_dir: str
    crop_banner: bool


def make_source(data_dir: str, label_level: str = "variant", crop_banner: bool = True) -> Source:
    """The FGVC-Aircraft ``Source`` (splits ``train``, ``val``, ``test``).

    Args:
      data_dir: ``fgvc-aircraft-2013b/`` (with ``data/`` inside) or its ``data/``.
      label_level: ``variant``, ``family`` or ``manufacturer``.
      crop_banner: crop the 20-pixel copyright banner at the bottom.
    """
    if label_level not in LABEL_LEVELS:
        raise ValueError(
            f"--label_level must be one of {', '.join(LABEL_LEVELS)}, got {label_level!r}"
        )
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    data = os.path.join(data_dir, "data")
    if not os.path.isfile(os.path.join(data, "images_box.txt")):
        data = data_dir
    if not os.path.isfile(os.path.join(data, "images_box.txt")):
        raise FileNotFoundError(
            f"no FGVC-Aircraft here: neither {data_dir}/data/images_box.txt nor "
            f"{data_dir}/images_box.txt exists; give the fgvc-aircraft-2013b folder"
        )
    classes_path = os.path.join(data, LABEL_LEVELS[label_level])
    class_names = [
        line.fields[0]
        for line in common.read_index(classes_path, what="the class list", maxsplit=0)
    ]
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"{classes_path} lists a class twice")
    class_ids = {name: k for k, name in enumerate(class_names)}

    box_path = os.path.join(data, "images_box.txt")
    boxes = {}
    for line in common.read_index(box_path, what="images_box.txt", num_fields=5):
        boxes[line.fields[0]] = (tuple(common.to_number(line, k) for k in range(1, 5)), line.lineno)

    images_dir = os.path.join(data, "images")
    splits: dict[str, list[AircraftItem]] = {}
    for split in SPLITS:
        index_path = os.path.join(data, f"images_{label_level}_{split}.txt")
        items = []
        for line in common.read_index(index_path, what=f"the {split} list", maxsplit=1):
            if len(line.fields) != 2:
                raise ValueError(f"{line.where}: expected '<image id> <{label_level}>'")
            image_id, label_text = line.fields
            if label_text not in class_ids:
                raise ValueError(
                    f"{line.where}: {label_level} {label_text!r} is not in {classes_path}"
                )
            if image_id not in boxes:
                raise ValueError(f"{line.where}: image {image_id} has no box in {box_path}")
            box, box_line = boxes[image_id]
            items.append(
                AircraftItem(
                    image_id=image_id,
                    index_file=os.path.basename(index_path),
                    index_line=line.lineno,
                    label=class_ids[label_text],
                    label_text=label_text,
                    box=box,
                    box_line=box_line,
                    images_dir=images_dir,
                    crop_banner=bool(crop_banner),
                )
            )
        splits[split] = items

    return Source(
        name="aircraft",
        class_names=class_names,
        splits=splits,
        load=load,
        info={
            "dataset": "FGVC-Aircraft 2013b",
            "data_dir": data_dir,
            "options": {"label_level": label_level, "crop_banner": bool(crop_banner)},
            "notes": (
                "official train/val/test; boxes: images_box.txt (1-based, inclusive) minus 1"
                + (
                    f"; bottom {BANNER_ROWS} rows (copyright banner) cropped, re-encoded as "
                    f"JPEG q{JPEG_QUALITY}"
                    if crop_banner
                    else ""
                )
            ),
        },
        version=VERSION,
    )


def load(item: AircraftItem) -> Record:
    """Reads one aircraft image into a ``Record`` (banner cropped when asked)."""
    filename = f"images/{item.image_id}.jpg"
    path = os.path.join(item.images_dir, f"{item.image_id}.jpg")
    where = common.listed(path, f"{item.index_file} line {item.index_line}")
    data = common.read_bytes(path, where=where)
    if item.crop_banner:
        image = common.decode_image(data, where=where)
        width, height = image.size
        if height <= BANNER_ROWS:
            raise BadRecord(
                f"{where}: the image is {height} pixels high, not more than the "
                f"{BANNER_ROWS}-pixel banner: convert with --crop_banner=false"
            )
        height -= BANNER_ROWS
        data = common.encode_jpeg(image.crop((0, 0, width, height)), quality=JPEG_QUALITY)
        fmt = "jpeg"
    else:
        data, fmt, width, height = common.stored_image(data, where=where)
    box = tuple(v - 1.0 for v in item.box)  # the README's (1, 1) top-left -> 0-based
    common.check_box(box, where=f"images_box.txt line {item.box_line} (image {item.image_id})")
    return Record(
        image=data,
        image_format=fmt,
        height=height,
        width=width,
        filename=filename,
        source_id=item.image_id,
        label=item.label,
        label_text=item.label_text,
        boxes=np.asarray([box], np.float64),
    )
