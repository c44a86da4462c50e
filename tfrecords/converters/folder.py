"""Your own images: one folder per class, with boxes and masks where you have them.

    python -m apps.convert --dataset=folder --data_dir=photos/ --output_dir=photos_tfr \\
        [--split=0.8,0.1,0.1] [--seed=0] [--boxes=annotations.json|boxes.csv] [--skip_bad]

Layout (``data_dir``)::

    photos/cat/0001.jpg           one folder per class; sub-folders inside a
    photos/cat/more/0002.png      class folder are searched too
    photos/dog/0003.webp

or, to choose the split yourself, ``train/``, ``val/`` and ``test/`` (any of
them) each holding class folders: ``photos/train/cat/0001.jpg``. When every
folder of ``data_dir`` is one of these names, the split is taken from them
and ``split``/``seed`` are not used; a mix of split folders and other folders
is an error (a class may not be called ``train``, ``val`` or ``test``).

Conventions:

- Classes: the class folders' names sorted by code point (Python's
  ``sorted``, as Keras' ``image_dataset_from_directory``); label ``k`` is the
  ``k``-th name (``manifest.json["class_names"]``). With split folders, the
  union of the names found in all of them.
- Images: files ending in .jpg .jpeg .jpe .jfif .png .bmp .webp .gif .tif
  .tiff (any case); other files and names starting with "." are ignored and
  counted (``ignored_files``). RGB JPEG and RGB PNG files are stored byte for
  byte. Everything else is converted to RGB (grayscale repeated on three
  channels, 16-bit grayscale scaled to 8 bits, an alpha channel dropped, as
  TensorFlow's ``decode_image(channels=3)`` drops it when serving) and
  re-encoded: JPEG files (grayscale or CMYK) as JPEG, quality 95, 4:4:4;
  all other formats (BMP, WebP, GIF's first frame, TIFF, non-RGB PNG) as
  PNG, losslessly, so the stored pixels are the decoded ones. EXIF
  orientation is not applied: images are stored as TensorFlow decodes them.
- Split from fractions (``split="train,val,test"``, or two fractions for
  ``train,val``; a zero fraction leaves the split out): stratified by class
  by systematic sampling, deterministic without a random generator. All
  images are lined up class by class (classes in name order, the images of
  a class in ``sha256(f"{seed}/{path}")`` order); image ``g`` of the line
  (0-based) goes to ``train`` when
  ``floor((g + 1) * f + phase) > floor(g * f + phase)``, with
  ``f = f_train`` and ``phase`` in [0, 1) from ``sha256(f"{seed}/phase/train")``;
  the images left, in the same order, are divided the same way between
  ``val`` (``f = f_val / (f_val + f_test)``, its own phase) and ``test``.
  So a class of ``n`` images gets ``floor`` or ``ceil`` of ``n * f_train``
  training images and its val and test shares to within two images
  (usually one); each split's total is within one image of its share; and
  small classes still feed val and test (a class of 3 images with
  ``0.8,0.1,0.1`` gives its third image to val or test in turn with the
  other classes). The split depends only on the files' paths and the seed,
  not on ``boxes``: adding boxes later keeps the same split. Records within
  a split are in hash order (classes mixed across shards). A split that
  receives no image is left out, with a warning.
- Boxes (``boxes``): a COCO JSON or a CSV, matched to the images by file
  name: the annotation's path is matched by its longest tail that names
  exactly one image (``train/cat/0001.jpg``, ``cat/0001.jpg``, an absolute
  path ending in either, or ``0001.jpg`` when that base name is unique; a
  name matching several images is reported with them). Only boxes whose
  class is the image's class are kept (WSOL localizes the labelled class;
  the others are counted as ``other_class_boxes``). Images without boxes are
  kept (training needs no boxes); ``boxed_counts`` says per split how many
  images have at least one box.

  - COCO (read with pycocotools): ``images`` (``id``, ``file_name``,
    ``width``, ``height``), ``annotations`` (``image_id``, ``category_id``,
    ``bbox`` = ``[x, y, width, height]``, optional ``segmentation``) and
    ``categories`` (``id``, ``name`` = a class folder's name). ``bbox`` is
    continuous (pixel ``i`` covers ``[i, i + 1)``); the stored inclusive
    pixel box holds every pixel the box overlaps:
    ``x0 = floor(x)``, ``x1 = ceil(x + width) - 1`` (same for ``y``), with a
    tolerance of 1e-6 px so that float noise adds no pixel: an integer box
    ``[10, 20, 30, 40]`` is columns 10..39 and rows 20..59. The image's
    ``width``/``height`` must be the file's size (checked when loading).
    When every kept annotation of an image has a ``segmentation`` (polygons,
    or RLE: compressed or not), the mask is their union, rasterised with
    pycocotools' mask API (``frPyObjects``/``merge``/``decode``: what
    ``COCO.annToMask`` does); otherwise the image gets no mask.
  - CSV: ``filename,xmin,ymin,xmax,ymax[,class]``, one row per box, a header
    optional (when present, columns are found by these names; ``label`` or
    ``category`` may name the class column; without one, a row's sixth field
    is its class). Coordinates are 0-based
    INCLUSIVE pixel corners, the library's convention: ``xmax`` is the last
    pixel column inside the box (shift 1-based or exclusive corners first).
    Values are stored as given (fractions allowed), clipped to the image.

Bad input is reported by file name with what to do. Problems found while
scanning (empty class folders, a box for a file that does not exist, a
COCO category or CSV class that is not a class folder, an ambiguous file
name, a malformed box or segmentation) are all listed in one ``ValueError``
before anything is written; with ``skip_bad`` empty folders are dropped,
boxes for missing files or unknown classes are ignored, images with a
malformed annotation are left out (an image must not lose one of its boxes
silently), and each is counted in ``manifest.json["source"]["scan_skipped"]``.
An unreadable image (or one whose size differs from its annotation) is a
``BadRecord`` raised while writing, which the writer's ``skip_bad`` skips
and counts in the manifest's splits.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfrecords.converters import common
from tfrecords.errors import BadRecord
from tfrecords.schema import Record
from tfrecords.source import Source

VERSION = "1"
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
)
SPLIT_NAMES = ("train", "val", "test")
JPEG_QUALITY = 95
# A box edge within this many pixels of a pixel boundary does not add that pixel.
EDGE_TOLERANCE = 1e-6
# Problems listed in the error (all are counted); skipped messages kept in the manifest.
MAX_LISTED = 20
MAX_KEPT_MESSAGES = 200
_CLASS_COLUMNS = ("class", "label", "category")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FolderItem:
    """One image file and its annotation (small and picklable: it goes to the workers)."""

    root: str  # data_dir, absolute
    path: str  # relative to root, "/"-separated; also the record's source_id
    label: int
    label_text: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # inclusive pixel x0, y0, x1, y1
    segmentation: str | None = None  # JSON list of COCO segmentations; the mask is their union
    size: tuple[int, int] | None = None  # (width, height) the annotation file gives
    annotation: str | None = None  # where the boxes come from, for messages


@dataclasses.dataclass
class _Annotation:
    boxes: list[tuple[float, float, float, float]]
    segmentations: list | None  # None: some kept box has no segmentation
    size: tuple[int, int] | None
    where: str


class _Problems:
    """Scan-time problems: all listed in one error, or skipped and counted with ``skip_bad``."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.messages: list[str] = []
        self.counts: collections.Counter = collections.Counter()

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        self.messages.append(message)

    def check(self, what: str) -> None:
        if not self.messages or self.skip_bad:
            return
        listed = "\n".join(f"  - {message}" for message in self.messages[:MAX_LISTED])
        more = len(self.messages) - MAX_LISTED
        raise ValueError(
            f"{len(self.messages)} problem(s) in {what}:\n{listed}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nFix them, or pass --skip_bad to skip what they name (empty class folders are "
            "dropped, boxes for missing files or unknown classes are ignored, images with a "
            "malformed annotation are left out); the manifest counts what was skipped."
        )

    def info(self) -> dict:
        return {
            "count": len(self.messages),
            "by_kind": dict(sorted(self.counts.items())),
            "messages": self.messages[:MAX_KEPT_MESSAGES],
        }


