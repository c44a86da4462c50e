"""Checks shared by the layer tests: .keras round trip, one training step, XLA/jit.

Nothing here imports TensorFlow at import time, so the layer tests also run
under KERAS_BACKEND=jax in an environment without TensorFlow.
"""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()


def _flat(outputs) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(outputs)]


def _roundtrip(model: keras.Model, inputs, directory) -> keras.Model:
    """Saves `model` to a .keras file, loads it back and checks identical outputs."""
    path = directory / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    before = _flat(model(inputs, training=False))
    after = _flat(loaded(inputs, training=False))
    assert len(before) == len(after)
    for expected, got in zip(before, after, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]
    return loaded


def _trains(model: keras.Model, inputs, labels) -> None:
    """One SGD step with learning rate 1: every trainable weight must move.

    With plain SGD at rate 1 a weight changes by exactly minus its gradient,
    so a weight that does not move is one the gradient does not reach.
    """
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    before = {v.path: np.array(v) for v in model.trainable_weights}
    assert before, "the model has no trainable weights"
    model.train_on_batch(inputs, labels)
    frozen = [p for p, w in before.items() if np.array_equal(w, np.array(_by_path(model, p)))]
    assert not frozen, f"no gradient reached: {frozen}"


def _by_path(model: keras.Model, path: str):
    return next(v for v in model.trainable_weights if v.path == path)


def _jit(layer: keras.layers.Layer, **call_kwargs):
    """The layer's call compiled with XLA: tf.function(jit_compile=True) or jax.jit.

    The returned function takes the inputs and keeps the layer's state (seed
    generator, batch-norm statistics) flowing from call to call.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf  # only under the TensorFlow backend

        @tf.function(jit_compile=True)
        def run(inputs):
            return layer(inputs, **call_kwargs)

        return run
    if BACKEND == "jax":
        import jax

        compiled = jax.jit(
            lambda trainable, non_trainable, inputs: layer.stateless_call(
                trainable, non_trainable, inputs, **call_kwargs
            )
        )

        def run(inputs):
            trainable = [v.value for v in layer.trainable_variables]
            non_trainable = [v.value for v in layer.non_trainable_variables]
            outputs, non_trainable = compiled(trainable, non_trainable, inputs)
            for variable, value in zip(layer.non_trainable_variables, non_trainable, strict=True):
                variable.assign(value)
            return outputs

        return run
    pytest.skip(f"no XLA compilation check for the {BACKEND} backend")


@pytest.fixture
def assert_roundtrip(tmp_path):
    """Fixture: `assert_roundtrip(model, inputs)` returns the reloaded model."""
    return lambda model, inputs: _roundtrip(model, inputs, tmp_path)


@pytest.fixture
def assert_trains():
    """Fixture: `assert_trains(model, inputs, labels)`."""
    return _trains


@pytest.fixture
def jit_compiled():
    """Fixture: `jit_compiled(layer, **call_kwargs)` -> compiled call of the built layer."""
    return _jit


def to_numpy(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


@pytest.fixture
def numpy_of():
    """Fixture: converts a backend tensor to numpy."""
    return to_numpy
