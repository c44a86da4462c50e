"""wsolkeras.export: the in-graph score map and box against OpenCV / scipy, and the SavedModel."""

import io
import json
import os

import cv2
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf
from PIL import Image

from wsolkeras import export, models


def gaussian(size, cy, cx, sy, sx):
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2)))


def protocol_box(scoremap: np.ndarray, tau: float) -> tuple[int, int, int, int]:
    """The protocol's MaxBoxAcc (v1) box, computed with OpenCV as the reference does."""
    q = (scoremap * 255).astype(np.uint8)
    _, binary = cv2.threshold(q, int(tau * q.max()), 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return (0, 0, 0, 0)
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    height, width = scoremap.shape
    return (x, y, min(x + w, width - 1), min(y + h, height - 1))


def test_cubic_matrices_equal_opencv_resize():
    rng = np.random.default_rng(0)
    for h, w, size in [(14, 14, 224), (7, 5, 64), (28, 28, 448)]:
        raw = rng.normal(size=(h, w))
        rows, cols = export.cubic_resize_matrices(h, w, size)
        expected = cv2.resize(raw, (size, size), interpolation=cv2.INTER_CUBIC)
        np.testing.assert_allclose(rows.astype(np.float64) @ raw @ cols, expected, atol=1e-5)


def test_scoremaps_are_the_protocols():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(3, 8, 8)).astype(np.float32)
    raw[1] = 2.5  # constant: zeros
    raw[2, 3, 3] = np.nan  # NaN: zeros
    got = export.scoremaps(tf.constant(raw), 32).numpy()
    up = cv2.resize(raw[0].astype(np.float64), (32, 32), interpolation=cv2.INTER_CUBIC)
    expected = (up - up.min()) / (up.max() - up.min())
    np.testing.assert_allclose(got[0], expected, atol=2e-6)
    assert got.min() >= 0 and got.max() <= 1
    np.testing.assert_array_equal(got[1], 0)
    np.testing.assert_array_equal(got[2], 0)


@pytest.mark.parametrize("tau", [0.0, 0.13, 0.5, 0.87])
def test_foreground_is_the_protocols_binarisation(tau):
    rng = np.random.default_rng(2)
    maps = rng.uniform(size=(2, 16, 16)).astype(np.float32)
    maps[1] *= 0.5
    got = export.foreground(tf.constant(maps), tau).numpy()
    for i in range(2):
        q = (maps[i].astype(np.float64) * 255).astype(np.uint8)
        np.testing.assert_array_equal(got[i], q > int(tau * q.max()))


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5, 0.8])
def test_box_matches_the_metrics_box_on_simple_maps(tau):
    size = 64
    maps = np.stack(
        [
            gaussian(size, 20, 30, 5, 8),
            gaussian(size, 40, 15, 4, 4) + 0.6 * gaussian(size, 10, 50, 2, 2),  # two blobs
            gaussian(size, 2, 60, 6, 6),  # cut by the border
            gaussian(size, 32, 32, 30, 3),  # thin and long
            np.zeros((size, size)),  # nothing above tau
        ]
    ).astype(np.float32)
    got = export.largest_component_boxes(export.foreground(tf.constant(maps), tau)).numpy()
    for i, scoremap in enumerate(maps):
        assert tuple(got[i]) == protocol_box(scoremap, tau), f"map {i}"


def test_largest_component_on_random_masks_equals_scipy_labelling():
    rng = np.random.default_rng(3)
    masks = rng.uniform(size=(6, 24, 31)) < np.linspace(0.2, 0.6, 6)[:, None, None]
    got = export.largest_component_boxes(tf.constant(masks)).numpy()
    for i, mask in enumerate(masks):
        labels, count = scipy.ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())[1:]
        # Ties between equal-size components: any of them is a largest one.
        candidates = []
        for label in np.flatnonzero(sizes == sizes.max()) + 1:
            ys, xs = np.nonzero(labels == label)
            candidates.append((xs.min(), ys.min(), min(xs.max() + 1, 30), min(ys.max() + 1, 23)))
        assert tuple(got[i]) in candidates