def make_source(
    data_dir: str,
    *,
    split: str | Sequence[float] = "0.8,0.1,0.1",
    seed: int = 0,
    boxes: str | None = None,
    skip_bad: bool = False,
) -> Source:
    """The ``Source`` of a folder of class folders (see the module docstring).

    Args:
      data_dir: the folder holding one folder per class, or ``train/``,
        ``val/``, ``test/`` folders each holding class folders.
      split: ``"train,val,test"`` fractions summing to 1 (or ``"train,val"``);
        not used when ``data_dir`` has split folders.
      seed: changes the split from fractions (not used with split folders).
      boxes: a COCO ``.json`` or a ``.csv`` of boxes, or None.
      skip_bad: skip (and count) what the scan finds wrong instead of raising.

    Raises:
      ValueError: bad arguments, an unusable layout, or (without
        ``skip_bad``) every problem the scan found, each naming its file.
      FileNotFoundError: ``data_dir`` or ``boxes`` does not exist.
    """
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    common.require_dir(data_dir, what="--data_dir (a folder with one folder per class)")
    fractions = parse_split(split)
    seed = int(seed)
    problems = _Problems(skip_bad)
    ignored: list[str] = []

    top = [name for name in _entries(data_dir) if os.path.isdir(os.path.join(data_dir, name))]
    split_dirs = [name for name in top if name in SPLIT_NAMES]
    if split_dirs and len(split_dirs) != len(top):
        others = [name for name in top if name not in SPLIT_NAMES]
        raise ValueError(
            f"{data_dir} holds split folders ({', '.join(split_dirs)}) and other folders "
            f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}): put every class "
            "folder inside train/ val/ test/, or rename the split folders to use --split "
            "(a class may not be called train, val or test)"
        )
    if split_dirs:
        # split name -> class name -> image paths (relative to data_dir)
        found = {
            name: _class_folders(data_dir, name + "/", problems, ignored)
            for name in SPLIT_NAMES
            if name in split_dirs
        }
        split_from = "folders"
    else:
        found = {"": _class_folders(data_dir, "", problems, ignored)}
        split_from = "fractions"
    class_names = sorted({name for classes in found.values() for name in classes})
    if not class_names:
        problems.check(data_dir)
        layout = "train/<class>/<image>" if split_dirs else "<class>/<image>"
        raise ValueError(
            f"no images in {data_dir}: expected {data_dir}/{layout} with images ending in "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    if len(class_names) == 1:
        log.warning("%s has one class (%s): a classifier needs two or more", data_dir, class_names)
    label_of_class = {name: k for k, name in enumerate(class_names)}
    label_of = {
        path: label_of_class[name]
        for classes in found.values()
        for name, paths in classes.items()
        for path in paths
    }

    if split_from == "folders":
        assigned = {
            name: sorted(
                (path for paths in classes.values() for path in paths),
                key=lambda path: _hash(seed, path),
            )
            for name, classes in found.items()
        }
    else:
        assigned = assign_splits(found[""], fractions, seed)

    annotations: dict[str, _Annotation] = {}
    bad_images: set[str] = set()
    boxes_format = None
    other_class = 0
    if boxes is not None:
        boxes = os.path.abspath(os.path.expanduser(boxes))
        if not os.path.isfile(boxes):
            raise FileNotFoundError(f"--boxes {boxes} does not exist (a COCO .json or a .csv)")
        lookup = _tail_lookup(label_of)
        reader = {".json": _read_coco, ".csv": _read_csv}.get(os.path.splitext(boxes)[1].lower())
        if reader is None:
            raise ValueError(
                f"--boxes {boxes}: unknown format; give a COCO instances .json or a .csv "
                "(filename,xmin,ymin,xmax,ymax[,class])"
            )
        boxes_format = "coco" if reader is _read_coco else "csv"
        annotations, bad_images, other_class = reader(
            boxes, lookup, label_of, class_names, problems, data_dir
        )
    problems.check(f"{data_dir}" + (f" and {boxes}" if boxes else ""))

    splits: dict[str, list[FolderItem]] = {}
    for name, paths in assigned.items():
        items = [
            _item(data_dir, path, label_of[path], class_names, annotations.get(path))
            for path in paths
            if path not in bad_images
        ]
        if not items:
            log.warning("split %r of %s has no images: left out", name, data_dir)
            continue
        splits[name] = items

    def per_split(count) -> dict:
        return {name: int(sum(count(item) for item in items)) for name, items in splits.items()}

    info = {
        "dataset": "image folder",
        "data_dir": data_dir,
        "options": {
            "split": ",".join(f"{fractions.get(name, 0.0):g}" for name in SPLIT_NAMES),
            "seed": seed,
            "boxes": boxes,
            "skip_bad": bool(skip_bad),
        },
        "split_from": split_from,
        "boxes_format": boxes_format,
        "class_counts": {
            name: np.bincount([i.label for i in items], minlength=len(class_names)).tolist()
            for name, items in splits.items()
        },
        # Counted before the writer runs: an unreadable image skipped with
        # --skip_bad is still counted here (the manifest's splits count it).
        "boxed_counts": per_split(lambda item: len(item.boxes) > 0),
        "masked_counts": per_split(lambda item: item.segmentation is not None),
        "num_boxes": per_split(lambda item: len(item.boxes)),
        "other_class_boxes": other_class,
        "ignored_files": {"count": len(ignored), "examples": ignored[:MAX_LISTED]},
        "scan_skipped": problems.info(),
        "notes": (
            "labels = sorted class folder names; split "
            + (
                "from train/ val/ test/ folders"
                if split_from == "folders"
                else "stratified by class (systematic sampling over sha256(seed/path) order)"
            )
            + "; RGB JPEG/PNG stored as is, others converted to RGB and re-encoded (JPEG as "
            "JPEG q95, other formats as PNG); COCO bbox [x,y,w,h] -> inclusive "
            "(floor(x), floor(y), ceil(x+w)-1, ceil(y+h)-1); CSV corners are inclusive pixels"
        ),
    }
    return Source(
        name="folder",
        class_names=class_names,
        splits=splits,
        load=load,
        info=info,
        version=VERSION,
    )


def parse_split(split: str | Sequence[float]) -> dict[str, float]:
    """``"0.8,0.1,0.1"`` -> ``{"train": 0.8, "val": 0.1, "test": 0.1}`` (zero fractions dropped).

    Raises:
      ValueError: not 2 or 3 non-negative numbers summing to 1.
    """
    text = split if isinstance(split, str) else ",".join(str(v) for v in split)
    usage = (
        f"--split={text!r} must be 2 or 3 fractions train,val[,test] that sum to 1, "
        "e.g. --split=0.8,0.1,0.1"
    )
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(usage) from None
    if not 2 <= len(values) <= 3 or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(usage)
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"{usage} (they sum to {sum(values):g})")
    return {name: value for name, value in zip(SPLIT_NAMES, values, strict=False) if value > 0}


