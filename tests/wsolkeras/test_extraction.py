"""wsolkeras.extraction: finding and reading images, boxes in original pixels, the outputs.

``extract`` is driven here by a predictor written in numpy (known outputs), so
what is tested is the bookkeeping; the model's answers: tests/apps/test_extract.py.
"""

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from wsolkeras import extraction


def save(path, image, kind):
    Image.fromarray(image).save(path, format=kind)


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    save(root / "b.PNG", rng.integers(0, 256, (12, 20), dtype=np.uint8), "PNG")
    save(root / "a.jpg", rng.integers(0, 256, (30, 18, 3), dtype=np.uint8), "JPEG")
    save(root / "c.bmp", rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), "BMP")
    save(root / "sub" / "d.png", rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "PNG")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "notes.txt").write_text("hello")
    return root


def test_find_images_in_a_folder_or_a_glob(folder):
    names = [p.rsplit("/", 1)[1] for p in extraction.find_images(str(folder))]
    assert names == ["a.jpg", "b.PNG", "broken.png", "c.bmp"]
    everything = extraction.find_images(f"{folder}/**/*")
    assert [p.rsplit("/", 1)[1] for p in everything] == [
        "a.jpg", "b.PNG", "broken.png", "c.bmp", "notes.txt", "d.png",
    ]  # fmt: skip
    assert extraction.find_images(f"{folder}/*.gif") == []


def test_read_image_gives_rgb_or_says_why_not(folder):
    gray = extraction.read_image(str(folder / "b.PNG"))
    assert gray.shape == (12, 20, 3) and gray.dtype == np.uint8
    expected = np.asarray(Image.open(folder / "b.PNG"))
    for channel in range(3):
        np.testing.assert_array_equal(gray[..., channel], expected)
    rgba = extraction.read_image(str(folder / "sub" / "d.png"))
    np.testing.assert_array_equal(rgba, np.asarray(Image.open(folder / "sub" / "d.png"))[..., :3])
    assert extraction.read_image(str(folder / "c.bmp")).shape == (9, 7, 3)
    with pytest.raises(extraction.UnreadableImage, match=r"broken\.png: a damaged JPEG/PNG"):
        extraction.read_image(str(folder / "broken.png"))
    with pytest.raises(extraction.UnreadableImage, match=r"notes\.txt: not an image"):
        extraction.read_image(str(folder / "notes.txt"))
    with pytest.raises(extraction.UnreadableImage, match="cannot be read"):
        extraction.read_image(str(folder / "missing.png"))


@pytest.mark.parametrize(("width", "height"), [(640, 480), (33, 97), (32, 32), (1, 5)])
def test_pixel_box_inverts_the_normalised_convention(width, height):
    rng = np.random.default_rng(width)
    for _ in range(50):
        x0, x1 = sorted(rng.integers(0, width, 2))
        y0, y1 = sorted(rng.integers(0, height, 2))
        normalised = [y0 / height, x0 / width, y1 / height, x1 / width]
        assert extraction.pixel_box(normalised, width, height) == [x0, y0, x1, y1]
    # A box at 32 x 32 (inclusive pixel / 32), in the original image: floor(v * side).
    got = extraction.pixel_box([4 / 32, 8 / 32, 31 / 32, 31 / 32], width, height)
    assert got == [
        math.floor(8 / 32 * width + 1e-4),
        math.floor(4 / 32 * height + 1e-4),
        min(math.floor(31 / 32 * width + 1e-4), width - 1),
        min(math.floor(31 / 32 * height + 1e-4), height - 1),
    ]


def fake_predictor(size=8):
    """Class (image mean > 127) first; a map bright in the top-left quarter; a fixed box."""
    calls = []

    def predict(pixels):
        calls.append(pixels.shape)
        bright = pixels.mean(axis=(1, 2, 3)) > 127
        ids = np.stack([bright.astype(np.int32), 1 - bright.astype(np.int32)], 1)
        heat = np.zeros((len(pixels), size, size), np.float32)
        heat[:, : size // 2, : size // 2] = 1
        return {
            "class_ids": ids,
            "scores": np.tile(np.float32([0.75, 0.25]), (len(pixels), 1)),
            "class_names": np.array([[[b"dark", b"bright"][i] for i in row] for row in ids]),
            "boxes": np.tile(np.float32([0.0, 0.0, 3 / size, 3 / size]), (len(pixels), 1)),
            "heatmaps": heat,
        }

    return extraction.Predictor(predict, size, 0.5, 2, "cam", "model_dir", "runs/x"), calls


def test_extract_writes_overlays_and_predictions(folder, tmp_path, caplog):
    predictor, calls = fake_predictor()
    paths = extraction.find_images(str(folder)) + [str(folder / "sub" / "d.png")]
    out = tmp_path / "out"
    found = extraction.extract(predictor, paths, str(out), batch_size=2, save_maps=True)
    assert calls == [(2, 8, 8, 3), (2, 8, 8, 3)], "4 readable images in batches of 2"
    assert found["num_images"] == 4 and found["num_unreadable"] == 1
    assert "broken.png" in found["unreadable"][0]["file"]
    assert "broken.png" in caplog.text and "1 of 5 files could not be read" in caplog.text
    assert json.loads((out / "predictions.json").read_text()) == found
    record = next(r for r in found["images"] if r["file"].endswith("a.jpg"))
    assert (record["width"], record["height"]) == (18, 30)
    assert record["box"]["pixels"] == [0, 0, math.floor(3 / 8 * 18), math.floor(3 / 8 * 30)]
    assert record["class_names"][0] == ["dark", "bright"][record["class_ids"][0]]
    with Image.open(out / record["overlay"]) as overlay:
        pixels = np.asarray(overlay)
    assert pixels.shape == (30, 18, 3)
    # Outside the box and the label: the blend of the image with jet(0) = dark blue.
    image = extraction.read_image(str(folder / "a.jpg")).astype(np.float64)
    expected = np.round(255 * (0.5 * image[-1, -1] / 255 + 0.5 * np.array([0, 0, 0.5])))
    np.testing.assert_allclose(pixels[-1, -1], expected, atol=1)
    heatmap = np.load(out / record["heatmap"])
    assert record["heatmap"] == "a.npy" and heatmap.dtype == np.float32
    np.testing.assert_array_equal(heatmap[:4, :4], 1)
    np.testing.assert_array_equal(heatmap[4:], 0)
    assert sorted(p.name for p in out.iterdir()) == [
        "a.npy", "a.png", "b.npy", "b.png", "c.npy", "c.png", "d.npy", "d.png", "predictions.json",
    ]  # fmt: skip

    with pytest.raises(extraction.UnreadableImage, match="broken.png"):
        extraction.extract(predictor, paths, str(tmp_path / "strict"), strict=True)


def test_images_with_the_same_stem_get_their_own_overlay(tmp_path):
    predictor, _ = fake_predictor()
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="PNG")
        (tmp_path / sub / "same.png").write_bytes(buffer.getvalue())
    found = extraction.extract(
        predictor, [str(tmp_path / "x" / "same.png"), str(tmp_path / "y" / "same.png")],
        str(tmp_path / "out"),
    )  # fmt: skip
    assert [r["overlay"] for r in found["images"]] == ["same.png", "same-2.png"]
