"""CUB-200-2011 in the layout its publishers ship (folder or ``CUB_200_2011.tgz``).

Reads ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
``bounding_boxes.txt`` and ``classes.txt`` (ids 1-based) and ``images/``,
from the extracted ``CUB_200_2011/`` folder or straight from the archive
(``.tgz``, ``.tar.gz`` or ``.tar``) without extracting it.

Conventions (chosen so that the records equal the WSOL protocol's data):

- Splits: ``train`` (``is_training_image`` = 1, 5,994 images) and ``test``
  (5,794), the official split, which the protocol (Choe et al. 2020) uses as
  its ``train-weaksup`` and ``test``. The protocol's fully supervised ``val``
  split (CUBV2, 1,000 images collected by its authors) is not part of
  CUB-200-2011: convert it with the ``wsol_metadata`` converter from the
  protocol's ``metadata/CUB`` files to get it (and the exact same train/test
  records). Without a ``val`` split, the apps choose the CAM threshold on the
  split they are told to use.
- Labels: class id ``k`` (1-based) becomes label ``k - 1``; the class name is
  ``classes.txt``'s name without its number prefix (``001.Black_footed_Albatross``
  -> ``Black_footed_Albatross``).
- Ids: ``source_id`` is the image's path in ``images.txt``
  (``001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg``), the
  protocol's image id.
- Boxes: ``bounding_boxes.txt`` holds ``x y width height``; the box is the
  inclusive ``(x, y, x + width, y + height)``. This is how the protocol's
  ``metadata/CUB/*/localization.txt`` was derived: image 1 (``1 60.0 27.0
  325.0 304.0``) is ``60,27,385,331`` there, image 3 (``14.0 112.0 388.0
  186.0``) is ``14,112,402,298``. A box reaching ``x + width = W`` is
  clipped to ``W - 1`` and counted in the manifest.
- Masks (with ``segmentations_dir``, the separately published
  ``segmentations/`` folder or its ``segmentations.tgz``,
  ``<class_dir>/<image>.png``): the PNGs are
  grayscale, the average of 5 annotators' masks. The protocol
  (``wsolevaluation``) evaluates masks only on OpenImages, with
  ``mask > 0.5`` on the raw 8-bit values (then the union of instances);
  we apply that same rule here, so any pixel marked by at least one
  annotator (value >= 1) is foreground, and store the binary mask.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import os
import re
import tarfile

import numpy as np

from tfrecords.converters import common
from tfrecords.errors import BadRecord
from tfrecords.schema import Record
from tfrecords.source import Source

VERSION = "1"
INDEX_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
)
_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".tar.bz2", ".tar.xz")


@dataclasses.dataclass(frozen=True)
class CubItem:
    """One image: where its bytes are and its annotation, with the index lines they came from."""

    image_id: int
    path: str  # as in images.txt, relative to images/
    images_line: int
    label: int  # 0-based
    label_text: str
    box: tuple[float, float, float, float]  # x, y, width, height as in bounding_boxes.txt
    box_line: int
    root: str  # the CUB_200_2011 folder, or the archive file
    member: str | None = None  # archive mode: the image's member name
    offset: int = 0  # archive mode: offset of the member's data
    size: int = 0  # archive mode: size of the member's data
    mask_path: str | None = None  # a file, or a member of mask_archive
    mask_archive: str | None = None  # segmentations.tgz, when given as an archive


def make_source(data_dir: str, segmentations_dir: str | None = None) -> Source:
    """The CUB-200-2011 ``Source`` (splits ``train`` and ``test``).

    Args:
      data_dir: the extracted ``CUB_200_2011/`` folder (or its parent), or
        the ``CUB_200_2011.tgz`` archive.
      segmentations_dir: the extracted ``segmentations/`` folder, or the
        ``segmentations.tgz`` archive; masks are added when given.
    """
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    if os.path.isfile(data_dir):
        if not data_dir.endswith(_ARCHIVE_SUFFIXES):
            raise ValueError(
                f"--data_dir {data_dir} is a file but not a CUB archive "
                f"({', '.join(_ARCHIVE_SUFFIXES)}): give CUB_200_2011.tgz or its extracted folder"
            )
        texts, members, archive_root = _scan_archive(data_dir)
        index_names = {name: f"{data_dir}:{texts[name][0]}" for name in INDEX_FILES}
        index_texts = {name: texts[name][1] for name in INDEX_FILES}
    else:
        root = _find_root(data_dir)
        members = None
        index_names = {name: os.path.join(root, name) for name in INDEX_FILES}
        index_texts = {
            name: common.read_text(path, what=f"CUB-200-2011's {name}")
            for name, path in index_names.items()
        }
    mask_archive, mask_members = None, set()
    if segmentations_dir is not None:
        segmentations_dir = os.path.abspath(os.path.expanduser(segmentations_dir))
        if os.path.isfile(segmentations_dir) and segmentations_dir.endswith(_ARCHIVE_SUFFIXES):
            mask_archive, mask_members = segmentations_dir, _archive_names(segmentations_dir)
        else:
            common.require_dir(
                segmentations_dir,
                what="--segmentations_dir (CUB's segmentations/ folder or segmentations.tgz)",
            )

    def index(name, **kwargs):
        return common.parse_index(index_texts[name], index_names[name], **kwargs)

    images = index("images.txt", num_fields=2, maxsplit=1)
    labels = {_id(line): line for line in index("image_class_labels.txt", num_fields=2)}
    split_of = {_id(line): line for line in index("train_test_split.txt", num_fields=2)}
    boxes = {_id(line): line for line in index("bounding_boxes.txt", num_fields=5)}
    class_names = _class_names(index("classes.txt", num_fields=2, maxsplit=1))

    mask_prefix = _mask_prefix(mask_members, images) if mask_archive else ""
    splits: dict[str, list[CubItem]] = {"train": [], "test": []}
    root_or_archive = data_dir if members is not None else root
    for line in images:
        image_id = _id(line)
        rel = line.fields[1]
        for table, name in (
            (labels, "image_class_labels.txt"),
            (split_of, "train_test_split.txt"),
            (boxes, "bounding_boxes.txt"),
        ):
            if image_id not in table:
                raise ValueError(
                    f"{line.where}: image id {image_id} has no line in {index_names[name]}: "
                    "the index files do not belong together"
                )
        class_id = common.to_number(labels[image_id], 1, int)
        if not 1 <= class_id <= len(class_names):
            raise ValueError(
                f"{labels[image_id].where}: class id {class_id} is not in classes.txt "
                f"(1..{len(class_names)})"
            )
        is_train = common.to_number(split_of[image_id], 1, int)
        if is_train not in (0, 1):
            raise ValueError(f"{split_of[image_id].where}: is_training_image must be 0 or 1")
        box_line = boxes[image_id]
        box = tuple(common.to_number(box_line, k) for k in range(1, 5))
        member = offset = size = None
        if members is not None:
            member = f"{archive_root}images/{rel}"
            offset, size = members.get(member, (0, -1))
        mask_path = None
        if mask_archive is not None:
            mask_path = mask_prefix + os.path.splitext(rel)[0] + ".png"
        elif segmentations_dir is not None:
            mask_path = os.path.join(segmentations_dir, os.path.splitext(rel)[0] + ".png")
        item = CubItem(
            image_id=image_id,
            path=rel,
            images_line=line.lineno,
            label=class_id - 1,
            label_text=class_names[class_id - 1],
            box=box,
            box_line=box_line.lineno,
            root=root_or_archive,
            member=member,
            offset=offset or 0,
            size=size if size is not None else 0,
            mask_path=mask_path,
            mask_archive=mask_archive,
        )
        splits["train" if is_train else "test"].append(item)
    if members is not None:
        # A compressed archive is read forward only (seeking back restarts the
        # decompression), so each split is read in archive order.
        for items in splits.values():
            items.sort(key=lambda item: item.offset)

    return Source(
        name="cub",
        class_names=class_names,
        splits=splits,
        load=load,
        info={
            "dataset": "CUB-200-2011",
            "data_dir": data_dir,
            "options": {"segmentations_dir": segmentations_dir},
            "notes": (
                "official train/test split; box = (x, y, x + width, y + height) inclusive, as "
                "the WSOL protocol's metadata/CUB; labels = class id - 1"
                + (
                    "; masks: segmentation value > 0.5 on 0..255 (any annotator)"
                    if segmentations_dir
                    else ""
                )
            ),
        },
        version=VERSION,
    )


def load(item: CubItem) -> Record:
    """Reads one CUB image (and mask) into a ``Record``; BadRecord names file and index line."""
    images_txt = f"images.txt line {item.images_line}"
    if item.member is not None:
        filename = item.member
        where = common.listed(f"{item.root}:{item.member}", images_txt)
        data = _read_member(item, where)
    else:
        filename = f"images/{item.path}"
        where = common.listed(os.path.join(item.root, filename), images_txt)
        data = common.read_bytes(os.path.join(item.root, filename), where=where)
    image, fmt, width, height = common.stored_image(data, where=where)

    x, y, w, h = item.box
    box = (x, y, x + w, y + h)
    common.check_box(box, where=f"bounding_boxes.txt line {item.box_line} (image {item.path})")

    mask = None
    if item.mask_path is not None:
        mask_where = (
            f"segmentation {item.mask_path} (for {item.path}, images.txt line {item.images_line})"
        )
        if item.mask_archive is not None:
            mask_where = f"{item.mask_archive}:{mask_where}"
            mask_data = _archive_member(item.mask_archive, item.mask_path, mask_where)
        else:
            mask_data = common.read_bytes(item.mask_path, where=mask_where)
        values = common.gray_mask(
            mask_data,
            where=mask_where,
            size=(width, height),
        )
        mask = common.mask_png(values > 0.5)  # the protocol's rule on raw 8-bit values
    return Record(
        image=image,
        image_format=fmt,
        height=height,
        width=width,
        filename=filename,
        source_id=item.path,
        label=item.label,
        label_text=item.label_text,
        boxes=np.asarray([box], np.float64),
        mask_png=mask,
    )


def _id(line: common.IndexLine) -> int:
    return common.to_number(line, 0, int)


def _class_names(lines: list[common.IndexLine]) -> list[str]:
    names = {}
    for line in lines:
        names[_id(line)] = re.sub(r"^\d+\.", "", line.fields[1])
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"{lines[0].path if lines else 'classes.txt'}: class ids must be 1..N")
    return [names[k] for k in range(1, len(names) + 1)]


def _find_root(data_dir: str) -> str:
    """The folder holding images.txt: ``data_dir`` or its ``CUB_200_2011/``."""
    for candidate in (data_dir, os.path.join(data_dir, "CUB_200_2011")):
        if os.path.isfile(os.path.join(candidate, "images.txt")):
            return candidate
    raise FileNotFoundError(
        f"no CUB-200-2011 here: {data_dir} has no images.txt (nor CUB_200_2011/images.txt); "
        "give the extracted CUB_200_2011 folder or the CUB_200_2011.tgz archive"
    )


def _scan_archive(path: str) -> tuple[dict[str, tuple[str, str]], dict, str]:
    """One pass over the archive: the index files' texts and each member's data offset.

    Returns:
      ``{index name: (member name, text)}``, ``{member name: (offset, size)}``
      and the folder prefix of ``images.txt`` in the archive.
    """
    texts: dict[str, tuple[str, str]] = {}
    members: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                members[info.name] = (info.offset_data, info.size)
                base = os.path.basename(info.name)
                depth = info.name.count("/")
                if base in INDEX_FILES and depth <= 1 and base not in texts:
                    data = tar.extractfile(info).read()
                    texts[base] = (info.name, data.decode("utf-8"))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot read the archive ({error}): re-download it") from None
    missing = [name for name in INDEX_FILES if name not in texts]
    if missing:
        raise FileNotFoundError(
            f"{path} has no {', '.join(missing)}: it is not CUB_200_2011.tgz as published"
        )
    return texts, members, texts["images.txt"][0][: -len("images.txt")]


def _archive_names(path: str) -> set[str]:
    try:
        with tarfile.open(path, "r:*") as tar:
            return {info.name for info in tar if info.isfile()}
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot read the archive ({error}): re-download it") from None


def _mask_prefix(members: set[str], images: list[common.IndexLine]) -> str:
    """The folder prefix of the masks in segmentations.tgz (``segmentations/``)."""
    for line in images:
        name = os.path.splitext(line.fields[1])[0] + ".png"
        for member in members:
            if member == name or member.endswith("/" + name):
                return member[: -len(name)]
    raise FileNotFoundError(
        "the segmentations archive holds no <class_dir>/<image>.png of an image in images.txt: "
        "it is not CUB's segmentations.tgz"
    )


# segmentations.tgz is small (tens of MB): each worker reads it once, whole.
_ARCHIVE_FILES: dict[str, dict[str, bytes]] = {}


def _archive_member(path: str, name: str, where: str) -> bytes:
    if path not in _ARCHIVE_FILES:
        files = {}
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                if info.isfile() and info.name.endswith(".png"):
                    files[info.name] = tar.extractfile(info).read()
        _ARCHIVE_FILES[path] = files
    if name not in _ARCHIVE_FILES[path]:
        raise BadRecord(f"{where}: not in the archive: restore it, or skip with --skip_bad")
    return _ARCHIVE_FILES[path][name]


# Per worker process: one open stream per archive, read forward.
_STREAMS: dict[str, object] = {}


def _open_stream(path: str):
    with open(path, "rb") as file:
        magic = file.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - kept open for the worker's lifetime


def _read_member(item: CubItem, where: str) -> bytes:
    if item.size < 0:
        raise BadRecord(f"{where}: not in the archive: re-download it, or skip with --skip_bad")
    stream = _STREAMS.get(item.root)
    if stream is None:
        stream = _STREAMS[item.root] = _open_stream(item.root)
    try:
        stream.seek(item.offset)
        data = stream.read(item.size)
    except (OSError, EOFError) as error:
        _STREAMS.pop(item.root, None)
        raise BadRecord(f"{where}: cannot read it from the archive ({error})") from None
    if len(data) != item.size:
        raise BadRecord(f"{where}: the archive ends inside this file (truncated download)")
    return data