def assign_splits(
    classes: dict[str, list[str]], fractions: dict[str, float], seed: int
) -> dict[str, list[str]]:
    """Stratified, deterministic split of ``{class: paths}`` by ``fractions`` (see module doc).

    Returns:
      ``{split: paths}`` for every split of ``fractions``, each in hash order.
    """
    line = [
        path
        for name in sorted(classes)
        for path in sorted(classes[name], key=lambda path: _hash(seed, path))
    ]
    names = list(fractions)
    result, left = {}, 1.0
    for name in names[:-1]:
        fraction = min(1.0, fractions[name] / left)
        phase = int(_hash(seed, f"phase/{name}")[:16], 16) / 2.0**64
        chosen, rest = [], []
        for g, path in enumerate(line):
            # Systematic sampling: one pick each time g * fraction + phase crosses an integer.
            picked = math.floor((g + 1) * fraction + phase) > math.floor(g * fraction + phase)
            (chosen if picked else rest).append(path)
        result[name], line = chosen, rest
        left -= fractions[name]
    result[names[-1]] = line
    return {
        name: sorted(paths, key=lambda path: _hash(seed, path)) for name, paths in result.items()
    }


def coco_box_to_pixels(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """COCO ``[x, y, width, height]`` (continuous) -> inclusive pixel ``(x0, y0, x1, y1)``.

    Every pixel the box overlaps (by more than ``EDGE_TOLERANCE``) is inside.
    """
    x, y, width, height = (float(v) for v in bbox)
    x0 = math.floor(x + EDGE_TOLERANCE)
    y0 = math.floor(y + EDGE_TOLERANCE)
    x1 = max(x0, math.ceil(x + width - EDGE_TOLERANCE) - 1)
    y1 = max(y0, math.ceil(y + height - EDGE_TOLERANCE) - 1)
    return float(x0), float(y0), float(x1), float(y1)


def load(item: FolderItem) -> Record:
    """Reads one image (converted to RGB where needed) and its mask into a ``Record``."""
    from PIL import Image

    path = os.path.join(item.root, item.path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise BadRecord(
            f"{path}: cannot read it ({error}): it was removed or is not readable; "
            "restore it, or skip it with --skip_bad"
        ) from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # a truncated file fails here, not at open
    except Exception as error:  # PIL raises several types for undecodable data
        raise BadRecord(
            f"{path} does not decode as an image ({type(error).__name__}: {error}): replace or "
            "remove the file, or skip it with --skip_bad"
        ) from None
    width, height = image.size
    if item.size is not None and tuple(item.size) != (width, height):
        hint = ""
        if tuple(item.size) == (height, width):
            hint = (
                " (width and height swapped: if the file has an EXIF orientation, the "
                "annotation tool applied it and we do not; store the file rotated, or fix "
                "width/height and the boxes)"
            )
        raise BadRecord(
            f"{path}: {item.annotation} says the image is {item.size[0]}x{item.size[1]}, the "
            f"file is {width}x{height}{hint}: the annotation does not belong to this file; fix "
            "it, or skip the image with --skip_bad"
        )
    kind = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png"}.get(image.format or "")
    if kind is not None and image.mode == "RGB":
        stored, fmt = data, kind
    elif kind == "jpeg":
        stored, fmt = common.encode_jpeg(_to_rgb(image), quality=JPEG_QUALITY), "jpeg"
    else:
        stored, fmt = common.encode_png(_to_rgb(image)), "png"

    mask = None
    if item.segmentation is not None:
        mask = common.mask_png(_rasterise(json.loads(item.segmentation), height, width))
    return Record(
        image=stored,
        image_format=fmt,
        height=height,
        width=width,
        filename=item.path,
        source_id=item.path,
        label=item.label,
        label_text=item.label_text,
        boxes=np.asarray(item.boxes, np.float64).reshape(-1, 4),
        mask_png=mask,
    )


# --- scanning -------------------------------------------------------------------


def _entries(folder: str) -> list[str]:
    """Sorted names in ``folder``, without hidden ones (``.DS_Store``, ``._x.jpg``, ...)."""
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def _class_folders(
    root: str, prefix: str, problems: _Problems, ignored: list[str]
) -> dict[str, list[str]]:
    """``{class name: image paths relative to root}`` of ``root/prefix``'s class folders."""
    parent = os.path.join(root, prefix)
    classes = {}
    for name in _entries(parent):
        folder = os.path.join(parent, name)
        if not os.path.isdir(folder):
            ignored.append(prefix + name)  # e.g. annotations.json beside the class folders
            continue
        paths = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                if os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                    paths.append(f"{rel}/{filename}")
                else:
                    ignored.append(f"{rel}/{filename}")
        if not paths:
            problems.add(
                "empty_class_folder",
                f"{folder}: class folder with no images (files ending in "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}): add images or remove the folder "
                "(--skip_bad drops it)",
            )
            continue
        classes[name] = paths
    return classes


