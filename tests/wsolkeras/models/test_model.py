"""Every method trains with compile(optimizer) + fit and survives a .keras round trip."""

import keras
import numpy as np
import pytest

from wsolkeras import models

# name -> (build arguments, image size, how `loss` is made of the reported parts)
CASES = {
    "cam": ({"backbone": "small_cnn", "method": "cam"}, 32, {"ce": 1.0}),
    "adl": ({"backbone": "small_cnn", "method": "adl", "seed": 3}, 32, {"ce": 1.0}),
    "rfga": ({"backbone": "small_cnn", "method": "rfga"}, 32, {"ce": 1.0}),
    "adl+sharpen_focus": (
        {"backbone": "small_cnn", "method": "adl", "attention_loss": "sharpen_focus"},
        32,
        {"ce": 1.0, "siou_inner": 1.0, "siou_last": 1.0, "ac": 1.0},
    ),
    "recurrent": (
        {"backbone": "small_cnn", "method": "recurrent", "recurrent_units": 8},
        32,
        {"ce_global": 1.0, "ce_local": 1.0, "rank": 0.5},
    ),
    "vitol-vit": ({"backbone": "vit_tiny", "method": "vitol"}, 32, {"ce": 1.0}),
    "vitol-deit": ({"backbone": "deit_tiny", "method": "vitol"}, 32, {"ce": 1.0}),
}


def build_case(name: str, tiny_preset) -> tuple[models.WSOLModel, int, dict]:
    kwargs, size, parts = CASES[name]
    kwargs = dict(kwargs)
    if kwargs["method"] == "vitol":  # a 2-block preset: the real 12 blocks trace slowly
        kwargs["weights"] = tiny_preset(kwargs["backbone"].split("_")[0])[0]
    return models.build(num_classes=3, image_size=size, **kwargs), size, parts


@pytest.mark.parametrize("name", list(CASES))
def test_trains_and_round_trips(name, tiny_preset, images, tmp_path):
    model, size, parts = build_case(name, tiny_preset)
    x = images(size, batch=8, seed=1)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    model.compile(optimizer=keras.optimizers.SGD(0.01), metrics=["accuracy"])
    before = [v.numpy().copy() for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history

    # The loss is finite and made of the reported parts.
    assert set(parts) <= set(history) and "accuracy" in history
    assert np.isfinite(history["loss"][-1])
    total = sum(weight * history[part][-1] for part, weight in parts.items())
    assert history["loss"][-1] == pytest.approx(total, rel=1e-5)
    # Gradients reached every trainable weight (plain SGD moves each one that has one).
    unchanged = [
        v.path
        for v, old in zip(model.trainable_variables, before, strict=True)
        if np.array_equal(v.numpy(), old)
    ]
    assert not unchanged, f"no gradient reached {unchanged}"

    # .keras round trip: same class, same logits, no download (weights 'none').
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, models.WSOLModel)
    assert loaded.get_config()["weights"] == "none"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_cross_entropy_equals_numpy(images):
    model = models.build("small_cnn", "cam", num_classes=3, image_size=32)
    model.compile(optimizer="sgd")
    x, y = images(32, batch=4), np.array([2, 0, 1, 1])
    logits = keras.ops.convert_to_numpy(model(x)).astype(np.float64)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    result = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    assert result["ce"] == pytest.approx(-log_p[np.arange(4), y].mean(), rel=1e-5)
    assert result["loss"] == pytest.approx(result["ce"], rel=1e-6)


def test_compile_with_a_loss_or_sample_weights_is_refused(images):
    model = models.build("small_cnn", "cam", num_classes=3, image_size=32)
    with pytest.raises(ValueError, match="without loss"):
        model.compile(optimizer="sgd", loss="mse")
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="sample weights"):
        model.fit(images(32), np.zeros(4), sample_weight=np.ones(4), verbose=0)
