"""Tiny datasets in their publishers' layouts, and a reader of converted records.

Each ``write_*`` function writes a few generated images with real index files
and returns what a test needs to compute the expected records itself (the
paths and sizes it chose); the expected boxes are computed in the tests
from the index files, never taken from the converters.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image


def image_array(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth RGB pattern (compresses well, decodes to distinct images per seed)."""
    rng = np.random.RandomState(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        127
        + 120
        * np.sin(xs / rng.uniform(3, 9) + rng.uniform(0, 6))
        * np.cos(ys / rng.uniform(3, 9) + rng.uniform(0, 6))
        for _ in range(3)
    ]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    mode = "L" if array.ndim == 2 else "RGB"
    Image.fromarray(array, mode=mode).save(
        buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {})
    )
    return buffer.getvalue()


def write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as file:
        file.write(data)


def gray_mask(width: int, height: int, box: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """An 8-bit mask like CUB's: 255 inside an ellipse in ``box``, soft values at its edge."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = max((x1 - x0) / 2, 1), max((y1 - y0) / 2, 1)
    r = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2
    mask = np.zeros((height, width), np.uint8)
    mask[r <= 1.0] = 255
    edge = (r > 1.0) & (r <= 1.3)
    mask[edge] = np.random.RandomState(seed).choice([0, 51, 102, 153], size=int(edge.sum()))
    return mask


# --- CUB-200-2011 --------------------------------------------------------------

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def write_cub(parent: str, *, per_class: int = 3, segmentations: bool = True) -> dict:
    """``<parent>/CUB_200_2011/`` (+ ``<parent>/segmentations/``) as published.

    Image ids are 1-based in images.txt order; every class has train and test
    images; the last image's box reaches past the right edge (x + w = W + 3).

    Returns:
      ``{"root", "segmentations", "images": [{id, path, width, height}]}``.
    """
    root = os.path.join(parent, "CUB_200_2011")
    seg_root = os.path.join(parent, "segmentations")
    images, lines = [], {name: [] for name in ("images", "labels", "split", "boxes")}
    image_id = 0
    for class_index, class_dir in enumerate(CUB_CLASSES):
        for k in range(per_class):
            image_id += 1
            width, height = 40 + 4 * image_id, 32 + 3 * (image_id % 4)
            stem = f"{class_dir.split('.', 1)[1]}_{k:04d}_{1000 + image_id}"
            rel = f"{class_dir}/{stem}.jpg"
            write(os.path.join(root, "images", rel), encode(image_array(width, height, image_id)))
            x, y = 2.0 + image_id % 5, 3.0 + image_id % 3
            w, h = float(width // 2), float(height // 2 + 1)
            if image_id == len(CUB_CLASSES) * per_class:
                w = float(width - x + 3)  # beyond the right edge: must be clipped and counted
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {class_index + 1}")
            lines["split"].append(f"{image_id} {1 if k % 2 == 0 else 0}")
            lines["boxes"].append(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
            if segmentations:
                mask = gray_mask(width, height, (int(x), int(y), int(x + w), int(y + h)), image_id)
                write(os.path.join(seg_root, class_dir, f"{stem}.png"), encode(mask, "PNG"))
            images.append({"id": image_id, "path": rel, "width": width, "height": height})
    write(os.path.join(root, "images.txt"), "\n".join(lines["images"]) + "\n")
    write(os.path.join(root, "image_class_labels.txt"), "\n".join(lines["labels"]) + "\n")
    write(os.path.join(root, "train_test_split.txt"), "\n".join(lines["split"]) + "\n")
    write(os.path.join(root, "bounding_boxes.txt"), "\n".join(lines["boxes"]) + "\n")
    write(
        os.path.join(root, "classes.txt"),
        "".join(f"{k + 1} {name}\n" for k, name in enumerate(CUB_CLASSES)),
    )
    return {"root": root, "segmentations": seg_root if segmentations else None, "images": images}


def tar_folder(folder: str, archive: str, *, reverse: bool = False) -> str:
    """``tar czf archive -C parent folder`` (members in sorted order, or reversed)."""
    parent = os.path.dirname(folder)
    paths = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            paths.append(os.path.join(dirpath, name))
    if reverse:
        paths.reverse()
    with tarfile.open(archive, "w:gz") as tar:
        for path in paths:
            tar.add(path, arcname=os.path.relpath(path, parent))
    return archive


# --- FGVC-Aircraft -------------------------------------------------------------

AIRCRAFT = {  # variant -> (family, manufacturer)
    "707-320": ("Boeing 707", "Boeing"),
    "727-200": ("Boeing 727", "Boeing"),
    "A300B4": ("A300", "Airbus"),
    "DC-3": ("DC-3", "Douglas Aircraft Company"),
}


def write_aircraft(parent: str, *, per_split: int = 2) -> dict:
    """``<parent>/fgvc-aircraft-2013b/data/`` as published (1-based boxes, banner rows).

    The bottom 20 rows of every image are a white "banner"; one test image's
    box reaches into the banner (it is clipped after the crop).

    Returns:
      ``{"root", "images": {id: {width, height, variant, split}}}``.
    """
    root = os.path.join(parent, "fgvc-aircraft-2013b")
    data = os.path.join(root, "data")
    variants = list(AIRCRAFT)
    families = sorted({f for f, _ in AIRCRAFT.values()})
    manufacturers = sorted({m for _, m in AIRCRAFT.values()})
    write(os.path.join(data, "variants.txt"), "\n".join(variants) + "\n")
    write(os.path.join(data, "families.txt"), "\n".join(families) + "\n")
    write(os.path.join(data, "manufacturers.txt"), "\n".join(manufacturers) + "\n")
    images, box_lines = {}, []
    split_lines = {
        (level, split): []
        for level in ("variant", "family", "manufacturer")
        for split in ("train", "val", "test", "trainval")
    }
    number = 0
    for split in ("train", "val", "test"):
        for k in range(per_split * len(variants)):
            number += 1
            image_id = f"{1000000 + 7919 * number:07d}"
            variant = variants[k % len(variants)]
            family, manufacturer = AIRCRAFT[variant]
            width, height = 60 + 2 * number, 50 + number % 7
            array = image_array(width, height, 100 + number)
            array[-20:] = 255  # the copyright banner
            write(os.path.join(data, "images", f"{image_id}.jpg"), encode(array))
            # 1-based inclusive corners (top-left pixel is (1, 1)).
            xmin, ymin = 1 + number % 4, 2 + number % 3
            xmax, ymax = width - 3, height - 25
            if split == "test" and k == 0:
                ymax = height - 5  # inside the banner: clipped after the crop
            box_lines.append(f"{image_id} {xmin} {ymin} {xmax} {ymax}")
            for level, label in (
                ("variant", variant),
                ("family", family),
                ("manufacturer", manufacturer),
            ):
                split_lines[(level, split)].append(f"{image_id} {label}")
            images[image_id] = {
                "width": width,
                "height": height,
                "variant": variant,
                "family": family,
                "manufacturer": manufacturer,
                "split": split,
            }
    write(os.path.join(data, "images_box.txt"), "\n".join(box_lines) + "\n")
    for (level, split), lines in split_lines.items():
        if split == "trainval":
            lines = split_lines[(level, "train")] + split_lines[(level, "val")]
        write(os.path.join(data, f"images_{level}_{split}.txt"), "\n".join(lines) + "\n")
    return {
        "root": root,
        "images": images,
        "families": families,
        "manufacturers": manufacturers,
        "variants": variants,
    }


# --- Stanford Dogs -------------------------------------------------------------

DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def voc_xml(filename: str, width: int, height: int, boxes: list[tuple[int, ...]]) -> str:
    objects = "".join(
        f"<object><name>dog</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for b in boxes
    )
    return (
        f"<annotation><folder>{filename.split('_')[0]}</folder><filename>{filename}</filename>"
        f"<source><database>ImageNet database</database></source><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size><segment>0</segment>{objects}"
        "</annotation>"
    )


def write_dogs(root: str, *, per_class: int = 3) -> dict:
    """``<root>/{Images,Annotation}/`` and ``train_list.mat`` / ``test_list.mat`` as published.

    The first image has two dogs (two ``<object>``s); one test image's second
    box passes the bottom edge.

    Returns:
      ``{"root", "images": {file: {width, height, label, split, boxes}}}``.
    """
    import scipy.io

    lists = {"train": ([], [], []), "test": ([], [], [])}
    images = {}
    number = 0
    for label, folder in enumerate(DOG_FOLDERS, start=1):
        wnid = folder.split("-")[0]
        for k in range(per_class):
            number += 1
            stem = f"{wnid}_{100 + 37 * number}"
            width, height = 48 + 3 * number, 40 + number % 5
            write(
                os.path.join(root, "Images", folder, f"{stem}.jpg"),
                encode(image_array(width, height, 200 + number)),
            )
            boxes = [(number % 4, 1 + number % 3, width // 2 + 3, height - 2)]
            if number == 1 or k == 1:
                boxes.append((width // 3, height // 4, width - 1, height - 1 + 4 * (k == 1)))
            write(
                os.path.join(root, "Annotation", folder, stem), voc_xml(stem, width, height, boxes)
            )
            split = "train" if k < 2 else "test"
            files, annotations, labels = lists[split]
            files.append(f"{folder}/{stem}.jpg")
            annotations.append(f"{folder}/{stem}")
            labels.append(label)
            images[f"{folder}/{stem}.jpg"] = {
                "width": width,
                "height": height,
                "label": label,
                "split": split,
                "boxes": boxes,
            }
    for split, (files, annotations, labels) in lists.items():
        # As published: N x 1 cell arrays of strings and an N x 1 double array.
        cells = np.empty((len(files), 1), dtype=object)
        cells[:, 0] = files
        annotation_cells = np.empty((len(files), 1), dtype=object)
        annotation_cells[:, 0] = annotations
        scipy.io.savemat(
            os.path.join(root, f"{split}_list.mat"),
            {
                "file_list": cells,
                "annotation_list": annotation_cells,
                "labels": np.asarray(labels, np.float64).reshape(-1, 1),
            },
        )
    return {"root": root, "images": images}


# --- WSOL protocol metadata -------------------------------------------------------


def write_wsol_boxes(data_dir: str, metadata_dir: str) -> dict:
    """CUB-like metadata: train (labels only), val and test with boxes (val: 2 boxes/image).

    Returns:
      ``{split: [{id, label, width, height, boxes}]}``.
    """
    splits = {}
    number = 0
    for split in ("train", "val", "test"):
        entries = []
        for k in range(4):
            number += 1
            image_id = f"{split}/{k % 2:03d}.cls/img_{number}.jpg"
            width, height = 44 + 2 * number, 36 + number % 6
            write(
                os.path.join(data_dir, image_id), encode(image_array(width, height, 300 + number))
            )
            boxes = [] if split == "train" else [(1 + k, 2, width // 2, height - 3)]
            if split == "val":
                boxes.append((width // 3, 1, width - 1, height // 2))
            if split == "test" and k == 3:
                boxes[0] = (3, 2, width + 6, height - 1)  # clipped and counted
            entries.append(
                {"id": image_id, "label": k % 2, "width": width, "height": height, "boxes": boxes}
            )
        folder = os.path.join(metadata_dir, split)
        write(os.path.join(folder, "image_ids.txt"), "".join(f"{e['id']}\n" for e in entries))
        write(
            os.path.join(folder, "class_labels.txt"),
            "".join(f"{e['id']},{e['label']}\n" for e in entries),
        )
        write(
            os.path.join(folder, "image_sizes.txt"),
            "".join(f"{e['id']},{e['width']},{e['height']}\n" for e in entries),
        )
        if split != "train":
            write(
                os.path.join(folder, "localization.txt"),
                "".join(
                    f"{e['id']},{b[0]},{b[1]},{b[2]},{b[3]}\n" for e in entries for b in e["boxes"]
                ),
            )
        splits[split] = entries
    return splits


def write_wsol_masks(data_dir: str, metadata_dir: str) -> dict:
    """OpenImages-like metadata: ``val`` and ``test`` with instance masks and ignore masks.

    One image has two instance masks (their union is the mask), one mask is
    stored at half the image's size (resized by the converter).

    Returns:
      ``{split: [{id, label, width, height, masks: [(path, array)], ignore: (path, array)}]}``.
    """
    splits = {}
    number = 0
    for split in ("val", "test"):
        entries = []
        for k in range(3):
            number += 1
            stem = f"{split}/0cls{k % 2}/{number:08x}"
            width, height = 40 + 4 * number, 32 + 2 * number
            write(
                os.path.join(data_dir, f"{stem}.jpg"),
                encode(image_array(width, height, 400 + number)),
            )
            masks = []
            first = np.zeros((height, width), np.uint8)
            first[2 : height // 2, 3 : width // 2] = 255
            masks.append((f"{stem}_m0cls_{number:04d}a.png", first))
            if k == 0:
                second = np.zeros((height // 2, width // 2), np.uint8)  # half size
                second[height // 4 :, width // 4 :] = 200
                masks.append((f"{stem}_m0cls_{number:04d}b.png", second))
            ignore = np.zeros((height, width), np.uint8)
            ignore[height // 3 :, :] = 255
            ignore_path = f"{stem}_ignore.png"
            for path, array in masks + [(ignore_path, ignore)]:
                write(os.path.join(data_dir, path), encode(array, "PNG"))
            entries.append(
                {
                    "id": f"{stem}.jpg",
                    "label": k % 2,
                    "width": width,
                    "height": height,
                    "masks": masks,
                    "ignore": (ignore_path, ignore),
                }
            )
        folder = os.path.join(metadata_dir, split)
        write(os.path.join(folder, "image_ids.txt"), "".join(f"{e['id']}\n" for e in entries))
        write(
            os.path.join(folder, "class_labels.txt"),
            "".join(f"{e['id']},{e['label']}\n" for e in entries),
        )
        lines = []
        for e in entries:
            for number_in_image, (path, _) in enumerate(e["masks"]):
                lines.append(f"{e['id']},{path},{e['ignore'][0] if number_in_image == 0 else ''}")
        write(os.path.join(folder, "localization.txt"), "\n".join(lines) + "\n")
        splits[split] = entries
    return splits


# --- reading converted records -----------------------------------------------------


def read_records(output_dir: str, split: str) -> list[dict]:
    """Every record of a converted split, parsed with the schema, as numpy values."""
    import glob

    import tensorflow as tf

    from tfrecords import schema

    files = sorted(glob.glob(os.path.join(output_dir, f"{split}-*-of-*.tfrecord")))
    records = []
    for serialized in tf.data.TFRecordDataset(files):
        parsed = schema.parse_example(serialized)
        record = {key: value.numpy() for key, value in parsed.items()}
        for key in ("format", "filename", "id", "label_text"):
            record[key] = record[key].decode()
        records.append(record)
    return records


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def decode_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def normalized(box, width: int, height: int) -> np.ndarray:
    """Inclusive pixel ``(x0, y0, x1, y1)`` -> the stored ``(ymin, xmin, ymax, xmax)``, clipped."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = np.clip([x0, x1], 0, width - 1)
    y0, y1 = np.clip([y0, y1], 0, height - 1)
    return np.array([y0 / height, x0 / width, y1 / height, x1 / width], np.float32)