def _hash(seed: int, path: str) -> str:
    return hashlib.sha256(f"{seed}/{path}".encode()).hexdigest()


def _tail_lookup(label_of: dict[str, int]) -> dict[str, list[str]]:
    """Every path tail (``a/b/c.jpg``, ``b/c.jpg``, ``c.jpg``) -> the image paths ending so."""
    lookup: dict[str, list[str]] = collections.defaultdict(list)
    for path in label_of:
        parts = path.split("/")
        for start in range(len(parts)):
            lookup["/".join(parts[start:])].append(path)
    return lookup


def _resolve(name: Any, lookup: dict[str, list[str]]) -> tuple[str | None, list[str]]:
    """(image path, []) for an annotation's file name; (None, candidates) when none or several."""
    parts = [p for p in str(name).replace("\\", "/").split("/") if p not in ("", ".")]
    for start in range(len(parts)):
        matches = lookup.get("/".join(parts[start:]))
        if matches:
            return (matches[0], []) if len(matches) == 1 else (None, matches)
    return None, []


def _unmatched(where: str, name: Any, candidates: list[str], data_dir: str, what: str) -> tuple:
    if candidates:
        shown = ", ".join(candidates[:5]) + (", ..." if len(candidates) > 5 else "")
        return (
            "ambiguous_file_name",
            f"{where}: file name {name!r} matches {len(candidates)} images ({shown}): "
            "give its path relative to --data_dir (e.g. class/name.jpg) in the annotations",
        )
    return (
        "box_for_missing_file",
        f"{where}: {what} for {name!r}, but no such image under {data_dir}: fix the file "
        "name, restore the image, or drop the annotation (--skip_bad ignores it)",
    )


