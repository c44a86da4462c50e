"""Stanford Dogs in the layout its publishers ship.

Reads ``train_list.mat`` / ``test_list.mat`` (MATLAB files with
``file_list``, ``annotation_list`` and ``labels``, 1-based), ``Images/<wnid-breed>/<file>.jpg``
and ``Annotation/<wnid-breed>/<file>`` (one PASCAL VOC XML per image, no
extension, one ``<object>`` per dog).

Conventions:

- Splits: the official ``train`` (12,000 images, 100 per breed) and ``test``
  (8,580), in the order of the ``.mat`` files.
- Labels: ``labels - 1``; the class name is the breed part of the folder
  name (``n02085620-Chihuahua`` -> ``Chihuahua``), checked to be the same
  for every image of a label.
- Boxes: every ``<object>``'s ``<bndbox>`` (an image may hold several dogs:
  all are kept). The annotations are ImageNet's boxes; the WSOL protocol
  takes ImageNet's ``xmin ymin xmax ymax`` as they are as inclusive 0-based
  pixel corners (its ``metadata/ILSVRC`` has boxes starting at 0 and ending
  at ``W - 1``), and so do we. A box outside the image is clipped and
  counted in the manifest.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET

import numpy as np

from tfrecords.converters import common
from tfrecords.errors import BadRecord
from tfrecords.schema import Record
from tfrecords.source import Source

VERSION = "1"
SPLITS = {"train": "train_list.mat", "test": "test_list.mat"}


@dataclasses.dataclass(frozen=True)
class DogsItem:
    file: str  # relative to Images/
    annotation: str  # relative to Annotation/
    label: int  # 0-based
    label_text: str
    mat_file: str
    entry: int  # 1-based row in the .mat lists
    root: str


def make_source(data_dir: str) -> Source:
    """The Stanford Dogs ``Source`` (splits ``train`` and ``test``).

    Args:
      data_dir: the folder with ``Images/``, ``Annotation/``,
        ``train_list.mat`` and ``test_list.mat``.
    """
    root = os.path.abspath(os.path.expanduser(data_dir))
    lists = {split: _read_list(os.path.join(root, name)) for split, name in SPLITS.items()}

    names: dict[int, tuple[str, str]] = {}  # label -> (breed, where it was first seen)
    for split, rows in lists.items():
        for entry, (file, _, label) in enumerate(rows, start=1):
            breed = _breed(file)
            where = f"{SPLITS[split]} entry {entry}"
            if label in names and names[label][0] != breed:
                raise ValueError(
                    f"{where}: label {label} is breed {breed!r}, but {names[label][1]} gives "
                    f"it {names[label][0]!r}: the .mat files do not belong together"
                )
            names.setdefault(label, (breed, where))
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"the labels in {', '.join(SPLITS.values())} must be 1..N")
    class_names = [names[k][0] for k in range(1, len(names) + 1)]

    splits = {
        split: [
            DogsItem(
                file=file,
                annotation=annotation,
                label=label - 1,
                label_text=class_names[label - 1],
                mat_file=SPLITS[split],
                entry=entry,
                root=root,
            )
            for entry, (file, annotation, label) in enumerate(rows, start=1)
        ]
        for split, rows in lists.items()
    }
    return Source(
        name="dogs",
        class_names=class_names,
        splits=splits,
        load=load,
        info={
            "dataset": "Stanford Dogs",
            "data_dir": root,
            "options": {},
            "notes": "official train/test; labels - 1; all VOC boxes of an image, taken as "
            "0-based inclusive (ImageNet's convention in the WSOL protocol)",
        },
        version=VERSION,
    )


def load(item: DogsItem) -> Record:
    """Reads one dog image and its VOC annotation into a ``Record``."""
    listed_in = f"{item.mat_file} entry {item.entry}"
    image_path = os.path.join(item.root, "Images", item.file)
    where = common.listed(image_path, listed_in)
    data, fmt, width, height = common.stored_image(
        common.read_bytes(image_path, where=where), where=where
    )
    xml_path = os.path.join(item.root, "Annotation", item.annotation)
    xml_where = common.listed(xml_path, listed_in)
    boxes = _voc_boxes(common.read_bytes(xml_path, where=xml_where), xml_where)
    return Record(
        image=data,
        image_format=fmt,
        height=height,
        width=width,
        filename=f"Images/{item.file}",
        source_id=item.file,
        label=item.label,
        label_text=item.label_text,
        boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
    )


def _voc_boxes(data: bytes, where: str) -> list[tuple[float, float, float, float]]:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise BadRecord(f"{where}: not a readable VOC XML ({error})") from None
    boxes = []
    for number, obj in enumerate(root.iter("object"), start=1):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise BadRecord(f"{where}: <object> {number} has no <bndbox>")
        values = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            node = bndbox.find(tag)
            try:
                values.append(float(node.text))
            except (AttributeError, TypeError, ValueError):
                raise BadRecord(f"{where}: <object> {number} has no numeric <{tag}>") from None
        common.check_box(values, where=f"{where}, <object> {number}")
        boxes.append(tuple(values))
    if not boxes:
        raise BadRecord(f"{where}: no <object> with a <bndbox>")
    return boxes


def _breed(file: str) -> str:
    folder = file.replace("\\", "/").split("/")[0]
    return folder.split("-", 1)[1] if "-" in folder else folder


def _read_list(path: str) -> list[tuple[str, str, int]]:
    """``[(file, annotation, label)]`` from a Stanford Dogs ``*_list.mat``."""
    import scipy.io

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: --data_dir must hold Images/, Annotation/, train_list.mat "
            "and test_list.mat (Stanford Dogs as published)"
        )
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True)
    except Exception as error:  # scipy raises several types for a bad file
        raise ValueError(f"{path}: not a readable MATLAB file ({error})") from None
    missing = [key for key in ("file_list", "annotation_list", "labels") if key not in mat]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)}: not a Stanford Dogs list")
    files = [str(v) for v in np.atleast_1d(mat["file_list"])]
    annotations = [str(v) for v in np.atleast_1d(mat["annotation_list"])]
    labels = np.atleast_1d(mat["labels"]).astype(np.float64)
    if not len(files) == len(annotations) == len(labels):
        raise ValueError(
            f"{path}: file_list, annotation_list and labels differ in length "
            f"({len(files)}, {len(annotations)}, {len(labels)})"
        )
    if np.any(labels != np.round(labels)) or np.any(labels < 1):
        raise ValueError(f"{path}: labels must be integers >= 1")
    return [(f, a, int(k)) for f, a, k in zip(files, annotations, labels, strict=True)]
