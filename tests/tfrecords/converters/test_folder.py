"""The folder converter on a generated photo folder (mixed formats, a corrupt file), through
the real writer; boxes from COCO JSON and CSV; each kind of bad input; one run of apps.convert.

Expected values (split membership, pixels, boxes, masks) are computed here from the fixture
and the documented rules, never taken from the converter.
"""

import hashlib
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.tfrecords.converters import fixtures
from tfrecords.converters import folder
from tfrecords.errors import BadRecord
from tfrecords.writer import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
CLASSES = ["bird", "cat", "dog"]  # written in this order; sorted they are the same
# Per class: (file name, how it is written). "last" differs per class.
FILES = [
    ("{c}0.jpg", "jpeg"),  # RGB JPEG: stored byte for byte
    ("{c}1.png", "png"),  # RGB PNG: stored byte for byte
    ("{c}2.bmp", "bmp"),  # RGB BMP: PNG, same pixels
    ("{c}3.webp", "webp"),  # lossless WebP: PNG, same pixels
    ("{c}4.jpg", "gray_jpeg"),  # grayscale JPEG: RGB JPEG, grey on three channels
    ("{c}5.png", "last"),
]
LAST = {"bird": "rgba_png", "cat": "gray16_png", "dog": "gray_png"}


def _encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_photos(root: str, *, corrupt: bool = True) -> dict:
    """A folder of class folders; returns {relative path: (expected RGB pixels, stored format)}.

    The expected pixels are what the module documentation promises for each format;
    for lossy re-encodes (grayscale JPEG) they are the decoded original.
    """
    expected = {}
    number = 0
    for cls in CLASSES:
        entries = [(name.format(c=cls[0]), kind) for name, kind in FILES]
        if cls == "cat":
            entries.append(("sub/C6.JPG", "jpeg"))  # nested folder, upper-case extension
        for name, kind in entries:
            number += 1
            width, height = 24 + 2 * number, 20 + number % 5
            rgb = fixtures.image_array(width, height, 500 + number)
            kind = LAST[cls] if kind == "last" else kind
            if kind == "jpeg":
                data = _encode(rgb, "JPEG", quality=90)
                want, fmt = None, "jpeg"  # None: the stored bytes are the file's
            elif kind == "png":
                data, want, fmt = _encode(rgb, "PNG"), None, "png"
            elif kind == "bmp":
                data, want, fmt = _encode(rgb, "BMP"), rgb, "png"
            elif kind == "webp":
                data, want, fmt = _encode(rgb, "WEBP", lossless=True), rgb, "png"
            elif kind == "gray_jpeg":
                data = _encode(rgb[..., 1], "JPEG", quality=95)
                gray = np.asarray(Image.open(io.BytesIO(data)))
                want, fmt = np.repeat(gray[..., None], 3, -1), "jpeg"
            elif kind == "rgba_png":
                alpha = np.full((height, width, 1), 40, np.uint8)  # mostly transparent
                data, want, fmt = _encode(np.concatenate([rgb, alpha], -1), "PNG"), rgb, "png"
            elif kind == "gray16_png":
                # 16-bit grey v = 257 * g - 100: scaled to 8 bits it is round(v / 257) = g
                g = rgb[..., 0].astype(np.int64)
                values = (257 * g - 100 * (g > 0)).astype(np.uint16)
                data = _encode(values, "PNG")
                gray = np.round(values / 257.0).astype(np.uint8)
                assert np.array_equal(gray, rgb[..., 0])
                want, fmt = np.repeat(gray[..., None], 3, -1), "png"
            elif kind == "gray_png":
                data = _encode(rgb[..., 2], "PNG")
                want, fmt = np.repeat(rgb[..., 2:3], 3, -1), "png"
            rel = f"{cls}/{name}"
            fixtures.write(os.path.join(root, rel), data)
            expected[rel] = {"pixels": want, "format": fmt, "size": (width, height), "kind": kind}
    fixtures.write(os.path.join(root, "bird", "notes.txt"), "not an image")
    fixtures.write(os.path.join(root, "bird", ".DS_Store"), b"\0\1")
    fixtures.write(os.path.join(root, "dog", "._d0.jpg"), b"\0\5AppleDouble")  # hidden: skipped
    if corrupt:
        good = _encode(fixtures.image_array(30, 30, 9), "JPEG")
        fixtures.write(os.path.join(root, "dog", "broken.jpg"), good[: len(good) // 2])
    return expected


def expected_split(paths: list[str], fractions: dict, seed: int) -> dict[str, str]:
    """The documented rule: classes lined up, systematic sampling of train, then val vs test."""

    def digest(text):
        return hashlib.sha256(f"{seed}/{text}".encode()).hexdigest()

    line = sorted(paths, key=lambda path: (path.split("/")[0], digest(path)))
    result, names, left = {}, list(fractions), 1.0
    for name in names[:-1]:
        f = fractions[name] / left
        phase = int(digest(f"phase/{name}")[:16], 16) / 2.0**64
        rest = []
        for g, path in enumerate(line):
            if math.floor((g + 1) * f + phase) > math.floor(g * f + phase):
                result[path] = name
            else:
                rest.append(path)
        line, left = rest, left - fractions[name]
    result.update({path: names[-1] for path in line})
    return result


def _records(output_dir: str, manifest: dict) -> dict[str, dict]:
    return {
        record["id"]: dict(record, split=split)
        for split in manifest["splits"]
        for record in fixtures.read_records(output_dir, split)
    }


def _check_pixels(record: dict, want: dict, root: str) -> None:
    assert record["format"] == want["format"], record["id"]
    assert (record["width"], record["height"]) == want["size"]
    if want["pixels"] is None:  # RGB JPEG / PNG: the file itself
        with open(os.path.join(root, record["id"]), "rb") as file:
            assert record["image"] == file.read()
        return
    stored = Image.open(io.BytesIO(record["image"]))
    assert stored.mode == "RGB", (record["id"], stored.mode)
    pixels = np.asarray(stored).astype(np.int16)
    if want["format"] == "png":  # lossless re-encode
        np.testing.assert_array_equal(pixels, want["pixels"], err_msg=record["id"])
    else:  # grey JPEG re-encoded as RGB JPEG q95
        assert np.abs(pixels - want["pixels"]).mean() < 2.0, record["id"]


# --- the photo folder, with COCO boxes -----------------------------------------------


def _inside(xy: list[float], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd rule: points (xs, ys) inside the polygon xy = [x0, y0, x1, y1, ...]."""
    px, py = np.asarray(xy[0::2]), np.asarray(xy[1::2])
    inside = np.zeros(xs.shape, bool)
    for i in range(len(px)):
        x0, y0, x1, y1 = px[i - 1], py[i - 1], px[i], py[i]
        crosses = (y0 > ys) != (y1 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xs < x_at)
    return inside


def write_coco(path: str, expected: dict, photos: str) -> dict:
    """COCO instances for some photos; returns {relative path: expected boxes, mask info}."""
    from pycocotools import mask as mask_utils

    size = {rel: e["size"] for rel, e in expected.items()}
    categories = [{"id": 7, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}]
    w_c1, h_c1 = size["cat/c1.png"]
    rle_mask = np.zeros((h_c1, w_c1), np.uint8)
    rle_mask[4:11, 6:19] = 1
    rle_mask[12:14, 2:5] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode()  # as JSON holds it
    w_b2, h_b2 = size["bird/b2.bmp"]
    plain_mask = np.zeros((h_b2, w_b2), np.uint8)
    plain_mask[1:6, 2:9] = 1
    column_major = plain_mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(column_major)) + 1
    runs = np.diff(np.concatenate([[0], edges, [column_major.size]])).tolist()
    plain_rle = {"counts": ([0] if column_major[0] else []) + runs, "size": [h_b2, w_b2]}
    triangle = [3.0, 2.0, 20.0, 4.5, 9.5, 15.0]
    square = [2.0, 3.0, 12.0, 3.0, 12.0, 11.0, 2.0, 11.0]
    images = [
        {"id": 1, "file_name": "bird/b0.jpg"},  # relative path
        {"id": 2, "file_name": os.path.join(photos, "cat", "c1.png")},  # absolute path
        {"id": 3, "file_name": "d2.bmp"},  # unique base name
        {"id": 4, "file_name": "images/dog/d3.webp"},  # a tool's prefix; no annotations
        {"id": 5, "file_name": "bird/b2.bmp"},
    ]
    for image in images:
        rel = {
            1: "bird/b0.jpg",
            2: "cat/c1.png",
            3: "dog/d2.bmp",
            4: "dog/d3.webp",
            5: "bird/b2.bmp",
        }[image["id"]]
        image["width"], image["height"] = size[rel]
    annotations = [
        # integer bbox: pixels 2..11 x 3..10; polygon segmentation
        {
            "id": 11,
            "image_id": 1,
            "category_id": 7,
            "bbox": [2, 3, 10, 8],
            "segmentation": [square],
        },
        # fractional bbox: overlaps columns 1..8, rows 2..7
        {
            "id": 12,
            "image_id": 1,
            "category_id": 7,
            "bbox": [1.5, 2.25, 7.5, 5.0],
            "segmentation": [triangle],
        },
        {
            "id": 13,
            "image_id": 2,
            "category_id": 3,
            "bbox": [6, 4, 13, 10],
            "segmentation": rle,
            "iscrowd": 0,
        },
        {"id": 14, "image_id": 3, "category_id": 9, "bbox": [0, 0, 5.0000001, 4]},  # float noise
        {"id": 15, "image_id": 3, "category_id": 7, "bbox": [1, 1, 3, 3]},  # a bird in a dog photo
        {
            "id": 16,
            "image_id": 5,
            "category_id": 7,
            "bbox": [2, 1, 7, 5],
            "segmentation": plain_rle,
        },
    ]
    fixtures.write(
        path,
        json.dumps({"images": images, "annotations": annotations, "categories": categories}),
    )
    return {
        "bird/b0.jpg": {"boxes": [(2, 3, 11, 10), (1, 2, 8, 7)], "polygons": [square, triangle]},
        "cat/c1.png": {"boxes": [(6, 4, 18, 13)], "mask": rle_mask},
        "dog/d2.bmp": {"boxes": [(0, 0, 4, 3)]},
        "bird/b2.bmp": {"boxes": [(2, 1, 8, 5)], "mask": plain_mask},
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder")
    root = str(base / "photos")
    expected = write_photos(root)
    coco = write_coco(str(base / "annotations.json"), expected, root)
    return {
        "root": root,
        "expected": expected,
        "coco": coco,
        "json": str(base / "annotations.json"),
    }


@pytest.fixture(scope="module")
def converted(photos, tmp_path_factory):
    """Two conversions of the same folder with the same seed (COCO boxes, --skip_bad)."""
    outputs = []
    for name in ("first", "second"):
        source = folder.make_source(
            photos["root"], split="0.6,0.2,0.2", seed=5, boxes=photos["json"], skip_bad=True
        )
        output = str(tmp_path_factory.mktemp(name))
        manifest = write_dataset(source, output, workers=0, skip_bad=True, progress=False)
        outputs.append((output, manifest))
    return outputs


def test_counts_classes_split_and_formats(photos, converted):
    output, manifest = converted[0]
    expected = photos["expected"]
    records = _records(output, manifest)
    assert manifest["class_names"] == CLASSES
    assert sorted(records) == sorted(expected)  # 19 images; broken.jpg skipped
    skipped = [m for s in manifest["splits"].values() for m in s["skipped"]]
    assert len(skipped) == 1 and "dog/broken.jpg" in skipped[0]
    # The split is the documented rule on all 20 image files (broken.jpg included).
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    want = expected_split([*expected, "dog/broken.jpg"], fractions, seed=5)
    assert {path: r["split"] for path, r in records.items()} == {p: want[p] for p in expected}
    sizes = {name: sum(s == name for s in want.values()) for name in fractions}
    info = manifest["source"]
    for name, split in manifest["splits"].items():
        assert split["num_items"] == sizes[name]
        assert abs(sizes[name] - fractions[name] * 20) < 1.0  # totals within one image
        assert split["num_records"] == sizes[name] - split["num_skipped"]
        for label, cls in enumerate(CLASSES):
            n_class = sum(p.startswith(cls + "/") for p in want)
            n_here = sum(p.startswith(cls + "/") and s == name for p, s in want.items())
            # stratified: train within one image of its share, val/test within two
            assert abs(n_here - fractions[name] * n_class) < (1.0 if name == "train" else 2.0)
            assert info["class_counts"][name][label] == n_here
    assert info["split_from"] == "fractions"
    assert info["ignored_files"]["count"] == 1  # notes.txt; hidden files are not counted
    for path, record in records.items():
        assert record["label_text"] == path.split("/")[0]
        assert record["label"] == CLASSES.index(path.split("/")[0])
        assert record["filename"] == path
        _check_pixels(record, expected[path], photos["root"])


def test_same_seed_gives_identical_records(converted, photos):
    (first, manifest_a), (second, manifest_b) = converted
    shards_a = [
        (s["file"], s["sha256"]) for v in manifest_a["splits"].values() for s in v["shards"]
    ]
    shards_b = [
        (s["file"], s["sha256"]) for v in manifest_b["splits"].values() for s in v["shards"]
    ]
    assert shards_a == shards_b
    other = folder.make_source(photos["root"], split="0.6,0.2,0.2", seed=6, skip_bad=True)
    same = folder.make_source(photos["root"], split="0.6,0.2,0.2", seed=5, skip_bad=True)
    paths = lambda source: {n: sorted(i.path for i in items) for n, items in source.splits.items()}
    assert paths(other) != paths(same)  # the seed matters


def test_coco_boxes_and_masks(photos, converted):
    from pycocotools.coco import COCO

    output, manifest = converted[0]
    records = _records(output, manifest)
    coco_boxes = photos["coco"]
    reference = COCO(photos["json"])
    for path, record in records.items():
        width, height = record["width"], record["height"]
        want = coco_boxes.get(path, {"boxes": []})
        np.testing.assert_allclose(
            record["boxes"].reshape(-1, 4),
            np.reshape([fixtures.normalized(b, width, height) for b in want["boxes"]], (-1, 4)),
            atol=1e-6,
            err_msg=path,
        )
        mask = fixtures.decode_png(record["mask_png"]) > 0 if record["mask_png"] else None
        if path == "bird/b0.jpg":  # union of two polygons, as pycocotools rasterises them
            union = np.zeros((height, width), bool)
            for ann in reference.loadAnns(reference.getAnnIds(imgIds=[1])):
                union |= reference.annToMask(ann).astype(bool)
            np.testing.assert_array_equal(mask, union)
            # and it is the polygons: pixel centres inside them, up to their edges
            inside = np.zeros((height, width), bool)
            ys, xs = np.mgrid[0:height, 0:width] + 0.5
            for polygon in want["polygons"]:
                inside |= _inside(polygon, xs, ys)
            assert mask.sum() > 0 and (mask & inside).sum() / (mask | inside).sum() > 0.8
        elif path in ("cat/c1.png", "bird/b2.bmp"):  # compressed and uncompressed RLE
            np.testing.assert_array_equal(mask, want["mask"].astype(bool))
        else:
            assert mask is None, path
    info = manifest["source"]
    boxed = {name: 0 for name in manifest["splits"]}
    for path in coco_boxes:
        boxed[records[path]["split"]] += 1
    assert info["boxed_counts"] == boxed
    assert {name: split["num_with_boxes"] for name, split in manifest["splits"].items()} == boxed
    assert info["other_class_boxes"] == 1  # the bird box in a dog photo
    assert info["boxes_format"] == "coco"
    assert not manifest["splits"][records["bird/b0.jpg"]["split"]]["has_masks"]


def test_csv_boxes(photos, tmp_path):
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text(
        "filename,xmin,ymin,xmax,ymax,class\n"
        "cat/c0.jpg,1,2,10,12,cat\n"
        "c0.jpg,0,0,3.5,4,cat\n"  # base name, fractional corner kept
        "cat/sub/C6.JPG,5,6,200,7,cat\n"  # beyond the right edge: clipped
        "dog/d4.jpg,2,2,9,9,cat\n"  # another class: dropped
        "\n"
    )
    source = folder.make_source(
        photos["root"], split="0.5,0.5", seed=1, boxes=str(csv_path), skip_bad=True
    )
    output = str(tmp_path / "out")
    manifest = write_dataset(source, output, workers=0, skip_bad=True, progress=False)
    records = _records(output, manifest)
    assert set(manifest["splits"]) == {"train", "val"}
    want = {"cat/c0.jpg": [(1, 2, 10, 12), (0, 0, 3.5, 4)], "cat/sub/C6.JPG": [(5, 6, 200, 7)]}
    for path, record in records.items():
        boxes = [
            fixtures.normalized(b, record["width"], record["height"]) for b in want.get(path, [])
        ]
        np.testing.assert_allclose(
            record["boxes"].reshape(-1, 4), np.reshape(boxes, (-1, 4)), atol=1e-6, err_msg=path
        )
        assert record["mask_png"] == b""
    assert sum(s["num_clipped_boxes"] for s in manifest["splits"].values()) == 1
    assert sum(manifest["source"]["boxed_counts"].values()) == 2
    assert manifest["source"]["other_class_boxes"] == 1

    # No header: positional, the class column optional row by row.
    csv_path.write_text("dog/d1.png,3,4,5,6\ndog/d0.jpg,1,1,2,2,dog\n")
    source = folder.make_source(photos["root"], boxes=str(csv_path), skip_bad=True)
    boxed = sorted((i.path, i.boxes) for items in source.splits.values() for i in items if i.boxes)
    assert boxed == [
        ("dog/d0.jpg", ((1.0, 1.0, 2.0, 2.0),)),
        ("dog/d1.png", ((3.0, 4.0, 5.0, 6.0),)),
    ]


def test_corrupt_image_is_named_and_nothing_is_half_written(photos, tmp_path):
    source = folder.make_source(photos["root"], split="0.6,0.2,0.2", seed=5)
    output = str(tmp_path / "out")
    with pytest.raises(BadRecord, match=r"dog/broken\.jpg does not decode"):
        write_dataset(source, output, workers=0, progress=False)
    assert not os.path.exists(os.path.join(output, "manifest.json"))
    assert not [name for name in os.listdir(output) if ".tmp-" in name]


def test_split_folders(tmp_path):
    root = str(tmp_path / "photos")
    layout = {"train": {"b": 3, "a": 2}, "val": {"a": 1, "b": 1}, "test": {"c": 2}}
    for split, classes in layout.items():
        for cls, count in classes.items():
            for k in range(count):
                data = _encode(fixtures.image_array(20, 16, k), "PNG")
                fixtures.write(os.path.join(root, split, cls, f"{k}.png"), data)
    source = folder.make_source(root, split="0.1,0.9", seed=0)
    output = str(tmp_path / "out")
    manifest = write_dataset(source, output, workers=0, progress=False)
    assert manifest["class_names"] == ["a", "b", "c"]
    assert manifest["source"]["split_from"] == "folders"
    for split, classes in layout.items():
        records = fixtures.read_records(output, split)
        assert sorted(r["id"] for r in records) == sorted(
            f"{split}/{cls}/{k}.png" for cls, count in classes.items() for k in range(count)
        )
        for record in records:
            assert record["label"] == ["a", "b", "c"].index(record["id"].split("/")[1])


# --- bad input ------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    """Two classes with a shared base name, and an empty class folder."""
    root = str(tmp_path / "small")
    for path in ("cat/same.png", "cat/c.png", "dog/same.png", "dog/d.png"):
        fixtures.write(os.path.join(root, path), _encode(fixtures.image_array(20, 16, 1), "PNG"))
    os.makedirs(os.path.join(root, "empty"))
    return root


def test_empty_class_folder(small):
    with pytest.raises(ValueError, match=r"empty: class folder with no images") as error:
        folder.make_source(small)
    assert "--skip_bad" in str(error.value)
    source = folder.make_source(small, skip_bad=True)
    assert source.class_names == ["cat", "dog"]
    assert source.info["scan_skipped"]["by_kind"] == {"empty_class_folder": 1}


def _bad_boxes(small, name, text, match, kind):
    path = os.path.join(os.path.dirname(small), name)
    fixtures.write(path, text)
    os.rmdir(os.path.join(small, "empty"))
    with pytest.raises(ValueError, match=match):
        folder.make_source(small, boxes=path)
    source = folder.make_source(small, boxes=path, skip_bad=True)
    assert source.info["scan_skipped"]["by_kind"] == {kind: 1}
    return source


def test_duplicate_base_name_is_reported_with_both_files(small):
    source = _bad_boxes(
        small,
        "boxes.csv",
        "same.png,1,1,4,4\ncat/c.png,1,1,5,5\n",
        r"boxes\.csv line 1: file name 'same\.png' matches 2 images "
        r"\(cat/same\.png, dog/same\.png\)",
        "ambiguous_file_name",
    )
    boxed = {i.path: i.boxes for items in source.splits.values() for i in items if i.boxes}
    assert boxed == {"cat/c.png": ((1.0, 1.0, 5.0, 5.0),)}


def test_box_for_missing_file(small):
    _bad_boxes(
        small,
        "boxes.csv",
        "cat/ghost.png,1,1,4,4\n",
        r"boxes\.csv line 1: a box for 'cat/ghost\.png', but no such image",
        "box_for_missing_file",
    )


def test_coco_category_not_a_folder(small):
    coco = {
        "images": [{"id": 1, "file_name": "cat/c.png", "width": 20, "height": 16}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 2, "bbox": [1, 1, 3, 3]}],
        "categories": [{"id": 2, "name": "horse"}],
    }
    _bad_boxes(
        small,
        "coco.json",
        json.dumps(coco),
        r"coco\.json annotation id 5 \(image cat/c\.png\): category 'horse' is not a class folder",
        "unknown_category",
    )


def test_csv_class_not_a_folder(small):
    _bad_boxes(
        small,
        "boxes.csv",
        "filename,xmin,ymin,xmax,ymax,class\ncat/c.png,1,1,3,3,horse\n",
        r"boxes\.csv line 2: class 'horse' is not a class folder \(cat, dog\)",
        "unknown_category",
    )


def test_malformed_box_leaves_the_image_out(small):
    source = _bad_boxes(
        small,
        "boxes.csv",
        "dog/d.png,5,1,2,4\n",
        r"boxes\.csv line 1: box .* has xmax < xmin",
        "bad_annotation",
    )
    assert "dog/d.png" not in [i.path for items in source.splits.values() for i in items]


def test_annotation_size_must_match_the_file(small, tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "dog/d.png", "width": 16, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]}],
        "categories": [{"id": 1, "name": "dog"}],
    }
    path = str(tmp_path / "coco.json")
    fixtures.write(path, json.dumps(coco))
    source = folder.make_source(small, boxes=path, skip_bad=True)
    item = next(i for items in source.splits.values() for i in items if i.path == "dog/d.png")
    with pytest.raises(BadRecord, match=r"dog/d\.png: coco\.json image id 1 says .*swapped"):
        folder.load(item)


def test_bad_arguments_and_layouts(small, tmp_path):
    for split in ("0.8,0.1", "a,b", "0.5,0.5,0.5,-0.5", "1.2,-0.2"):
        with pytest.raises(ValueError, match="must be 2 or 3 fractions"):
            folder.make_source(small, split=split, skip_bad=True)
    os.makedirs(os.path.join(small, "train", "cat"))
    with pytest.raises(ValueError, match=r"holds split folders \(train\) and other folders"):
        folder.make_source(small)
    with pytest.raises(ValueError, match="no images in"):
        folder.make_source(str(tmp_path / "small" / "train"), skip_bad=True)
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        folder.make_source(str(tmp_path / "nowhere"))


def test_coco_box_rounding():
    """floor(x), ceil(x + w) - 1, with float noise absorbed (values computed by hand)."""
    assert folder.coco_box_to_pixels([10, 20, 30, 40]) == (10, 20, 39, 59)
    assert folder.coco_box_to_pixels([0.5, 0.25, 2.0, 1.0]) == (0, 0, 2, 1)
    assert folder.coco_box_to_pixels([0.1, 0.2, 0.2, 0.1]) == (0, 0, 0, 0)
    assert folder.coco_box_to_pixels([2.9999999, 0, 1.0000001, 1]) == (3, 0, 3, 0)


# --- through apps.convert ---------------------------------------------------------------


@pytest.mark.slow
def test_convert_app(photos, tmp_path):
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text("bird/b1.png,1,2,10,12\n")
    output = str(tmp_path / "out")
    command = [
        sys.executable,
        "-m",
        "apps.convert",
        "--dataset=folder",
        f"--data_dir={photos['root']}",
        f"--output_dir={output}",
        "--split=0.6,0.2,0.2",
        "--seed=5",
        f"--boxes={csv_path}",
        "--skip_bad",
        "--workers=1",
        "--noprogress",
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(os.path.join(output, "manifest.json")) as file:
        manifest = json.load(file)
    want = expected_split(
        [*photos["expected"], "dog/broken.jpg"], {"train": 0.6, "val": 0.2, "test": 0.2}, 5
    )
    assert {n: s["num_items"] for n, s in manifest["splits"].items()} == {
        "train": 12,
        "val": 4,
        "test": 4,
    }
    assert sum(s["num_skipped"] for s in manifest["splits"].values()) == 1
    assert manifest["source"]["boxed_counts"][want["bird/b1.png"]] == 1
    assert sum(manifest["source"]["boxed_counts"].values()) == 1

    bad = [c for c in command if c != "--skip_bad"] + ["--overwrite"]
    run = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "dog/broken.jpg" in run.stderr