def _item(
    root: str, path: str, label: int, class_names: list[str], annotation: _Annotation | None
) -> FolderItem:
    if annotation is None:
        return FolderItem(root, path, label, class_names[label])
    segmentation = None
    if annotation.segmentations and annotation.boxes:
        segmentation = json.dumps(annotation.segmentations, separators=(",", ":"))
    return FolderItem(
        root,
        path,
        label,
        class_names[label],
        boxes=tuple(annotation.boxes),
        segmentation=segmentation,
        size=annotation.size,
        annotation=annotation.where,
    )


# --- COCO -----------------------------------------------------------------------


def _load_coco(path: str):
    from pycocotools.coco import COCO

    try:
        with open(path, encoding="utf-8") as file:
            dataset = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--boxes {path} is not readable JSON ({error})") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise ValueError(
            f"--boxes {path} is not a COCO instances file: it needs a list 'images' "
            "(id, file_name, width, height), 'annotations' and 'categories'"
        )
    for key in ("annotations", "categories"):
        entries = dataset.setdefault(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"--boxes {path}: '{key}' must be a list of objects")
    for key, fields in (
        ("images", ("id",)),
        ("annotations", ("id", "image_id", "category_id")),
        ("categories", ("id", "name")),
    ):
        for index, entry in enumerate(dataset[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise ValueError(
                    f"--boxes {path}: {key}[{index}] has no {', '.join(missing)}: not a COCO "
                    "instances file"
                )
    coco = COCO()  # no file: it would print to stdout; the index is built from ``dataset``
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def _read_coco(path, lookup, label_of, class_names, problems, data_dir):
    coco = _load_coco(path)
    name = os.path.basename(path)
    categories = {cat["id"]: str(cat["name"]) for cat in coco.dataset["categories"]}
    class_set = set(class_names)
    annotations: dict[str, _Annotation] = {}
    bad_images: set[str] = set()
    other_class = 0
    entry_of: dict[str, Any] = {}
    for entry in coco.dataset["images"]:
        image_id = entry["id"]
        where = f"{name} image id {image_id}"
        anns = coco.imgToAnns.get(image_id, [])
        file_name = entry.get("file_name")
        if not file_name:
            if anns:
                problems.add("box_for_missing_file", f"{where}: has no file_name: add it")
            continue
        path, candidates = _resolve(file_name, lookup)
        if path is None:
            if anns or candidates:
                problems.add(*_unmatched(where, file_name, candidates, data_dir, "annotations"))
            continue
        if path in entry_of:
            problems.add(
                "duplicate_image_entry",
                f"{where}: {file_name!r} is the image of image id {entry_of[path]} too: "
                "merge the two entries",
            )
            bad_images.add(path)
            continue
        entry_of[path] = image_id
        label_text = class_names[label_of[path]]
        image_problems = []
        try:
            size = (int(entry["width"]), int(entry["height"]))
            if size[0] <= 0 or size[1] <= 0 or size != (entry["width"], entry["height"]):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            image_problems.append(
                f"{where} ({file_name}): width and height must be positive integers, got "
                f"{entry.get('width')!r} x {entry.get('height')!r}"
            )
            size = None
        boxes, segmentations = [], []
        all_segmented = True
        for ann in anns:
            ann_where = f"{name} annotation id {ann['id']} (image {file_name})"
            category = categories.get(ann["category_id"])
            if category is None:
                problems.add(
                    "unknown_category",
                    f"{ann_where}: category_id {ann['category_id']!r} is not in 'categories'",
                )
                continue
            if category not in class_set:
                problems.add(
                    "unknown_category",
                    f"{ann_where}: category {category!r} is not a class folder "
                    f"({_names(class_names)}): rename the category or the folder "
                    "(--skip_bad ignores such boxes)",
                )
                continue
            if category != label_text:
                other_class += 1
                continue
            bbox = ann.get("bbox")
            if not _is_numbers(bbox, 4) or bbox[2] <= 0 or bbox[3] <= 0:
                image_problems.append(
                    f"{ann_where}: bbox must be [x, y, width, height] with width, height > 0, "
                    f"got {bbox!r}"
                )
                continue
            boxes.append(coco_box_to_pixels(bbox))
            segmentation = ann.get("segmentation")
            if segmentation in (None, [], {}):
                all_segmented = False
                continue
            message = _check_segmentation(segmentation, size)
            if message:
                image_problems.append(f"{ann_where}: segmentation {message}")
                continue
            segmentations.append(segmentation)
        if image_problems:
            for message in image_problems:
                problems.add("bad_annotation", message + " (--skip_bad leaves the image out)")
            bad_images.add(path)
            continue
        annotations[path] = _Annotation(
            boxes=boxes,
            segmentations=segmentations if all_segmented else None,
            size=size,
            where=where,
        )
    return annotations, bad_images, other_class


def _names(class_names: list[str]) -> str:
    return ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else "")


def _is_numbers(value: Any, count: int) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == count
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    )


