"""CAM and the gradient maps against numpy formulas on the test's own gradients."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from wsolkeras import extractors, roles

NUM_CLASSES = 4


def relu(x):
    return np.maximum(x, 0.0)


# Each formula on one image: F, G [h, w, K] -> map [h, w], written from the papers.
def np_gradcam(f, g):
    return relu(f @ g.mean(axis=(0, 1)))


def np_gradcam_pp(f, g):
    g2, g3 = g**2, g**3
    denominator = 2 * g2 + f.sum(axis=(0, 1)) * g3
    safe = np.where(denominator != 0, denominator, 1.0)
    alpha = np.where(denominator != 0, g2 / safe, 0.0)
    return relu(f @ (alpha * relu(g)).sum(axis=(0, 1)))


def np_layercam(f, g):
    return relu((relu(g) * f).sum(axis=-1))


def np_ach(f, g):
    return relu(f @ relu(g).mean(axis=(0, 1)))


def np_apx(f, g):
    return relu((g * f).mean(axis=-1))


FORMULAS = {
    "gradcam": np_gradcam,
    "gradcam++": np_gradcam_pp,
    "layercam": np_layercam,
    "ach": np_ach,
    "apx": np_apx,
}


class TinyCNN:
    """A functional CNN whose layer objects the test keeps, to split it anywhere."""

    def __init__(self, seed=0):
        keras.utils.set_random_seed(seed)
        self.c1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")
        self.bn = keras.layers.BatchNormalization(name="bn")
        self.mid = keras.layers.Conv2D(12, 3, strides=2, padding="same", name="mid")
        self.c3 = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=roles.FEATURES)
        self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
        self.dense = keras.layers.Dense(NUM_CLASSES, name=roles.CLASSIFIER)
        inputs = keras.Input((32, 32, 3))
        self.model = keras.Model(inputs, self.head_from_mid(self.trunk_to_mid(inputs)))
        # Moving statistics unlike a batch's: batched maps match per-image maps
        # only if BatchNorm runs in inference mode.
        rng = np.random.default_rng(seed)
        self.bn.moving_mean.assign(rng.normal(size=8).astype("float32"))
        self.bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=8).astype("float32"))

    def trunk_to_mid(self, x):
        return self.mid(self.bn(self.c1(x), training=False))

    def head_from_mid(self, f):
        return self.dense(self.gap(self.c3(f)))

    def per_image(self, image, cls, layer):
        """(F, G) of one image at 'mid' or the features layer, with a plain tape."""
        x = tf.constant(image[None])
        f = self.trunk_to_mid(x)
        if layer == roles.FEATURES:
            f = self.c3(f)
        with tf.GradientTape() as tape:
            tape.watch(f)
            logits = self.dense(self.gap(f)) if layer == roles.FEATURES else self.head_from_mid(f)
            score = logits[0, cls]
        return f[0].numpy(), tape.gradient(score, f)[0].numpy()


@pytest.fixture(scope="module")
def cnn():
    return TinyCNN()


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(1).uniform(0, 1, size=(4, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("name", list(FORMULAS))
def test_gradient_maps_equal_numpy_formulas(cnn, batch, name):
    classes = np.array([0, 3, 1, 2])
    extractor = extractors.get(name, cnn.model, layer="mid")
    maps = extractor(batch, classes).numpy()
    assert maps.shape == (4, 16, 16) and maps.dtype == np.float32
    for i, c in enumerate(classes):
        f, g = cnn.per_image(batch[i], c, "mid")
        expected = FORMULAS[name](f, g)
        np.testing.assert_allclose(maps[i], expected, rtol=1e-4, atol=1e-5 * expected.max())
        assert maps[i].min() >= 0
    assert maps.max() > 0


def test_cam_equals_classifier_weights_on_features(cnn, batch):
    classes = np.array([2, 0, 3, 1])
    cam = extractors.get("cam", cnn.model)(batch, classes).numpy()
    kernel = cnn.dense.kernel.numpy()
    bias = cnn.dense.bias.numpy()
    logits = cnn.model(batch).numpy()
    for i, c in enumerate(classes):
        f, _ = cnn.per_image(batch[i], c, roles.FEATURES)
        np.testing.assert_allclose(cam[i], f @ kernel[:, c], rtol=1e-4, atol=1e-6)
        # CAM's defining property: mean over pixels plus bias is the logit.
        np.testing.assert_allclose(cam[i].mean() + bias[c], logits[i, c], rtol=1e-4, atol=1e-5)
    assert cam.min() < 0  # raw: negative values kept


def test_gradcam_equals_cam_for_gap_linear_head(cnn, batch):
    # dY/dF = w_c / (h w) everywhere, so Grad-CAM = ReLU(CAM) / (h w).
    classes = np.array([1, 1, 0, 3])
    cam = extractors.get("cam", cnn.model)(batch, classes).numpy()
    gradcam = extractors.get("gradcam", cnn.model)(batch, classes).numpy()
    np.testing.assert_allclose(gradcam, relu(cam) / (16 * 16), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("name", ["cam", "gradcam++", "apx"])
def test_batched_equals_per_image_with_different_classes(cnn, batch, name):
    classes = np.array([3, 2, 1, 0])
    extractor = extractors.get(name, cnn.model, layer=None if name == "cam" else "mid")
    together = extractor(batch, classes).numpy()
    alone = np.concatenate([extractor(batch[i : i + 1], classes[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-6)
    # One trace serves every batch size, with or without classes.
    extractor(batch[:3])
    assert extractor.trace_count == 1


def test_none_means_predicted_class(cnn, batch):
    extractor = extractors.get("layercam", cnn.model, layer="mid")
    predicted = np.argmax(cnn.model(batch), axis=-1)
    np.testing.assert_allclose(extractor(batch), extractor(batch, predicted), rtol=1e-6)


def test_softmax_output_uses_pre_softmax_logits(cnn, batch):
    with_softmax = keras.Model(cnn.model.inputs, keras.layers.Softmax()(cnn.model.outputs[0]))
    classes = np.array([0, 1, 2, 3])
    np.testing.assert_allclose(
        extractors.get("gradcam", with_softmax, layer="mid")(batch, classes),
        extractors.get("gradcam", cnn.model, layer="mid")(batch, classes),
        rtol=1e-5,
    )


def tiny_resnet(activation=None):
    keras.utils.set_random_seed(4)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 1],  # the protocol's stride-1 last stage
        block_type="basic_block",
        image_shape=(32, 32, 3),
    )
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, activation=activation
    )


def test_keras_hub_resnet_classifier_found_without_layer_names(batch):
    clf = tiny_resnet()
    backbone = clf.backbone
    classes = np.array([1, 0, 3, 2])
    extractor = extractors.get("gradcam", clf)
    assert extractor.layer == backbone.name  # the backbone's output is the last stage
    maps = extractor(batch, classes).numpy()
    cam = extractors.get("cam", clf)(batch, classes).numpy()  # classifier: "predictions"
    kernel = clf.get_layer("predictions").kernel.numpy()
    for i, c in enumerate(classes):
        with tf.GradientTape() as tape:
            f = backbone(batch[i : i + 1], training=False)
            tape.watch(f)
            score = clf.get_layer("predictions")(clf.get_layer("pooler")(f))[0, c]
        g = tape.gradient(score, f)[0].numpy()
        f = f[0].numpy()
        np.testing.assert_allclose(maps[i], np_gradcam(f, g), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(cam[i], f @ kernel[:, c], rtol=1e-4, atol=1e-5)


def test_keras_hub_nested_layer_and_softmax_dense(batch):
    clf = tiny_resnet(activation="softmax")
    backbone = clf.backbone
    inner = "stack0_block0_out"
    classes = np.array([2, 2, 0, 1])
    maps = extractors.get("ach", clf, layer=inner)(batch, classes).numpy()
    dense = clf.get_layer("predictions")
    split = keras.Model(backbone.inputs, [backbone.get_layer(inner).output, backbone.output])
    for i, c in enumerate(classes):
        with tf.GradientTape() as tape:
            x = tf.constant(batch[i : i + 1])
            tape.watch(x)
            f, out = split(x, training=False)
            pooled = clf.get_layer("pooler")(out)
            logit = tf.matmul(pooled, dense.kernel) + dense.bias  # pre-softmax
            score = logit[0, c]
        g = tape.gradient(score, f)[0].numpy()
        np.testing.assert_allclose(maps[i], np_ach(f[0].numpy(), g), rtol=1e-4, atol=1e-7)


def test_keras_hub_vgg_image_classifier(batch):
    keras.utils.set_random_seed(5)
    backbone = keras_hub.models.VGGBackbone(
        stackwise_num_repeats=[1, 1], stackwise_num_filters=[8, 16], image_shape=(32, 32, 3)
    )
    clf = keras_hub.models.ImageClassifier(backbone=backbone, num_classes=NUM_CLASSES)
    maps = extractors.get("cam", clf)(batch, [0, 1, 2, 3]).numpy()
    assert maps.shape == (4, 8, 8)
    f = backbone(batch).numpy()
    kernel = clf.get_layer("predictions").kernel.numpy()
    expected = np.einsum("bhwk,kb->bhw", f, kernel[:, [0, 1, 2, 3]])
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
    conv = extractors.get("layercam", clf, layer="block1_conv1")(batch)
    assert conv.shape == (4, 32, 32)


def test_differentiable_maps_match_finite_differences():
    keras.utils.set_random_seed(6)
    conv_a = keras.layers.Conv2D(3, 3, padding="same", activation="tanh", dtype="float64")
    conv_b = keras.layers.Conv2D(
        4, 3, padding="same", activation="softplus", dtype="float64", name=roles.FEATURES
    )
    inputs = keras.Input((6, 6, 2), dtype="float64")
    features = conv_b(keras.layers.Conv2D(3, 1, name="mid", dtype="float64")(conv_a(inputs)))
    pooled = keras.layers.GlobalAveragePooling2D(dtype="float64")(features)
    outputs = keras.layers.Dense(3, activation="tanh", dtype="float64")(pooled)
    model = keras.Model(inputs, keras.layers.Dense(3, dtype="float64")(outputs))
    x = np.random.default_rng(7).normal(size=(2, 6, 6, 2))
    classes = np.array([0, 2])
    kernel = conv_a.kernel
    for name in ("gradcam++", "apx", "ach"):
        extractor = extractors.get(name, model, layer="mid", differentiable=True)

        def objective(extractor=extractor):
            return tf.reduce_sum(extractor(x, classes))

        with tf.GradientTape() as tape:
            value = objective()
        grad = tape.gradient(value, kernel).numpy()
        assert value.dtype == tf.float64

        @tf.function(input_signature=[tf.TensorSpec((None, 6, 6, 2), tf.float64)])
        def in_graph(images, extractor=extractor):  # as in a train step, batch unknown
            with tf.GradientTape() as tape:
                value = tf.reduce_sum(extractor(images, training=True))
            return value, tape.gradient(value, kernel)

        predicted = np.argmax(model(x), axis=-1)
        graph_value, graph_grad = in_graph(x)
        np.testing.assert_allclose(graph_value, tf.reduce_sum(extractor(x, predicted)))
        with tf.GradientTape() as tape:
            eager_value = tf.reduce_sum(extractor(x, predicted))
        np.testing.assert_allclose(graph_grad, tape.gradient(eager_value, kernel), rtol=1e-9)
        base = kernel.numpy()
        rng = np.random.default_rng(8)
        for _ in range(4):
            index = tuple(rng.integers(0, s) for s in base.shape)
            eps = 1e-6
            shifted = base.copy()
            shifted[index] += eps
            kernel.assign(shifted)
            up = objective().numpy()
            shifted[index] -= 2 * eps
            kernel.assign(shifted)
            down = objective().numpy()
            kernel.assign(base)
            numeric = (up - down) / (2 * eps)
            assert abs(grad[index] - numeric) <= 1e-6 * max(1.0, abs(numeric)), (name, index)


def test_bad_input_says_what_was_expected(cnn, batch):
    with pytest.raises(ValueError, match=r"valid names: cam, gradcam, gradcam\+\+"):
        extractors.get("gradcam+", cnn.model)
    extractor = extractors.get("gradcam", cnn.model)
    with pytest.raises(ValueError, match=r"rank 4, \[B, 32, 32, 3\].*add a batch axis"):
        extractor(batch[0])
    with pytest.raises(ValueError, match="1 channels but .* expects 3"):
        extractor(batch[..., :1])
    with pytest.raises(ValueError, match="one class id per image"):
        extractor(batch, [0, 1])
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        extractor(batch, [0, 1, 2, 9])
    with pytest.raises(ValueError, match="no layer named 'conv9'.*c1, bn, mid, wsol_features"):
        extractors.get("ach", cnn.model, layer="conv9")
    with pytest.raises(ValueError, match="does not output one 4-D"):
        extractors.get("ach", cnn.model, layer="gap")
    with pytest.raises(ValueError, match="rollout needs attention probabilities"):
        extractors.get("rollout", cnn.model)
    with pytest.raises(ValueError, match="not a Dense"):
        extractors.get("cam", cnn.model, classifier="gap")
    with pytest.raises(ValueError, match="Use gradcam for other heads"):
        extractors.get("cam", cnn.model, layer="mid")
