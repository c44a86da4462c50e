"""Attention-guided losses against numpy; second-order gradients; a short training run."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from wsolkeras import losses, roles


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_resize_bilinear(image, out_h, out_w):
    """Bilinear with half-pixel centres, as tf.image.resize (no antialias)."""
    in_h, in_w = image.shape

    def axis(out_size, in_size):
        pos = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        low = np.floor(pos)
        frac = pos - low
        lo = np.clip(low, 0, in_size - 1).astype(int)
        hi = np.clip(np.ceil(pos), 0, in_size - 1).astype(int)
        return lo, hi, frac

    y0, y1, fy = axis(out_h, in_h)
    x0, x1, fx = axis(out_w, in_w)
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def np_mask(last, size=None, omega=100.0, ratio=0.55):
    if size is not None:
        last = np_resize_bilinear(last, *size)
    return np_sigmoid(omega * (last - ratio * last.max()))


def np_siou(a_t, a_c, mask):
    return 2 * np.sum(np.minimum(a_t, a_c) * mask) / np.sum(a_t + a_c)


def np_ac(a_in, mask, alpha=1.0):
    return alpha - np.sum(a_in * mask) / np.sum(a_in)


def test_formulas_equal_numpy():
    rng = np.random.default_rng(0)
    a_t = rng.uniform(0, 1, size=(3, 8, 8))
    a_c = rng.uniform(0, 1, size=(3, 8, 8))
    last = rng.uniform(0, 1, size=(3, 4, 4))
    mask = losses.attention_mask(tf.constant(last), (8, 8)).numpy()
    for i in range(3):
        np.testing.assert_allclose(mask[i], np_mask(last[i], (8, 8)), rtol=1e-10)
    np.testing.assert_allclose(
        losses.attention_mask(tf.constant(last)).numpy(),
        np.stack([np_mask(m) for m in last]),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        losses.soft_iou(a_t, a_c, mask).numpy(),
        [np_siou(a_t[i], a_c[i], mask[i]) for i in range(3)],
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        losses.attention_consistency(a_t, mask, alpha=0.8).numpy(),
        [np_ac(a_t[i], mask[i], 0.8) for i in range(3)],
        rtol=1e-10,
    )
    # The resize is tf.image.resize's bilinear, computed in the maps' dtype.
    np.testing.assert_allclose(
        losses.resize_maps(tf.constant(last, tf.float32), (8, 8)),
        tf.image.resize(last[..., None].astype("float32"), (8, 8))[..., 0],
        atol=1e-6,
    )
    # All-zero maps give 0 for the ratios, not NaN.
    zero = np.zeros((1, 4, 4))
    assert losses.soft_iou(zero, zero, zero + 1).numpy()[0] == 0.0
    assert losses.attention_consistency(zero, zero + 1).numpy()[0] == 1.0


def test_mask_normalize_divides_by_the_max():
    last = np.random.default_rng(1).uniform(0, 0.01, size=(2, 4, 4))
    got = losses.attention_mask(tf.constant(last), normalize=True).numpy()
    expected = [np_mask(m / m.max()) for m in last]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_ranking_loss_and_confusing_class():
    rng = np.random.default_rng(2)
    g, loc = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    labels = np.array([0, 3, 1, 1, 2])

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    rows = np.arange(5)
    expected = np.maximum(0, softmax(g)[rows, labels] - softmax(loc)[rows, labels] + 0.5)
    np.testing.assert_allclose(losses.ranking_loss(g, loc, labels).numpy(), expected, rtol=1e-10)
    p_g, p_l = softmax(g), softmax(loc)
    np.testing.assert_allclose(
        losses.ranking_loss(p_g, p_l, labels, margin=0.1, from_logits=False).numpy(),
        np.maximum(0, p_g[rows, labels] - p_l[rows, labels] + 0.1),
        rtol=1e-10,
    )
    masked = g.copy()
    masked[rows, labels] = -np.inf
    np.testing.assert_array_equal(
        losses.most_confusing_class(tf.constant(g), labels).numpy(), masked.argmax(axis=1)
    )


class TwoLayerCNN:
    """Inner and last feature layers at different resolutions; layers kept for splitting."""

    def __init__(self, seed=0, dtype="float32", size=16, classes=4, inner="relu"):
        keras.utils.set_random_seed(seed)
        kw = {"dtype": dtype, "padding": "same"}
        self.c1 = keras.layers.Conv2D(6, 3, activation="tanh", **kw)
        self.inner = keras.layers.Conv2D(8, 3, activation=inner, name=roles.INNER_FEATURES, **kw)
        self.c3 = keras.layers.Conv2D(
            12, 3, strides=2, activation="softplus", name=roles.FEATURES, **kw
        )
        self.gap = keras.layers.GlobalAveragePooling2D(dtype=dtype)
        self.dense = keras.layers.Dense(classes, name=roles.CLASSIFIER, dtype=dtype)
        inputs = keras.Input((size, size, 3), dtype=dtype)
        self.model = keras.Model(inputs, self.dense(self.gap(self.c3(self.inner(self.c1(inputs))))))

    def per_image(self, image, cls):
        """(F_in, F_last, G_in, G_last) for one image and class, with a plain tape."""
        with tf.GradientTape() as tape:
            f_in = self.inner(self.c1(tf.constant(image[None])))
            tape.watch(f_in)
            f_last = self.c3(f_in)
            score = self.dense(self.gap(f_last))[0, cls]
        g_in, g_last = tape.gradient(score, [f_in, f_last])
        return f_in[0].numpy(), f_last[0].numpy(), g_in[0].numpy(), g_last[0].numpy()


def np_ach(f, g):
    return np.maximum(f @ np.maximum(g, 0).mean(axis=(0, 1)), 0)


def np_apx(f, g):
    return np.maximum((g * f).mean(axis=-1), 0)


@pytest.mark.parametrize("attention", ["ach", "apx"])
def test_objective_terms_equal_numpy(attention):
    net = TwoLayerCNN(seed=3)
    images = np.random.default_rng(4).normal(size=(3, 16, 16, 3)).astype("float32")
    labels = np.array([1, 0, 3])
    objective = losses.SharpenFocusObjective(net.model, attention=attention, ac_weight=0.5)
    total, logits, terms = objective(images, labels, training=False)
    logits = logits.numpy()
    weigh = np_ach if attention == "ach" else np_apx
    expected = {"ce": [], "siou_inner": [], "siou_last": [], "ac": []}
    for i, label in enumerate(labels):
        others = np.where(np.arange(4) == label, -np.inf, logits[i])
        confusing = int(np.argmax(others))
        f_in, f_last, g_in_t, g_last_t = net.per_image(images[i], label)
        _, _, g_in_c, g_last_c = net.per_image(images[i], confusing)
        a_in_t, a_in_c = weigh(f_in, g_in_t), weigh(f_in, g_in_c)
        a_last_t, a_last_c = weigh(f_last, g_last_t), weigh(f_last, g_last_c)
        mask_last = np_mask(a_last_t)
        mask_in = np_mask(a_last_t, (16, 16))
        z = logits[i] - logits[i].max()
        expected["ce"].append(-(z[label] - np.log(np.exp(z).sum())))
        expected["siou_inner"].append(np_siou(a_in_t, a_in_c, mask_in))
        expected["siou_last"].append(np_siou(a_last_t, a_last_c, mask_last))
        expected["ac"].append(np_ac(a_in_t, mask_in))
    for key, values in expected.items():
        np.testing.assert_allclose(terms[key].numpy(), np.mean(values), rtol=2e-4, err_msg=key)
    want = np.mean(expected["ce"]) + np.mean(expected["siou_inner"])
    want += np.mean(expected["siou_last"]) + 0.5 * np.mean(expected["ac"])
    np.testing.assert_allclose(total.numpy(), want, rtol=2e-4)
    assert 0 < terms["siou_last"].numpy() < 1


def test_objective_gradient_has_second_order_terms():
    # float64: the loss's gradient w.r.t. a weight equals finite differences.
    net = TwoLayerCNN(seed=5, dtype="float64", size=8, classes=3, inner="softplus")
    images = np.random.default_rng(6).normal(size=(2, 8, 8, 3))
    labels = np.array([2, 0])
    # omega is lowered so that the mask's sigmoid is smooth at the step used.
    objective = losses.SharpenFocusObjective(net.model, omega=10.0)
    kernel = net.c1.kernel

    def loss():
        return objective(images, labels, training=False)[0]

    with tf.GradientTape() as tape:
        value = loss()
    grad = tape.gradient(value, kernel).numpy()
    assert value.dtype == tf.float64
    base = kernel.numpy()
    rng = np.random.default_rng(7)
    for _ in range(4):
        index = tuple(rng.integers(0, s) for s in base.shape)
        shifted = base.copy()
        shifted[index] += 1e-6
        kernel.assign(shifted)
        up = loss().numpy()
        shifted[index] -= 2e-6
        kernel.assign(shifted)
        down = loss().numpy()
        kernel.assign(base)
        numeric = (up - down) / 2e-6
        assert abs(grad[index] - numeric) <= 1e-5 * max(1.0, abs(numeric)), index


def test_objective_rejects_a_model_without_inner_layer():
    inputs = keras.Input((16, 16, 3))
    f = keras.layers.Conv2D(4, 3, name=roles.FEATURES)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(f)))
    with pytest.raises(ValueError, match="no layer named 'wsol_inner_features'"):
        losses.SharpenFocusObjective(model)
    with pytest.raises(ValueError, match="attention must be one of ach, apx"):
        losses.SharpenFocusObjective(model, attention="gradcam", inner_layer=roles.FEATURES)


def synthetic_shapes(n, size, rng):
    """Class 0: a bright square; 1: a bright disc; 2: a bright cross; at random places."""
    images = rng.normal(0, 0.1, size=(n, size, size, 3)).astype("float32")
    labels = rng.integers(0, 3, size=n)
    yy, xx = np.mgrid[:size, :size]
    for i, label in enumerate(labels):
        cy, cx = rng.integers(5, size - 5, size=2)
        if label == 0:
            shape = (abs(yy - cy) <= 3) & (abs(xx - cx) <= 3)
        elif label == 1:
            shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= 12
        else:
            shape = ((abs(yy - cy) <= 1) & (abs(xx - cx) <= 4)) | (
                (abs(xx - cx) <= 1) & (abs(yy - cy) <= 4)
            )
        images[i][shape] += 1.0
    return images, labels


def test_training_lowers_the_separability_loss():
    net = TwoLayerCNN(seed=8, size=24, classes=3)
    rng = np.random.default_rng(9)
    images, labels = synthetic_shapes(32, 24, rng)
    objective = losses.SharpenFocusObjective(net.model, normalize_last_map=True)
    optimizer = keras.optimizers.Adam(3e-3)
    variables = net.model.trainable_variables

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss, _, terms = objective(x, y, training=True)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return terms

    x, y = tf.constant(images), tf.constant(labels)
    history = [step(x, y) for _ in range(40)]
    siou = [float(t["siou_last"] + t["siou_inner"]) for t in history]
    ce = [float(t["ce"]) for t in history]
    assert np.mean(siou[-5:]) < 0.8 * np.mean(siou[:5]), siou
    assert ce[-1] < ce[0]
