"""apps.extract as users run it: a folder of images -> overlays and predictions.json."""

import json
import os

import numpy as np
import pytest

from tests.apps.app_runner import run_app
from tests.apps.serving_helpers import (
    assert_box_is_one_of,
    decode_rgb,
    largest_component_boxes,
    sample_images,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The sample JPEG/PNG images, a BMP, a damaged JPEG and a text file named .png."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for name, data in sample_images():
        (root / name).write_bytes(data)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)).save(root / "other.bmp")
    jpeg = sample_images()[0][1]
    (root / "damaged.jpg").write_bytes(jpeg[:40])
    (root / "notes.png").write_text("not a picture")
    (root / "readme.txt").write_text("not matched: not an image extension")
    return root


@pytest.fixture(scope="module")
def extracted(folder, trained_run, tmp_path_factory):
    """``(result, output_dir)``: apps.extract on the folder with the run's model_dir."""
    model_dir, _ = trained_run
    output_dir = tmp_path_factory.mktemp("maps")
    result = run_app(
        "extract",
        f"--images={folder}",
        f"--model_dir={model_dir}",
        f"--output_dir={output_dir}",
        "--save_maps",
    )
    return result, output_dir


def test_overlays_and_predictions_for_a_folder(extracted, reference, run_config):
    from PIL import Image

    result, output_dir = extracted
    assert result.returncode == 0, result.stderr[-4000:]
    for bad in ("damaged.jpg", "notes.png"):
        assert bad in result.stderr, "each unreadable file is named in a warning"
    assert "2 of 8 files could not be read" in result.stderr
    assert "images: 100%" in result.stderr, "a progress bar"
    assert "6 images localised, 2 unreadable" in result.stdout

    found = json.loads((output_dir / "predictions.json").read_text())
    assert found["num_images"] == 6 and found["num_unreadable"] == 2
    assert sorted(os.path.basename(u["file"]) for u in found["unreadable"]) == [
        "damaged.jpg",
        "notes.png",
    ]
    assert found["model"]["tau"] == run_config["tau"]
    records = {os.path.basename(r["file"]): r for r in found["images"]}
    assert set(records) == {name for name, _ in sample_images()} | {"other.bmp"}

    # The JPEG/PNG answers: the Keras model's on the decoded images.
    samples = sample_images()
    top_k = run_config["top_k"]
    expected = reference.predict([decode_rgb(data) for _, data in samples], top_k, 0.0)
    overlays = set()
    for i, (name, data) in enumerate(samples):
        record = records[name]
        image = decode_rgb(data)
        height, width = image.shape[:2]
        assert (record["width"], record["height"]) == (width, height)
        assert record["class_ids"] == expected["class_ids"][i].tolist()
        assert record["class_names"] == expected["class_names"][i].tolist()
        np.testing.assert_allclose(record["scores"], expected["scores"][i], atol=1e-5)
        box = record["box"]
        assert box["class_id"] == record["class_ids"][0]
        ymin, xmin, ymax, xmax = box["normalized"]
        # Pixels in the original image: floor(v * side + 1e-4), inclusive.
        want = [
            int(np.floor(v * s + 1e-4))
            for v, s in zip((xmin, ymin, xmax, ymax), (width, height, width, height), strict=True)
        ]
        assert box["pixels"] == want
        assert 0 <= want[0] <= want[2] < width and 0 <= want[1] <= want[3] < height
        # The heat map is the model's; the box is the export's rule on it.
        heatmap = np.load(output_dir / record["heatmap"])
        np.testing.assert_allclose(heatmap, expected["heatmaps"][i], atol=1e-4)
        candidates = largest_component_boxes(heatmap, run_config["tau"])
        assert_box_is_one_of(np.array(box["normalized"]), candidates)

        with Image.open(output_dir / record["overlay"]) as overlay:
            assert overlay.size == (width, height) and overlay.mode == "RGB"
            pixels = np.asarray(overlay)
        x0, y0, x1, y1 = want
        # The bottom edge of the box is drawn in red (the label sits at the top).
        assert tuple(pixels[y1, (x0 + x1) // 2]) == (230, 20, 20), name
        overlays.add(record["overlay"])
    # gray.jpg and gray.png (rgb.jpg and rgb.png) share a stem: each its own overlay.
    assert overlays == {"gray.png", "gray-2.png", "rgb.png", "rgb-2.png", "rgba.png"}
    maps = {name.replace(".png", ".npy") for name in [*overlays, "other.png"]}
    files = {*overlays, "other.png", *maps, "predictions.json"}
    assert sorted(os.listdir(output_dir)) == sorted(files)


def test_the_saved_model_gives_the_same_predictions(folder, extracted, exported, tmp_path):
    _, from_run = extracted
    result = run_app(
        "extract",
        f"--images={folder}/*.*g",
        f"--saved_model={exported[0]}",
        f"--output_dir={tmp_path}",
        "--nooverlays",
        "--noprogress",
        "--batch_size=2",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    mine = json.loads((from_run / "predictions.json").read_text())
    theirs = json.loads((tmp_path / "predictions.json").read_text())
    assert theirs["num_images"] == 5 and theirs["num_unreadable"] == 2  # .bmp not matched
    assert theirs["model"]["source"] == "saved_model"
    records = {r["file"]: r for r in mine["images"]}
    for record in theirs["images"]:
        expected = records[record["file"]]
        assert record["class_ids"] == expected["class_ids"]
        assert record["box"] == expected["box"]
        np.testing.assert_allclose(record["scores"], expected["scores"], atol=1e-6)
    assert os.listdir(tmp_path) == ["predictions.json"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--images={folder}/*.jpg", "--strict", "--output_dir={out}"],
            ["damaged.jpg", "--strict"],
        ),
        (["--images={tmp}/nothing/*.png", "--output_dir={out}"], ["matched no files"]),
        (["--images={folder}", "--extractor=gradcamm", "--output_dir={out}"], ["layercam"]),
        (["--images={folder}"], ["--output_dir is required"]),
    ],
)
def test_bad_flags_exit_nonzero_with_a_clear_message(args, expected, folder, trained_run, tmp_path):
    model_dir, _ = trained_run
    args = [a.format(folder=folder, tmp=tmp_path, out=tmp_path / "out") for a in args]
    result = run_app("extract", *args, f"--model_dir={model_dir}", "--noprogress")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, (text, result.stderr[-3000:])


def test_a_saved_model_takes_no_extractor(exported, folder, tmp_path):
    result = run_app(
        "extract",
        f"--images={folder}",
        f"--saved_model={exported[0]}",
        "--extractor=gradcam",
        f"--output_dir={tmp_path}",
    )
    assert result.returncode != 0
    assert "--extractor works with --model_dir only" in result.stderr
