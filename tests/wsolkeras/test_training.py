"""wsolkeras.training: strategies, the step-decay schedule, resume and checkpoints."""

import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from wsolkeras import atomic, models, training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- schedule and optimizer --------------------------------------------------


@pytest.mark.parametrize("decay_steps", [0, 1, 15, 40])
def test_step_decay_is_lr_times_factor_to_the_number_of_drops(decay_steps):
    schedule = training.StepDecay(0.01, decay_steps, 0.1)
    for step in [0, 1, 14, 15, 16, 29, 30, 59, 60, 61, 200]:
        drops = step // decay_steps if decay_steps > 0 else 0
        expected = 0.01 * 0.1**drops
        assert math.isclose(float(schedule(step)), expected, rel_tol=1e-5, abs_tol=1e-30), step


def test_step_decay_round_trips_through_config():
    schedule = training.StepDecay(0.05, 30, 0.5)
    again = training.StepDecay.from_config(schedule.get_config())
    assert float(again(75)) == pytest.approx(0.05 * 0.25)
    # A .keras file stores the optimizer with its schedule.
    config = keras.optimizers.serialize(keras.optimizers.SGD(schedule))
    assert config["config"]["learning_rate"]["class_name"] == "StepDecay"
    revived = keras.optimizers.deserialize(config)
    assert revived.get_config()["learning_rate"]["config"] == schedule.get_config()


def test_make_optimizer_gives_each_kind_and_lists_valid_ones():
    sgd = training.make_optimizer("sgd", 0.01, momentum=0.9, weight_decay=1e-4)
    assert isinstance(sgd, keras.optimizers.SGD)
    assert sgd.momentum == 0.9 and sgd.weight_decay == pytest.approx(1e-4)
    assert training.make_optimizer("sgd", 0.01).weight_decay is None
    assert isinstance(training.make_optimizer("adam", 1e-3), keras.optimizers.Adam)
    adamw = training.make_optimizer("adamw", 1e-3, weight_decay=0.05)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == pytest.approx(0.05)
    with pytest.raises(ValueError, match="sgd, adam, adamw"):
        training.make_optimizer("rmsprop", 0.1)


