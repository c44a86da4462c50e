"""wsolkeras.export, what serving adds: the image-bytes check, the class-name asset, Localizer,
the localize_class signature and overwrite. (The maps and boxes: tests/wsolkeras/test_export.py.)
"""

import io
import os
import re

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from wsolkeras import export


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_image_bytes_check_names_the_bad_indices():
    image = np.zeros((4, 5, 3), np.uint8)
    good = [png(image), jpeg(image)]
    tf.debugging.assert_equal(export.check_image_bytes(tf.constant(good)), tf.constant(good))
    bad = [good[0], b"GIF89a...", b"", good[1], b"BM\x00\x00"]
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        export.check_image_bytes(tf.constant(bad))
    message = str(error.value)
    assert "image_bytes: the bytes are not a JPEG/PNG image at indices" in message
    assert re.search(r"indices\W+1\D+2\D+4\b", message), message
    # In a graph (a signature), the same message: "assertion failed: [...indices] [1 2 4]".
    checked = tf.function(export.check_image_bytes)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\] \[1 2 4\]"):
        checked(tf.constant(bad))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_decode_images_makes_rgb_of_any_png_and_resizes(mode):
    rng = np.random.default_rng(0)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    image = rng.integers(0, 256, (20, 30, *channels), dtype=np.uint8)
    got = export.decode_images(tf.constant([png(image)]), 16).numpy()[0]
    # Grey repeated to three channels, alpha dropped; then bilinear (half-pixel centres).
    rgb = np.asarray(Image.fromarray(image).convert("RGB")).astype(np.float32)
    expected = cv2.resize(rgb, (16, 16), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_class_names_are_checked():
    assert export.check_class_names(None, 3) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="2 class names for a model with 3 classes"):
        export.check_class_names(["a", "b"], 3)
    with pytest.raises(ValueError, match="line break"):
        export.check_class_names(["a", "b\nc", "d"], 3)


def test_class_name_table_reads_one_name_per_line(tmp_path):
    path = tmp_path / "names.txt"
    names = ["Black-footed Albatross", "Laysan Albatross", "Sooty Albatross", "a/b c"]
    path.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    table = export.class_name_table(str(path))
    got = table.lookup(tf.constant([[3, 0], [1, 2]], tf.int64)).numpy().astype(str)
    np.testing.assert_array_equal(got, [[names[3], names[0]], [names[1], names[2]]])


@pytest.fixture(scope="module")
def tiny_model():
    from wsolkeras import models

    return models.build(backbone="small_cnn", method="cam", num_classes=4, image_size=32, seed=1)


def test_localizer_outputs_are_the_model_and_extractor_outputs(tiny_model):
    from wsolkeras import extractors

    rng = np.random.default_rng(1)
    pixels = rng.uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    localizer = export.Localizer(
        tiny_model,
        image_size=32,
        normalization="unit",
        tau=0.4,
        class_names=["w", "x", "y", "z"],
        top_k=9,
    )
    assert localizer.top_k == 4, "top_k is at most the number of classes"
    out = {k: v.numpy() for k, v in localizer(tf.constant(pixels)).items()}
    logits = tiny_model(pixels / 255.0, training=False).numpy().astype(np.float64)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ids = np.argsort(-probabilities, axis=1)
    np.testing.assert_array_equal(out["class_ids"], ids)
    np.testing.assert_allclose(out["scores"], np.take_along_axis(probabilities, ids, 1), atol=1e-6)
    np.testing.assert_array_equal(out["class_names"].astype(str), np.array(list("wxyz"))[ids])

    classes = np.array([3, 0, 2], np.int32)
    given = {k: v.numpy() for k, v in localizer.for_classes(tf.constant(pixels), classes).items()}
    np.testing.assert_allclose(given["logits"], logits, atol=1e-5)
    raw = extractors.get("cam", tiny_model)(pixels / 255.0, classes).numpy()
    np.testing.assert_allclose(given["raw_maps"], raw, atol=1e-5)
    for i in range(3):
        up = cv2.resize(raw[i].astype(np.float64), (32, 32), interpolation=cv2.INTER_CUBIC)
        np.testing.assert_allclose(
            given["heatmaps"][i], (up - up.min()) / (up.max() - up.min()), atol=1e-4
        )
    with pytest.raises(ValueError, match="tau"):
        export.Localizer(tiny_model, image_size=32, normalization="unit", tau=-0.1)


def test_export_ships_the_asset_and_localize_class_and_overwrites_only_when_asked(
    tiny_model, tmp_path
):
    kwargs = dict(
        model_name="tiny",
        image_size=32,
        normalization="unit",
        tau=0.3,
        class_names=["w", "x", "y", "z"],
        top_k=2,
    )
    path = export.export_model(tiny_model, str(tmp_path), metadata={"step": 12}, **kwargs)
    with open(os.path.join(path, "assets", "class_names.txt"), encoding="utf-8") as f:
        assert f.read() == "w\nx\ny\nz\n"
    loaded = tf.saved_model.load(path)
    rng = np.random.default_rng(2)
    pixels = rng.uniform(0, 255, (2, 40, 24, 3)).astype(np.float32)
    classes = tf.constant([1, 3], tf.int32)
    out = loaded.signatures["localize_class"](images=tf.constant(pixels), class_ids=classes)
    resized = tf.image.resize(pixels, [32, 32]).numpy()
    expected = export.Localizer(tiny_model, **{k: kwargs[k] for k in kwargs if k != "model_name"})
    want = expected.for_classes(tf.constant(resized), classes)
    for key in ("logits", "raw_maps", "heatmaps", "boxes"):
        np.testing.assert_allclose(out[key].numpy(), want[key].numpy(), atol=1e-5)

    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_model(tiny_model, str(tmp_path), version=1, **kwargs)
    again = export.export_model(
        tiny_model, str(tmp_path), version=1, overwrite=True, **{**kwargs, "top_k": 1}
    )
    assert again == path and sorted(os.listdir(tmp_path / "tiny")) == ["1"]
    assert export.next_version(str(tmp_path), "tiny") == 2
    assert export.next_version(str(tmp_path), "other") == 1