def _check_segmentation(segmentation: Any, size: tuple[int, int] | None) -> str | None:
    """What is wrong with a COCO segmentation (None: nothing)."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not (
                isinstance(polygon, list)
                and len(polygon) >= 6
                and len(polygon) % 2 == 0
                and _is_numbers(polygon, len(polygon))
            ):
                return (
                    "polygons must be lists of x, y numbers with 3 or more points, got "
                    f"{str(polygon)[:80]}"
                )
        return None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if size is not None and list(segmentation["size"]) != [size[1], size[0]]:
            return (
                f"RLE size {segmentation['size']} is not the image's [height, width] "
                f"[{size[1]}, {size[0]}]"
            )
        if not isinstance(segmentation["counts"], list | str):
            return "RLE counts must be a list of run lengths or a compressed string"
        return None
    return f"must be polygons or an RLE dict with counts and size, got {str(segmentation)[:80]}"


def _to_rgb(image):
    """A PIL image as RGB: grey repeated, 16-bit grey scaled to 8 bits, alpha dropped."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((values + 128) // 257).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _rasterise(segmentations: list, height: int, width: int) -> np.ndarray:
    """Union of COCO segmentations as a boolean ``[H, W]`` mask (``COCO.annToMask``'s steps)."""
    from pycocotools import mask as mask_utils

    foreground = np.zeros((height, width), bool)
    for segmentation in segmentations:
        if isinstance(segmentation, list):  # polygons: one object may have several parts
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = dict(segmentation, counts=segmentation["counts"].encode())
        foreground |= mask_utils.decode(rle).astype(bool)
    return foreground