def test_sgd_step_follows_the_momentum_update():
    # Independent: v <- m v - lr g; w <- w + v (Keras' SGD), with the decayed lr.
    variable = keras.Variable(np.array([1.0, -2.0], np.float32))
    optimizer = training.make_optimizer("sgd", training.StepDecay(0.1, 2, 0.5), momentum=0.9)
    w, v = np.array([1.0, -2.0]), np.zeros(2)
    for step in range(5):
        gradient = np.array([0.5, 1.5]) * (step + 1)
        optimizer.apply_gradients([(tf.constant(gradient, tf.float32), variable)])
        lr = 0.1 * 0.5 ** (step // 2)
        v = 0.9 * v - lr * gradient
        w = w + v
    np.testing.assert_allclose(variable.numpy(), w, rtol=1e-5)


def test_steps_per_epoch():
    assert training.steps_per_epoch(100, 32) == 3
    assert training.steps_per_epoch(100, 32, requested=7) == 7
    with pytest.raises(ValueError, match="--batch_size"):
        training.steps_per_epoch(10, 32)


# --- resume ------------------------------------------------------------------


def test_resume_plan_finishes_the_interrupted_epoch_first():
    assert training.resume_plan(0, 10, 3) == [training.FitCall(0, 3, 10)]
    assert training.resume_plan(20, 10, 3) == [training.FitCall(2, 3, 10)]
    assert training.resume_plan(14, 10, 3) == [
        training.FitCall(1, 2, 6),
        training.FitCall(2, 3, 10),
    ]
    assert training.resume_plan(27, 10, 3) == [training.FitCall(2, 3, 3)]
    assert training.resume_plan(30, 10, 3) == []


@pytest.mark.parametrize("start", range(0, 31))
def test_resume_plan_always_totals_the_uninterrupted_steps(start):
    plan = training.resume_plan(start, 10, 3)
    done = start + sum((c.epochs - c.initial_epoch) * c.steps_per_epoch for c in plan)
    assert done == 30


def toy_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def toy_data(nan_at: int | None = None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    if nan_at is not None:
        x[nan_at * 4 : nan_at * 4 + 4] = np.nan
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)


def test_backup_saves_every_n_steps_and_restores_weights_and_step(tmp_path):
    model = toy_model()
    backup = training.ResumableBackup(str(tmp_path / "backup"), save_freq=3)
    model.fit(toy_data().take(7), epochs=1, callbacks=[backup], verbose=0)
    meta = training.read_backup_metadata(str(tmp_path / "backup"))
    # Saved after steps 3 and 6, then at the epoch's end (step 7).
    assert meta["step"] == 7
    assert not [f for f in os.listdir(tmp_path / "backup") if ".tmp-" in f]

    fresh = toy_model(seed=1)
    restored = training.ResumableBackup(str(tmp_path / "backup")).restore(fresh)
    assert restored == 7 == int(fresh.optimizer.iterations.numpy())
    for a, b in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_backup_keeps_the_last_good_state_when_the_loss_becomes_nan(tmp_path):
    model = toy_model()
    backup = training.ResumableBackup(str(tmp_path / "backup"), save_freq=2)
    checkpoints = training.EpochCheckpoint(str(tmp_path / "ckpt"))
    model.fit(
        toy_data(nan_at=5),
        epochs=2,
        callbacks=[keras.callbacks.TerminateOnNaN(), backup, checkpoints],
        verbose=0,
    )
    assert backup.nan_step == 6
    assert training.read_backup_metadata(str(tmp_path / "backup"))["step"] == 4
    fresh = toy_model(seed=1)
    training.ResumableBackup(str(tmp_path / "backup")).restore(fresh)
    assert all(np.isfinite(w).all() for w in fresh.get_weights())
    assert training.list_epoch_checkpoints(str(tmp_path / "ckpt")) == []


def test_restore_into_another_model_says_what_to_do(tmp_path):
    model = toy_model()
    backup = training.ResumableBackup(str(tmp_path / "backup"), save_freq=1)
    model.fit(toy_data().take(1), epochs=1, callbacks=[backup], verbose=0)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dense(3)])
    other.compile(keras.optimizers.SGD(0.1), loss="mse")
    with pytest.raises(ValueError, match="--model_dir"):
        training.ResumableBackup(str(tmp_path / "backup")).restore(other)
    same_layers_other_optimizer = toy_model()
    same_layers_other_optimizer.compile(keras.optimizers.Adam(), loss="mse")
    with pytest.raises(ValueError, match="optimizer"):
        training.ResumableBackup(str(tmp_path / "backup")).restore(same_layers_other_optimizer)


def test_epoch_checkpoints_keep_the_last_ones(tmp_path):
    model = toy_model()
    directory = str(tmp_path / "ckpt")
    model.fit(
        toy_data().take(2).repeat(),
        epochs=4,
        steps_per_epoch=2,
        callbacks=[training.EpochCheckpoint(directory, keep=2)],
        verbose=0,
    )
    kept = [os.path.basename(p) for p in training.list_epoch_checkpoints(directory)]
    assert kept == ["epoch-0003.keras", "epoch-0004.keras"]
    loaded = keras.models.load_model(os.path.join(directory, kept[-1]))
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_evaluate_every_calls_on_the_right_epochs():
    calls = []
    model = toy_model()
    model.fit(
        toy_data().take(1).repeat(),
        epochs=7,
        steps_per_epoch=1,
        callbacks=[training.EvaluateEvery(3, lambda e, s: calls.append((e, s)), skip_epoch=6)],
        verbose=0,
    )
    assert calls == [(3, 3)]


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = str(tmp_path / "metrics.json")
    atomic.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")
    assert json.loads(open(target).read()) == {"a": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]


# --- config ------------------------------------------------------------------


def manifest_with(*splits):
    return {"splits": {name: {"num_records": 10} for name in splits}}