def test_a_snake_shaped_component_is_one_component():
    # A long winding path (~150 pixels) beside a solid block of 100: split
    # into pieces, the snake would lose to the block.
    mask = np.zeros((1, 32, 32), bool)
    for row in range(0, 21, 4):
        mask[0, row, :21] = True
        mask[0, row : row + 4, 20 if (row // 4) % 2 == 0 else 0] = True
    mask[0, 22:32, 22:32] = True
    assert mask[0, :21, :21].sum() > 100
    box = export.largest_component_boxes(tf.constant(mask)).numpy()[0]
    np.testing.assert_array_equal(box, [0, 0, 21, 24])


def test_boxes_at_tau_are_normalised_pixel_boxes():
    maps = gaussian(40, 10, 25, 3, 6)[None].astype(np.float32)
    x0, y0, x1, y1 = protocol_box(maps[0], 0.3)
    got = export.boxes_at_tau(tf.constant(maps), 0.3).numpy()[0]
    np.testing.assert_allclose(got, [y0 / 40, x0 / 40, y1 / 40, x1 / 40], atol=1e-7)


# --- the SavedModel ----------------------------------------------------------


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_model():
    return models.build(backbone="small_cnn", method="cam", num_classes=4, image_size=32, seed=0)


def test_exported_signatures_run_on_png_bytes(tiny_model, tmp_path):
    from wsolkeras import data, extractors, metrics

    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    path = export.export_model(
        tiny_model,
        str(tmp_path),
        model_name="tiny",
        image_size=32,
        normalization="unit",
        tau=0.25,
        class_names=["a", "b", "c", "d"],
        top_k=3,
    )
    assert path == os.path.join(str(tmp_path), "tiny", "1")
    assert sorted(os.listdir(tmp_path / "tiny")) == ["1"], "no temporary directory is left"
    info = json.loads((tmp_path / "tiny" / "1" / "assets.extra" / "wsolkeras.json").read_text())
    assert info["tau"] == 0.25 and info["image_size"] == 32

    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    out = serve(image_bytes=tf.constant([png_bytes(im) for im in images]))
    assert out["class_ids"].shape == (3, 3) and out["scores"].shape == (3, 3)
    assert out["heatmaps"].shape == (3, 32, 32)
    assert out["boxes"].shape == (3, 4)

    # Independent path: the library's own pipeline pieces, outside the graph.
    normalised = data.normalize_images(tf.constant(images, tf.float32), "unit")
    logits = tiny_model(normalised, training=False).numpy()
    probabilities = tf.nn.softmax(logits).numpy()
    expected_ids = np.argsort(-probabilities, axis=1)[:, :3]
    np.testing.assert_array_equal(out["class_ids"].numpy(), expected_ids)
    np.testing.assert_allclose(
        out["scores"].numpy(), np.take_along_axis(probabilities, expected_ids, 1), atol=1e-5
    )
    names = out["class_names"].numpy().astype(str)
    np.testing.assert_array_equal(names, np.array(["a", "b", "c", "d"])[expected_ids])
    raw = extractors.get("cam", tiny_model)(normalised, tf.constant(expected_ids[:, 0]))
    expected_maps = metrics.cam_to_scoremap(np.asarray(raw, np.float64), 32)
    np.testing.assert_allclose(out["heatmaps"].numpy(), expected_maps, atol=1e-4)
    for i in range(3):
        x0, y0, x1, y1 = protocol_box(out["heatmaps"].numpy()[i], 0.25)
        np.testing.assert_allclose(out["boxes"].numpy()[i], [y0, x0, y1, x1] / np.float32(32))

    decoded = loaded.signatures["serving_images"](images=tf.constant(images, tf.float32))
    for key in ("class_ids", "heatmaps", "boxes"):
        np.testing.assert_allclose(decoded[key].numpy(), out[key].numpy(), atol=1e-5)


def test_versions_increase_and_existing_exports_are_kept(tiny_model, tmp_path):
    kwargs = dict(model_name="m", image_size=32, normalization="unit", tau=0.5)
    first = export.export_model(tiny_model, str(tmp_path), **kwargs)
    second = export.export_model(tiny_model, str(tmp_path), **kwargs)
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    again = export.export_if_new(tiny_model, str(tmp_path), version=2, **kwargs)
    assert again == second
    with pytest.raises(ValueError, match="tau"):
        export.export_model(tiny_model, str(tmp_path), **{**kwargs, "tau": 1.0})