# --- CSV ------------------------------------------------------------------------


def _read_csv(path, lookup, label_of, class_names, problems, data_dir):
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:  # -sig: Excel's BOM
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--boxes {path} cannot be read as UTF-8 text ({error})") from None
    rows = [
        (lineno, row)
        for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1)
        if any(field.strip() for field in row)
    ]
    columns = {"filename": 0, "xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}
    has_header = bool(rows) and len(rows[0][1]) > 1 and not _is_float(rows[0][1][1])
    if has_header:
        header = [field.strip().lower() for field in rows[0][1]]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(
                f"--boxes {path} line {rows[0][0]}: a header needs the columns filename, xmin, "
                f"ymin, xmax, ymax (and optionally class); {', '.join(missing)} missing in "
                f"{rows[0][1]}"
            )
        columns = {c: header.index(c) for c in columns}
        for alias in _CLASS_COLUMNS:
            if alias in header:
                columns["class"] = header.index(alias)
                break
        rows = rows[1:]
    num_columns = max(columns.values()) + 1
    class_set = set(class_names)
    annotations: dict[str, _Annotation] = {}
    lines: dict[str, list[int]] = collections.defaultdict(list)
    bad_images: set[str] = set()
    other_class = 0
    for lineno, row in rows:
        where = f"{name} line {lineno}"
        if has_header:
            complete, class_column = len(row) >= num_columns, columns.get("class")
        else:  # positional: the class column is optional row by row
            complete, class_column = len(row) in (5, 6), (5 if len(row) == 6 else None)
        file_name = row[columns["filename"]].strip() if len(row) > columns["filename"] else ""
        path, candidates = _resolve(file_name, lookup)
        if path is None:
            problems.add(*_unmatched(where, file_name, candidates, data_dir, "a box"))
            continue
        if not complete:
            problems.add(
                "bad_annotation",
                f"{where}: expected filename,xmin,ymin,xmax,ymax[,class], got {row!r} "
                "(--skip_bad leaves the image out)",
            )
            bad_images.add(path)
            continue
        label_text = class_names[label_of[path]]
        if class_column is not None:
            category = row[class_column].strip()
            if category not in class_set:
                problems.add(
                    "unknown_category",
                    f"{where}: class {category!r} is not a class folder ({_names(class_names)}): "
                    "rename the class or the folder (--skip_bad ignores such boxes)",
                )
                continue
            if category != label_text:
                other_class += 1
                continue
        try:
            box = tuple(float(row[columns[c]]) for c in ("xmin", "ymin", "xmax", "ymax"))
            if not all(math.isfinite(v) for v in box):
                raise ValueError
        except ValueError:
            problems.add(
                "bad_annotation",
                f"{where}: xmin, ymin, xmax, ymax must be numbers, got {row!r} (--skip_bad "
                "leaves the image out)",
            )
            bad_images.add(path)
            continue
        if box[2] < box[0] or box[3] < box[1]:
            problems.add(
                "bad_annotation",
                f"{where}: box {box} has xmax < xmin or ymax < ymin (corners are inclusive "
                "pixels: xmax is the last column inside the box; --skip_bad leaves the image out)",
            )
            bad_images.add(path)
            continue
        annotation = annotations.setdefault(path, _Annotation([], None, None, ""))
        annotation.boxes.append(box)
        lines[path].append(lineno)
    for path, annotation in annotations.items():
        numbers = lines[path]
        annotation.where = (
            f"{name} line{'s' if len(numbers) > 1 else ''} "
            + ", ".join(str(n) for n in numbers[:5])
            + (", ..." if len(numbers) > 5 else "")
        )
    return annotations, bad_images, other_class


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