def test_tau_split_falls_back_to_test_only_when_val_is_missing(caplog):
    assert training.resolve_tau_split(manifest_with("train", "val", "test"), "val", "test") == "val"
    with caplog.at_level("WARNING"):
        chosen = training.resolve_tau_split(manifest_with("train", "test"), "val", "test")
    assert chosen == "test" and "no 'val' split" in caplog.text
    with pytest.raises(ValueError, match="--tau_split=holdout.*train, test"):
        training.resolve_tau_split(manifest_with("train", "test"), "holdout", "test")


def test_split_size_names_the_flag():
    assert training.split_size(manifest_with("train", "test"), "train", "--train_split") == 10
    with pytest.raises(ValueError, match="--train_split=trainval.*train, test"):
        training.split_size(manifest_with("train", "test"), "trainval", "--train_split")


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"crop_size": 96}, "--crop_size"),
        ({"epochs": 0}, "--epochs"),
        ({"lr": 0.0}, "--lr"),
        ({"eval_every": -1}, "--eval_every"),
        ({"cam_curve_interval": 1.5}, "--cam_curve_interval"),
    ],
)
def test_check_config_names_the_bad_flag(change, flag):
    config = {
        "epochs": 2,
        "batch_size": 8,
        "eval_batch_size": 8,
        "crop_size": 64,
        "resize_size": 80,
        "top_k": 5,
        "lr": 0.1,
        "eval_every": 1,
        "cam_curve_interval": 0.01,
    }
    training.check_config(config)
    with pytest.raises(ValueError, match=flag):
        training.check_config({**config, **change})


# --- strategies --------------------------------------------------------------


def test_strategies_on_this_cpu():
    assert training.make_strategy("auto").num_replicas_in_sync == 1
    one = training.make_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    with pytest.raises(ValueError, match="auto, one_device, mirrored, multi_worker"):
        training.make_strategy("tpu")


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        training.make_strategy("multi_worker")


