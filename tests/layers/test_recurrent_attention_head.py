"""RecurrentAttentionHead against a numpy LSTM and attention written here (thesis 3.1.3.2, 7)."""

import keras
import numpy as np
import pytest

from layers import RecurrentAttentionHead


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def softmax(v, axis):
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def lstm_cell(x, hidden, cell, kernel, recurrent, bias):
    """One LSTM step, gates in Keras' order (input, forget, cell candidate, output)."""
    units = hidden.shape[-1]
    z = x @ kernel + hidden @ recurrent + bias
    i, f, g, o = (z[:, k * units : (k + 1) * units] for k in range(4))
    cell = sigmoid(f) * cell + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(cell), cell


def mlp(x, weights, names):
    for index, name in enumerate(names):
        x = x @ weights[f"{name}_kernel"] + weights[f"{name}_bias"]
        if index < len(names) - 1:
            x = np.maximum(x, 0.0)
    return x


def head_numpy(inputs, weights, timesteps, num_layers, spatial=False, key_channels=None):
    """Logits, step weights [B, T] and (spatial mode) maps [B, T, h, w]."""
    inputs = inputs.astype(np.float64)
    batch = inputs.shape[0]
    units = weights["step_score"].shape[0]
    hidden = [np.zeros((batch, units)) for _ in range(num_layers)]
    cell = [np.zeros((batch, units)) for _ in range(num_layers)]
    if spatial:
        _, height, width, channels = inputs.shape
        bias = np.broadcast_to(
            weights["spatial_bias"], (batch, height, width) + weights["spatial_bias"].shape[-1:]
        )
        keys = np.concatenate([inputs[..., :key_channels], bias], -1).reshape(
            batch, height * width, -1
        )
        values = np.concatenate([inputs[..., key_channels:], bias], -1).reshape(
            batch, height * width, -1
        )
    maps, tops = [], []
    for _ in range(timesteps):
        if spatial:
            # The query comes from the top LSTM state of the previous step (zeros at first).
            query = mlp(hidden[-1], weights, ["query_1", "query_2", "query_out"])
            scores = np.einsum("bnd,bd->bn", keys, query) / np.sqrt(keys.shape[-1])
            attention = softmax(scores, axis=1)
            maps.append(attention.reshape(batch, height, width))
            x = mlp(np.einsum("bn,bnd->bd", attention, values), weights, ["answer_1", "answer_out"])
        else:
            x = inputs
        for layer in range(num_layers):
            hidden[layer], cell[layer] = lstm_cell(
                x,
                hidden[layer],
                cell[layer],
                weights[f"lstm_{layer}_kernel"],
                weights[f"lstm_{layer}_recurrent_kernel"],
                weights[f"lstm_{layer}_bias"],
            )
            x = hidden[layer]
        tops.append(x)
    tops = np.stack(tops, axis=1)  # [B, T, units]
    step_weights = softmax(tops @ weights["step_score"][:, 0], axis=1)  # thesis Eq. 3.6
    pooled = (step_weights[..., None] * tops).sum(axis=1)  # Eq. 3.5
    logits = pooled @ weights["classifier_kernel"] + weights["classifier_bias"]
    return logits, step_weights, (np.stack(maps, axis=1) if spatial else None)


def randomize(layer, seed=0, scale=0.4) -> dict:
    rng = np.random.default_rng(seed)
    weights = {}
    for variable in layer.weights:
        value = rng.normal(0, scale, size=variable.shape).astype(np.float32)
        variable.assign(value)
        weights[variable.name] = value.astype(np.float64)
    return weights


def vectors(batch=3, dims=6, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, dims)).astype(np.float32)


def feature_maps(shape=(2, 3, 4, 6), seed=2):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(("timesteps", "num_layers"), [(3, 2), (1, 1), (4, 3)])
def test_equals_numpy(timesteps, num_layers, numpy_of):
    x = vectors()
    head = RecurrentAttentionHead(
        4, timesteps=timesteps, units=5, num_layers=num_layers, return_attention=True
    )
    head.build(x.shape)
    weights = randomize(head)
    logits, attention = head(x)
    expected_logits, expected_steps, _ = head_numpy(x, weights, timesteps, num_layers)
    assert set(attention) == {"temporal"}
    np.testing.assert_allclose(numpy_of(attention["temporal"]), expected_steps, atol=1e-5)
    np.testing.assert_allclose(numpy_of(logits), expected_logits, atol=1e-5, rtol=1e-5)
    if timesteps > 1:  # the step weights are not trivially uniform
        assert np.ptp(expected_steps, axis=1).min() > 1e-3


