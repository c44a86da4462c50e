"""PatchADL against an independent numpy computation of WSOL_PROTOCOL.md section 2 (p-ADL)."""

import keras
import numpy as np
import pytest

from layers import PatchADL


def patch_adl_numpy(tokens: np.ndarray, gamma: float, branch: str) -> np.ndarray:
    """p-ADL's training output on [B, N, D] tokens for "drop" or "importance"."""
    attention = tokens.mean(axis=-1, keepdims=True)  # [B, N, 1], CLS included
    if branch == "drop":
        per_sample_max = attention.max(axis=(1, 2), keepdims=True)
        chosen = (attention < gamma * per_sample_max).astype(np.float32)
    else:
        chosen = 1.0 / (1.0 + np.exp(-attention))
    return tokens * chosen


def token_batch(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = rng.uniform(0.2, 1.5, size=(3, 10, 8)).astype(np.float32)
    tokens[0, 0] += 2.0  # sample 0: the CLS token is the most activated (and must be dropped)
    tokens[1, 3] += 2.0
    tokens[1] *= 0.1  # a per-sample max, not a batch-wide one
    tokens[2, 4:6] += 2.0
    return tokens


def which_branch(output: np.ndarray, tokens: np.ndarray, gamma: float) -> str:
    drop = np.allclose(output, patch_adl_numpy(tokens, gamma, "drop"), atol=1e-6)
    importance = np.allclose(output, patch_adl_numpy(tokens, gamma, "importance"), atol=1e-6)
    assert drop != importance, "the output is neither (or both) of p-ADL's two maps"
    return "drop" if drop else "importance"


@pytest.mark.parametrize(("drop_rate", "branch"), [(1.0, "drop"), (0.0, "importance")])
@pytest.mark.parametrize("gamma", [0.9, 0.6])
def test_equals_numpy_for_each_branch(drop_rate, branch, gamma, numpy_of):
    tokens = token_batch()
    layer = PatchADL(drop_rate=drop_rate, drop_threshold=gamma, seed=1)
    for _ in range(3):
        got = numpy_of(layer(tokens, training=True))
        np.testing.assert_allclose(
            got, patch_adl_numpy(tokens, gamma, branch), atol=1e-5, rtol=1e-5
        )
    if branch == "drop":
        assert (got[0, 0] == 0).all(), "the CLS token takes part and is dropped"
        dropped = (got == 0).all(axis=-1)
        assert dropped.any(axis=1).all() and (~dropped).any(axis=1).all()


@pytest.mark.parametrize("training", [False, None])
def test_identity_at_inference(training, numpy_of):
    tokens = token_batch()
    layer = PatchADL(drop_rate=1.0)
    np.testing.assert_array_equal(numpy_of(layer(tokens, training=training)), tokens)


@pytest.mark.parametrize("drop_rate", [0.75, 0.4])
def test_drop_mask_chosen_at_drop_rate_once_per_call(drop_rate, numpy_of):
    tokens = token_batch()
    layer = PatchADL(drop_rate=drop_rate, drop_threshold=0.9, seed=7)
    calls = 400
    branches = [
        which_branch(numpy_of(layer(tokens, training=True)), tokens, 0.9) for _ in range(calls)
    ]
    drops = branches.count("drop")
    sigma = np.sqrt(calls * drop_rate * (1 - drop_rate))
    assert abs(drops - calls * drop_rate) <= 3 * sigma, (drops, calls * drop_rate)


def small_model(patch_adl: PatchADL) -> keras.Model:
    inputs = keras.Input((10, 8))
    tokens = keras.layers.Dense(6, activation="relu", name="embed")(inputs)
    tokens = patch_adl(tokens)
    pooled = keras.layers.GlobalAveragePooling1D()(tokens)
    return keras.Model(inputs, keras.layers.Dense(2, name="classifier")(pooled))


def test_roundtrip_keras_file(assert_roundtrip):
    model = small_model(PatchADL(drop_rate=0.5, drop_threshold=0.85, seed=4, name="padl"))
    tokens = token_batch()
    loaded = assert_roundtrip(model, tokens)
    layer = loaded.get_layer("padl")
    assert isinstance(layer, PatchADL)
    assert (layer.drop_rate, layer.drop_threshold, layer.seed) == (0.5, 0.85, 4)


def test_trains(assert_trains):
    assert_trains(small_model(PatchADL(seed=0)), token_batch(), np.array([0, 1, 1]))


def test_jit_compiled_keeps_drawing(jit_compiled, numpy_of):
    tokens = token_batch()
    layer = PatchADL(drop_rate=0.5, drop_threshold=0.9, seed=5)
    layer.build(tokens.shape)
    run = jit_compiled(layer, training=True)
    branches = {which_branch(numpy_of(run(tokens)), tokens, 0.9) for _ in range(30)}
    assert branches == {"drop", "importance"}
    forced = PatchADL(drop_rate=0.0, drop_threshold=0.9)
    forced.build(tokens.shape)
    got = numpy_of(jit_compiled(forced, training=True)(tokens))
    np.testing.assert_allclose(got, patch_adl_numpy(tokens, 0.9, "importance"), atol=1e-5)


def test_shape_and_config():
    layer = PatchADL(drop_rate=0.2, drop_threshold=0.3, seed=9)
    assert layer.compute_output_shape((None, 197, 768)) == (None, 197, 768)
    assert PatchADL.from_config(layer.get_config()).get_config() == layer.get_config()
    assert (PatchADL().drop_rate, PatchADL().drop_threshold) == (0.75, 0.9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop_rate": 2.0}, "drop_rate"),
        ({"drop_rate": True}, "drop_rate"),
        ({"drop_threshold": -0.5}, "drop_threshold"),
        ({"drop_threshold": None}, "drop_threshold"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=rf"PatchADL: {message} must be a number in \[0, 1\]"):
        PatchADL(**kwargs)


@pytest.mark.parametrize("shape", [(2, 4, 4, 8), (2, 8)])
def test_bad_rank(shape):
    with pytest.raises(ValueError, match=r"PatchADL: expected a rank-3 input \[batch, tokens"):
        PatchADL()(np.zeros(shape, np.float32), training=True)