def run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_mirrored_over_two_logical_cpus_trains_and_checkpoints(tmp_path):
    result = run_python(
        f"""
        import numpy as np, keras, tensorflow as tf
        from wsolkeras import training
        assert training.configure_logical_cpus(2) == 2
        strategy = training.make_strategy("mirrored")
        assert strategy.num_replicas_in_sync == 2, strategy.extended.worker_devices
        assert training.uses_cpu_devices(strategy)
        with strategy.scope():
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
            opt = training.make_optimizer("sgd", training.StepDecay(0.1, 2, 0.1))
            model.compile(opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.optimizer.build(model.trainable_variables)
        x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        data = tf.data.Dataset.from_tensor_slices((x, (x[:, 0] > 0).astype("int32"))).batch(8)
        backup = training.ResumableBackup({str(tmp_path / "b")!r}, save_freq=2)
        model.fit(data.repeat(), epochs=2, steps_per_epoch=3, callbacks=[backup], verbose=0)
        print("STEP", int(model.optimizer.iterations.numpy()))
        with strategy.scope():
            again = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
            schedule = training.StepDecay(0.1, 2, 0.1)
            again.compile(training.make_optimizer("sgd", schedule), loss="mse")
            again.optimizer.build(again.trainable_variables)
        print("RESTORED", backup.restore(again))
        training.check_strategy(strategy, 8, jit_compile=False)
        for batch, jit in ((7, False), (8, True)):
            try:
                training.check_strategy(strategy, batch, jit_compile=jit)
            except ValueError as error:
                print("REFUSED", error)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "STEP 6" in result.stdout and "RESTORED 6" in result.stdout
    refused = [line for line in result.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 2
    assert "--batch_size=7" in refused[0] and "--jit_compile" in refused[1]


def test_logical_cpus_after_start_says_why():
    result = run_python(
        """
        import tensorflow as tf
        from wsolkeras import training
        tf.constant(1.0) + 1.0
        try:
            training.configure_logical_cpus(3)
        except RuntimeError as error:
            print("ERROR", error)
        """
    )
    assert "already initialised" in result.stdout, result.stderr[-2000:]


# --- every method under each strategy -----------------------------------------

METHODS = models.METHODS

_TRAIN_EACH_METHOD = """
import json, sys
import keras, numpy as np, tensorflow as tf
from wsolkeras import models, training
training.configure_logical_cpus(int(sys.argv[2]))
strategy = training.make_strategy(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, size=(16, 32, 32, 3)).astype("float32")
y = rng.integers(0, 3, size=16).astype("int32")
results = {"replicas": strategy.num_replicas_in_sync}
for method in sys.argv[3].split(","):
    try:
        backbone = "deit_tiny" if method == "vitol" else "small_cnn"
        with strategy.scope():
            model = models.build(
                backbone=backbone, method=method, num_classes=3, image_size=32, seed=0
            )
            optimizer = training.make_optimizer("sgd", training.StepDecay(0.01, 1, 0.5))
            model.compile(
                optimizer=optimizer,
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
            model.optimizer.build(model.trainable_variables)
        before = [w.copy() for w in model.get_weights()]
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
        history = model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
        after = model.get_weights()
        results[method] = {
            "steps": int(model.optimizer.iterations.numpy()),
            "loss": float(history.history["loss"][-1]),
            "changed": any(not np.array_equal(a, b) for a, b in zip(before, after)),
            "finite": all(bool(np.isfinite(w).all()) for w in after),
        }
    except Exception as error:
        results[method] = {"error": f"{type(error).__name__}: {error}"[:800]}
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def trained_each_method():
    runs = {}
    for strategy, cpus in (("one_device", 0), ("mirrored", 2)):
        result = subprocess.run(
            [sys.executable, "-c", _TRAIN_EACH_METHOD, strategy, str(cpus), ",".join(METHODS)],
            cwd=ROOT,
            env=dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
        assert lines, result.stderr[-3000:]
        runs[strategy] = json.loads(lines[-1][len("RESULTS ") :])
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["one_device", "mirrored"])
@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_a_few_steps_under_each_strategy(trained_each_method, strategy, method):
    run = trained_each_method[strategy]
    assert run["replicas"] == (2 if strategy == "mirrored" else 1)
    found = run[method]
    assert "error" not in found, found.get("error")
    assert found["steps"] == 2
    assert found["changed"] and found["finite"] and math.isfinite(found["loss"])


# --- data wiring -------------------------------------------------------------


def test_ensure_dataset_generates_the_synthetic_set_only_when_allowed(tmp_path):
    missing = str(tmp_path / "cub_tfrecords")
    with pytest.raises(FileNotFoundError, match="apps.convert"):
        training.ensure_dataset(missing, synthetic=False, synthetic_options={})
    assert not os.path.exists(missing)
    options = {
        "num_classes": 2,
        "image_size": 40,
        "train_size": 6,
        "val_size": 2,
        "test_size": 2,
        "seed": 0,
    }
    target = str(tmp_path / "synthetic")
    manifest = training.ensure_dataset(target, synthetic=True, synthetic_options=options)
    assert manifest["num_classes"] == 2
    assert {k: v["num_records"] for k, v in manifest["splits"].items()} == {
        "train": 6,
        "val": 2,
        "test": 2,
    }
    # Present now: read, not generated again.
    again = training.ensure_dataset(target, synthetic=True, synthetic_options={})
    assert again == manifest

    train = training.train_dataset(
        target, "train", batch_size=4, resize_size=40, crop_size=32, normalization="unit", seed=0
    )
    batches = list(train.take(4))  # more than one pass: repeated
    assert len(batches) == 4
    images, labels = batches[0]
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4,)
    evaluation_batches = list(
        training.eval_dataset(target, "val", batch_size=4, crop_size=32, normalization="unit")
    )
    assert sum(len(b["label"]) for b in evaluation_batches) == 2
    assert {"image", "label", "boxes", "num_boxes"} <= set(evaluation_batches[0])


def test_init_weights_copies_a_runs_model_and_refuses_another_shape(tmp_path):
    source = toy_model(seed=3)
    source.save(tmp_path / "model.keras")
    target = toy_model(seed=4)
    training.init_weights(target, str(tmp_path))  # a --model_dir holding model.keras
    for a, b in zip(source.get_weights(), target.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    wider = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="--init_from"):
        training.init_weights(wider, str(tmp_path / "model.keras"))
    with pytest.raises(FileNotFoundError, match="--init_from"):
        training.init_weights(target, str(tmp_path / "missing"))
