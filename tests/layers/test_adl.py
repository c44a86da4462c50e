"""ADL against an independent numpy computation of WSOL_PROTOCOL.md section 2."""

import keras
import numpy as np
import pytest

from layers import ADL


def adl_numpy(x: np.ndarray, gamma: float, branch: str) -> np.ndarray:
    """ADL's training output for the given branch ("drop" or "importance")."""
    attention = x.mean(axis=-1, keepdims=True)
    if branch == "drop":
        per_sample_max = attention.max(axis=(1, 2, 3), keepdims=True)
        chosen = (attention < gamma * per_sample_max).astype(np.float32)
    else:
        chosen = 1.0 / (1.0 + np.exp(-attention))
    return x * chosen


def feature_maps(seed: int = 0) -> np.ndarray:
    """Positive maps of very different scales, so a batch-wide max would differ."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 1.5, size=(3, 5, 6, 4)).astype(np.float32)
    x[1] *= 0.1
    x[2, 1:3, 2:4] += 2.0  # a clearly most-discriminative region
    return x


def which_branch(output: np.ndarray, x: np.ndarray, gamma: float) -> str:
    drop = np.allclose(output, adl_numpy(x, gamma, "drop"), atol=1e-6)
    importance = np.allclose(output, adl_numpy(x, gamma, "importance"), atol=1e-6)
    assert drop != importance, "the output is neither (or both) of ADL's two maps"
    return "drop" if drop else "importance"


@pytest.mark.parametrize(("drop_rate", "branch"), [(1.0, "drop"), (0.0, "importance")])
@pytest.mark.parametrize("gamma", [0.8, 0.5])
def test_equals_numpy_for_each_branch(drop_rate, branch, gamma, numpy_of):
    x = feature_maps()
    layer = ADL(drop_rate=drop_rate, drop_threshold=gamma, seed=1)
    for _ in range(3):  # the forced branch is chosen at every call
        got = numpy_of(layer(x, training=True))
        np.testing.assert_allclose(got, adl_numpy(x, gamma, branch), atol=1e-5, rtol=1e-5)
    if branch == "drop":  # the mask drops something in every sample, and keeps something
        kept = (got != 0).any(axis=-1)
        assert kept.reshape(3, -1).any(axis=1).all()
        assert (~kept).reshape(3, -1).any(axis=1).all()


@pytest.mark.parametrize("training", [False, None])
def test_identity_at_inference(training, numpy_of):
    x = feature_maps()
    layer = ADL(drop_rate=1.0)
    np.testing.assert_array_equal(numpy_of(layer(x, training=training)), x)
    np.testing.assert_array_equal(numpy_of(layer(x)), x)


@pytest.mark.parametrize("drop_rate", [0.75, 0.3])
def test_drop_mask_chosen_at_drop_rate_once_per_call(drop_rate, numpy_of):
    x = feature_maps()
    layer = ADL(drop_rate=drop_rate, drop_threshold=0.8, seed=7)
    calls = 400
    # which_branch compares the whole batch: one draw per call for all samples.
    branches = [which_branch(numpy_of(layer(x, training=True)), x, 0.8) for _ in range(calls)]
    drops = branches.count("drop")
    sigma = np.sqrt(calls * drop_rate * (1 - drop_rate))
    assert abs(drops - calls * drop_rate) <= 3 * sigma, (drops, calls * drop_rate)


def test_seed_makes_the_draws_reproducible(numpy_of):
    x = feature_maps()
    runs = []
    for _ in range(2):
        layer = ADL(drop_rate=0.5, seed=11)
        runs.append([which_branch(numpy_of(layer(x, training=True)), x, 0.8) for _ in range(20)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 2


def small_model(adl: ADL) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    features = adl(features)
    logits = keras.layers.Dense(2, name="classifier")(
        keras.layers.GlobalAveragePooling2D()(features)
    )
    return keras.Model(inputs, logits)


def test_roundtrip_keras_file(assert_roundtrip, numpy_of):
    model = small_model(ADL(drop_rate=0.6, drop_threshold=0.7, seed=3, name="adl"))
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    loaded = assert_roundtrip(model, x)
    layer = loaded.get_layer("adl")
    assert isinstance(layer, ADL)
    assert (layer.drop_rate, layer.drop_threshold, layer.seed) == (0.6, 0.7, 3)
    # The reloaded layer still drops in training (not only the identity survives).
    conv = numpy_of(loaded.get_layer("conv")(x))
    forced = ADL.from_config({**layer.get_config(), "drop_rate": 1.0})
    np.testing.assert_allclose(
        numpy_of(forced(conv, training=True)), adl_numpy(conv, 0.7, "drop"), atol=1e-5
    )


def test_trains(assert_trains):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    assert_trains(small_model(ADL(seed=0)), x, np.array([0, 1, 0, 1]))


def test_jit_compiled_keeps_drawing(jit_compiled, numpy_of):
    x = feature_maps()
    layer = ADL(drop_rate=0.5, drop_threshold=0.8, seed=5)
    layer.build(x.shape)
    run = jit_compiled(layer, training=True)
    branches = {which_branch(numpy_of(run(x)), x, 0.8) for _ in range(30)}
    assert branches == {"drop", "importance"}, "the draw is frozen in the compiled function"
    forced = ADL(drop_rate=1.0, drop_threshold=0.8)
    forced.build(x.shape)
    got = numpy_of(jit_compiled(forced, training=True)(x))
    np.testing.assert_allclose(got, adl_numpy(x, 0.8, "drop"), atol=1e-5)


def test_shape_and_config():
    layer = ADL(drop_rate=0.25, drop_threshold=0.5, seed=2)
    assert layer.compute_output_shape((None, 7, 9, 16)) == (None, 7, 9, 16)
    clone = ADL.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert ADL().get_config()["drop_rate"] == 0.75 and ADL().drop_threshold == 0.8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop_rate": -0.1}, "drop_rate"),
        ({"drop_rate": 1.5}, "drop_rate"),
        ({"drop_rate": "high"}, "drop_rate"),
        ({"drop_threshold": 1.01}, "drop_threshold"),
        ({"drop_threshold": -1}, "drop_threshold"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=rf"ADL: {message} must be a number in \[0, 1\]"):
        ADL(**kwargs)


@pytest.mark.parametrize("shape", [(2, 5, 4), (2, 3, 5, 4, 1)])
def test_bad_rank(shape):
    with pytest.raises(ValueError, match=r"ADL: expected a rank-4 input \[batch, height"):
        ADL()(np.zeros(shape, np.float32), training=True)