@pytest.mark.parametrize(("key_channels", "used_keys"), [(2, 2), (None, 3)])
def test_spatial_equals_numpy(key_channels, used_keys, numpy_of):
    x = feature_maps()
    head = RecurrentAttentionHead(
        3,
        timesteps=3,
        units=5,
        num_layers=2,
        spatial_attention=True,
        key_channels=key_channels,
        spatial_channels=3,
        return_attention=True,
    )
    head.build(x.shape)
    weights = randomize(head, seed=4)
    assert weights["spatial_bias"].shape == (3, 4, 3)
    assert weights["query_out_kernel"].shape == (5, used_keys + 3)
    assert weights["answer_1_kernel"].shape == (6 - used_keys + 3, 5)
    logits, attention = head(x)
    expected_logits, expected_steps, expected_maps = head_numpy(
        x, weights, 3, 2, spatial=True, key_channels=used_keys
    )
    np.testing.assert_allclose(numpy_of(attention["spatial"]), expected_maps, atol=1e-5)
    np.testing.assert_allclose(numpy_of(attention["temporal"]), expected_steps, atol=1e-5)
    np.testing.assert_allclose(numpy_of(logits), expected_logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(expected_maps.sum(axis=(2, 3)), 1.0, atol=1e-12)
    assert np.ptp(expected_maps.reshape(2, 3, -1), axis=-1).min() > 1e-3  # not uniform maps


def test_logits_only_without_return_attention(numpy_of):
    x = vectors()
    head = RecurrentAttentionHead(4, timesteps=2, units=5)
    head.build(x.shape)
    weights = randomize(head)
    logits = head(x)
    assert not isinstance(logits, (tuple, list))
    np.testing.assert_allclose(numpy_of(logits), head_numpy(x, weights, 2, 2)[0], atol=1e-5)


def spatial_model(return_attention=False) -> keras.Model:
    inputs = keras.Input((6, 6, 3))
    features = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="conv")(
        inputs
    )
    outputs = RecurrentAttentionHead(
        3,
        timesteps=3,
        units=8,
        spatial_attention=True,
        spatial_channels=4,
        return_attention=return_attention,
        name="head",
    )(features)
    return keras.Model(inputs, outputs)


def vector_model() -> keras.Model:
    inputs = keras.Input((6, 6, 3))
    features = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    logits = RecurrentAttentionHead(3, timesteps=3, units=8, name="head")(pooled)
    return keras.Model(inputs, logits)


def images(batch=4, seed=3):
    return np.random.default_rng(seed).normal(size=(batch, 6, 6, 3)).astype(np.float32)


def test_roundtrip_keras_file(assert_roundtrip):
    loaded = assert_roundtrip(vector_model(), images())
    config = loaded.get_layer("head").get_config()
    assert (config["num_classes"], config["timesteps"], config["units"]) == (3, 3, 8)


def test_roundtrip_keras_file_spatial_with_attention(assert_roundtrip):
    model = spatial_model(return_attention=True)
    logits, attention = model(images())
    assert tuple(attention["spatial"].shape) == (4, 3, 3, 3)
    loaded = assert_roundtrip(model, images())
    assert loaded.get_layer("head").spatial_attention


@pytest.mark.parametrize("make_model", [vector_model, spatial_model])
def test_trains(make_model, assert_trains):
    assert_trains(make_model(), images(), np.array([0, 1, 2, 1]))


@pytest.mark.parametrize("spatial", [False, True])
def test_jit_compiled(spatial, jit_compiled, numpy_of):
    x = feature_maps() if spatial else vectors()
    head = RecurrentAttentionHead(
        3,
        timesteps=2,
        units=4,
        spatial_attention=spatial,
        spatial_channels=2,
        return_attention=True,
    )
    head.build(x.shape)
    weights = randomize(head, seed=5)
    logits, attention = jit_compiled(head)(x)
    expected = head_numpy(x, weights, 2, 2, spatial=spatial, key_channels=3)
    np.testing.assert_allclose(numpy_of(logits), expected[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(numpy_of(attention["temporal"]), expected[1], atol=1e-5)
    if spatial:
        np.testing.assert_allclose(numpy_of(attention["spatial"]), expected[2], atol=1e-5)


def test_shapes_and_config():
    head = RecurrentAttentionHead(10)
    assert (head.timesteps, head.units, head.num_layers, head.spatial_attention) == (
        4,
        512,
        2,
        False,
    )
    assert head.compute_output_shape((None, 512)) == (None, 10)
    spatial = RecurrentAttentionHead(
        5, timesteps=6, spatial_attention=True, key_channels=7, return_attention=True
    )
    assert spatial.compute_output_shape((None, 7, 9, 16)) == (
        (None, 5),
        {"temporal": (None, 6), "spatial": (None, 6, 7, 9)},
    )
    clone = RecurrentAttentionHead.from_config(spatial.get_config())
    assert clone.get_config() == spatial.get_config()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"timesteps": 0}, "timesteps must be an integer >= 1"),
        ({"timesteps": 2.5}, "timesteps must be an integer >= 1"),
        ({"units": 0}, "units must be an integer >= 1"),
        ({"num_layers": 0}, "num_layers must be an integer >= 1"),
        ({"spatial_attention": "yes"}, "spatial_attention must be True or False"),
        ({"return_attention": 1}, "return_attention must be True or False"),
        ({"key_channels": 0}, "key_channels must be an integer >= 1"),
        ({"spatial_channels": 0}, "spatial_channels must be an integer >= 1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"RecurrentAttentionHead: {message}"):
        RecurrentAttentionHead(**{"num_classes": 3, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "shape", "message"),
    [
        ({}, (None, 7, 7, 8), r"got a feature map .* set spatial_attention=True"),
        ({}, (None, 4, 8), r"expected a rank-2 input \[batch, features\]"),
        ({}, (None, None), "the feature axis of the input must be known"),
        ({"spatial_attention": True}, (None, 8), r"expected a rank-4 input \[batch, height"),
        ({"spatial_attention": True}, (None, None, 7, 8), "the height axis .* must be known"),
        (
            {"spatial_attention": True, "key_channels": 8},
            (None, 7, 7, 8),
            r"key_channels must leave",
        ),
        ({"spatial_attention": True}, (None, 7, 7, 1), r"key_channels must leave"),
    ],
)
def test_bad_inputs(kwargs, shape, message):
    with pytest.raises(ValueError, match=f"RecurrentAttentionHead: {message}"):
        RecurrentAttentionHead(3, **kwargs).build(shape)
