"""RFGA against an independent numpy computation of the paper's Eqs. 1-8 (channels-last)."""

import keras
import numpy as np
import pytest

from layers import RFGA

EPSILON = 1e-5


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def conv1d_same(sequence: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Bias-free 1-D cross-correlation with zero padding: [B, L, Cin] x [k, Cin, Cout]."""
    size = kernel.shape[0]
    length = sequence.shape[1]
    padded = np.pad(sequence, ((0, 0), (size // 2, size // 2), (0, 0)))
    out = np.zeros(sequence.shape[:2] + kernel.shape[2:], np.float64)
    for position in range(length):
        window = padded[:, position : position + size, :]  # [B, k, Cin]
        out[:, position, :] = np.einsum("bkc,kco->bo", window, kernel)
    return out


def batch_norm(z: np.ndarray, params: dict, training: bool) -> np.ndarray:
    """Batch norm over the last axis; training: biased batch statistics over the other axes."""
    if training:
        axes = tuple(range(z.ndim - 1))
        mean, variance = z.mean(axis=axes), z.var(axis=axes)
    else:
        mean, variance = params["moving_mean"], params["moving_variance"]
    return params["gamma"] * (z - mean) / np.sqrt(variance + EPSILON) + params["beta"]


def rfga_numpy(x, weights, training, residual, expand_activation):
    x = x.astype(np.float64)
    pooled_c = x.mean(axis=(1, 2))  # Eq. 1, [B, C]
    pooled_h = x.mean(axis=2)  # Eq. 2, [B, H, C]
    pooled_w = x.mean(axis=1)  # Eq. 3, [B, W, C]
    z_h = sigmoid(
        batch_norm(
            conv1d_same(pooled_h, weights["height_kernel"]), weights["height_norm"], training
        )
    )
    z_w = sigmoid(
        batch_norm(conv1d_same(pooled_w, weights["width_kernel"]), weights["width_norm"], training)
    )
    # ECA: the channels of c are the positions of a one-channel sequence.
    z_c = conv1d_same(pooled_c[:, :, None], weights["channel_kernel"])[:, :, 0]
    z_c = sigmoid(batch_norm(z_c, weights["channel_norm"], training))
    attention = z_h[:, :, None, :] + z_w[:, None, :, :] + z_c[:, None, None, :]  # Eq. 7
    if expand_activation == "sigmoid":
        attention = sigmoid(attention)
    return x + x * attention if residual else x * attention  # Eq. 8


def randomize(layer: RFGA, seed: int = 0) -> dict:
    """Gives every weight of a built RFGA a random value; returns them as numpy."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name in ("height_kernel", "width_kernel", "channel_kernel"):
        variable = getattr(layer, name)
        value = rng.normal(0, 0.5, size=variable.shape).astype(np.float32)
        variable.assign(value)
        weights[name] = value.astype(np.float64)
    for name in ("height_norm", "width_norm", "channel_norm"):
        norm = getattr(layer, name)
        params = {
            "gamma": rng.uniform(0.5, 1.5, norm.gamma.shape),
            "beta": rng.normal(0, 0.3, norm.beta.shape),
            "moving_mean": rng.normal(0, 0.3, norm.moving_mean.shape),
            "moving_variance": rng.uniform(0.3, 2.0, norm.moving_variance.shape),
        }
        for key, value in params.items():
            getattr(norm, key).assign(value.astype(np.float32))
        weights[name] = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
    return weights


def feature_map(shape=(3, 5, 7, 6), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.5, 1.0, size=shape).astype(np.float32)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("expand_activation", ["sigmoid", None])
def test_equals_numpy(training, residual, expand_activation, numpy_of):
    x = feature_map()
    layer = RFGA(kernel_size=3, residual=residual, expand_activation=expand_activation)
    layer.build(x.shape)
    weights = randomize(layer)
    got = numpy_of(layer(x, training=training))
    expected = rfga_numpy(x, weights, training, residual, expand_activation)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel_size", [1, 5])
def test_other_kernel_sizes(kernel_size, numpy_of):
    x = feature_map(shape=(2, 6, 4, 8))
    layer = RFGA(kernel_size=kernel_size)
    layer.build(x.shape)
    weights = randomize(layer, seed=kernel_size)
    assert layer.channel_kernel.shape == (kernel_size, 1, 1)
    assert layer.height_kernel.shape == (kernel_size, 8, 8)
    got = numpy_of(layer(x, training=False))
    np.testing.assert_allclose(
        got, rfga_numpy(x, weights, False, True, "sigmoid"), atol=1e-5, rtol=1e-5
    )


def test_height_and_width_known_only_at_call_time(numpy_of):
    inputs = keras.Input((None, None, 6))
    rfga = RFGA(name="rfga")
    model = keras.Model(inputs, rfga(inputs))
    assert model.output_shape == (None, None, None, 6)
    weights = randomize(rfga)
    for shape in [(2, 4, 9, 6), (1, 11, 3, 6)]:
        x = feature_map(shape)
        got = numpy_of(model(x, training=False))
        np.testing.assert_allclose(
            got, rfga_numpy(x, weights, False, True, "sigmoid"), atol=1e-5, rtol=1e-5
        )


def test_training_updates_the_moving_statistics(numpy_of):
    x = feature_map()
    layer = RFGA()
    layer.build(x.shape)
    before = numpy_of(layer.channel_norm.moving_mean)
    layer(x, training=False)
    np.testing.assert_array_equal(numpy_of(layer.channel_norm.moving_mean), before)
    layer(x, training=True)
    assert not np.array_equal(numpy_of(layer.channel_norm.moving_mean), before)


def small_model(rfga: RFGA) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="conv")(inputs)
    features = rfga(features)
    logits = keras.layers.Dense(3, name="classifier")(
        keras.layers.GlobalAveragePooling2D()(features)
    )
    return keras.Model(inputs, logits)


