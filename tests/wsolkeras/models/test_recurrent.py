"""Method recurrent: the CAM crop, the two streams and the loss, against numpy and scipy."""

import keras
import numpy as np
import pytest
from scipy import ndimage

from wsolkeras import models, roles
from wsolkeras.models.recurrent import CamCrop, cam_boxes, crop_resize


def boxes_numpy(class_maps: np.ndarray, threshold: float) -> np.ndarray:
    """The box (fractions, cell edges) of the predicted class's normalised CAM >= threshold."""
    boxes = []
    for maps in class_maps:
        h, w, _ = maps.shape
        cam = maps[:, :, maps.mean(axis=(0, 1)).argmax()]
        span = cam.max() - cam.min()
        normalized = (cam - cam.min()) / span if span > 0 else np.ones_like(cam)
        rows = np.flatnonzero((normalized >= threshold).any(axis=1))
        cols = np.flatnonzero((normalized >= threshold).any(axis=0))
        boxes.append([rows[0] / h, cols[0] / w, (rows[-1] + 1) / h, (cols[-1] + 1) / w])
    return np.array(boxes, dtype=np.float32)


def crop_numpy(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Bilinear crop-and-resize to the input size with scipy (edge pixels repeated)."""
    out = np.empty_like(images)
    for b, (image, (y0, x0, y1, x1)) in enumerate(zip(images, boxes, strict=True)):
        size_h, size_w = image.shape[:2]
        # Output pixel centre u + 0.5 maps into the box; -0.5: scipy's integer = pixel centre.
        ys = y0 * size_h + (np.arange(size_h) + 0.5) * (y1 - y0) * size_h / size_h - 0.5
        xs = x0 * size_w + (np.arange(size_w) + 0.5) * (x1 - x0) * size_w / size_w - 0.5
        grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
        for c in range(image.shape[2]):
            out[b, :, :, c] = ndimage.map_coordinates(
                image[:, :, c].astype(np.float64), [grid_y, grid_x], order=1, mode="nearest"
            )
    return out


def test_cam_boxes_equal_numpy():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(5, 6, 7, 3)).astype(np.float32)
    maps[1, 2:4, 1:5, 2] += 6.0  # a clear blob of the predicted class
    maps[2] = 0.5  # a constant map: the whole image
    maps[3, :, :, 1] += 1.0
    maps[3, 0, 6, 1] += 9.0  # one hot cell at the corner
    for threshold in (0.0, 0.3, 0.5, 0.9):
        got = keras.ops.convert_to_numpy(cam_boxes(maps, threshold))
        np.testing.assert_allclose(got, boxes_numpy(maps, threshold), atol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(cam_boxes(maps, 0.5))[1], [2 / 6, 1 / 7, 4 / 6, 5 / 7]
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(cam_boxes(maps, 0.5))[2], [0, 0, 1, 1])


def test_crop_resize_equals_scipy(images):
    x = images(12, batch=4, seed=3)
    boxes = np.array(
        [[0.0, 0.0, 1.0, 1.0], [0.25, 0.5, 0.75, 1.0], [0.1, 0.2, 0.3, 0.9], [0.5, 0.0, 1.0, 0.2]],
        dtype=np.float32,
    )
    got = keras.ops.convert_to_numpy(crop_resize(x, boxes))
    np.testing.assert_allclose(got, crop_numpy(x, boxes), atol=1e-5)
    np.testing.assert_allclose(got[0], x[0], atol=1e-6)  # the whole image: unchanged


def test_cam_crop_layer(images):
    rng = np.random.default_rng(2)
    x = images(16, batch=3)
    maps = rng.normal(size=(3, 4, 4, 5)).astype(np.float32)
    layer = CamCrop(0.4)
    expected = crop_numpy(x, boxes_numpy(maps, 0.4))
    np.testing.assert_allclose(layer(x, maps), expected, atol=1e-5)
    assert CamCrop.from_config(layer.get_config()).threshold == pytest.approx(0.4)
    with pytest.raises(ValueError, match="threshold"):
        CamCrop(1.0)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def recurrent_model():
    return models.build(
        "small_cnn",
        "recurrent",
        num_classes=4,
        image_size=32,
        recurrent_timesteps=3,
        recurrent_units=8,
        recurrent_crop_threshold=0.3,
        recurrent_fusion_weights=(1.0, 0.5),
    )


def streams_numpy(model: keras.Model, x: np.ndarray, threshold: float) -> tuple:
    """Global and local logits, recomputed from the model's parts, the crop in scipy."""
    features = keras.Model(model.input, model.get_layer(roles.FEATURES).output)(x)
    features = keras.ops.convert_to_numpy(features)
    dense = model.get_layer(roles.CLASSIFIER)
    kernel, bias = dense.kernel.numpy(), dense.bias.numpy()
    global_logits = features.mean(axis=(1, 2)) @ kernel + bias
    crops = crop_numpy(x, boxes_numpy(features @ kernel + bias, threshold))
    local_maps = keras.ops.convert_to_numpy(model.get_layer("local_backbone")(crops))
    local = model.get_layer("recurrent_head")(local_maps.mean(axis=(1, 2)))
    return global_logits, keras.ops.convert_to_numpy(local)


def test_two_streams_and_fusion_equal_the_recomputation(recurrent_model, images):
    model = recurrent_model
    x = images(32, batch=3, seed=5)
    global_logits, local_logits = streams_numpy(model, x, 0.3)
    np.testing.assert_allclose(model(x), global_logits + 0.5 * local_logits, rtol=1e-4, atol=1e-4)
    # Separate CNNs: the local stream shares no variable with the global one.
    local_vars = {id(v) for v in model.get_layer("local_backbone").weights}
    global_layers = [layer for layer in model.layers if layer.name.startswith("block")]
    global_vars = {id(v) for layer in global_layers for v in layer.weights}
    assert global_vars and local_vars and not local_vars & global_vars
    head = model.get_layer("recurrent_head")
    assert (head.timesteps, head.units, head.num_layers) == (3, 8, 2)


def test_loss_parts_equal_numpy(recurrent_model, images):
    model = recurrent_model
    model.compile(optimizer="sgd")
    x = images(32, batch=4, seed=6)
    y = np.array([0, 3, 1, 1])
    g, loc = streams_numpy(model, x, 0.3)
    p_g, p_l = _softmax(g), _softmax(loc)
    rows = np.arange(4)
    ce_global = -np.log(p_g[rows, y]).mean()
    ce_local = -np.log(p_l[rows, y]).mean()
    rank = np.maximum(0.0, p_g[rows, y] - p_l[rows, y] + 0.5).mean()
    result = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    assert result["ce_global"] == pytest.approx(ce_global, rel=1e-4)
    assert result["ce_local"] == pytest.approx(ce_local, rel=1e-4)
    assert result["rank"] == pytest.approx(rank, rel=1e-4, abs=1e-6)
    # Eq. 3.8-3.9: CE_g + lambda' CE_l + lambda rank, lambda' = 1, lambda = 0.5.
    assert result["loss"] == pytest.approx(ce_global + ce_local + 0.5 * rank, rel=1e-4)


def test_recurrent_on_a_keras_hub_backbone(images):
    model = models.build("resnet18", "recurrent", num_classes=3, image_size=64, recurrent_units=8)
    local = model.get_layer("local_backbone")
    assert isinstance(local, keras.Model) and local.output.shape[-1] == 512
    assert model.get_layer("recurrent_head").units == 8
    assert model(images(64, batch=2)).shape == (2, 3)