@pytest.mark.parametrize("expand_activation", ["sigmoid", None])
def test_trains(expand_activation, assert_trains):
    x = feature_map(shape=(4, 8, 8, 3))
    model = small_model(RFGA(expand_activation=expand_activation, residual=False))
    assert_trains(model, x, np.array([0, 1, 2, 1]))


def test_roundtrip_keras_file(assert_roundtrip, numpy_of):
    x = feature_map(shape=(4, 8, 8, 3))
    model = small_model(RFGA(kernel_size=5, residual=False, expand_activation=None, name="rfga"))
    randomize(model.get_layer("rfga"))
    model(x, training=True)  # moving statistics away from their initial values
    loaded = assert_roundtrip(model, x)
    layer = loaded.get_layer("rfga")
    assert (layer.kernel_size, layer.residual, layer.expand_activation) == (5, False, None)
    np.testing.assert_array_equal(
        numpy_of(layer.width_norm.moving_variance),
        numpy_of(model.get_layer("rfga").width_norm.moving_variance),
    )


@pytest.mark.parametrize("training", [False, True])
def test_jit_compiled(training, jit_compiled, numpy_of):
    x = feature_map()
    layer = RFGA()
    layer.build(x.shape)
    weights = randomize(layer, seed=3)
    got = numpy_of(jit_compiled(layer, training=training)(x))
    np.testing.assert_allclose(
        got, rfga_numpy(x, weights, training, True, "sigmoid"), atol=1e-5, rtol=1e-5
    )


def test_shape_and_config():
    layer = RFGA(kernel_size=5, residual=False, expand_activation=None)
    assert layer.compute_output_shape((None, None, None, 32)) == (None, None, None, 32)
    clone = RFGA.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    default = RFGA()
    assert (default.kernel_size, default.residual, default.expand_activation) == (
        3,
        True,
        "sigmoid",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 2}, "kernel_size must be odd"),
        ({"kernel_size": 0}, r"kernel_size must be an integer >= 1"),
        ({"kernel_size": -3}, r"kernel_size must be an integer >= 1"),
        ({"kernel_size": 3.0}, r"kernel_size must be an integer >= 1"),
        ({"expand_activation": "relu"}, r"expand_activation must be one of \('sigmoid', None\)"),
        ({"expand_activation": "none"}, r"expand_activation must be one of"),
        ({"residual": "yes"}, "residual must be True or False"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"RFGA: {message}"):
        RFGA(**kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"RFGA: expected a rank-4 input \[batch, height"):
        RFGA()(np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="RFGA: the channel axis of the input must be known"):
        RFGA().build((None, 5, 5, None))
