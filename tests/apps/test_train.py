"""apps.train as users run it: a subprocess, from the repository root."""

import glob
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.apps.app_runner import ROOT, run_app
from tests.apps.app_runner import app_environment as environment

FLAGFILES = ("cub.flags", "aircraft.flags", "dogs.flags", "vitol_cub.flags")


def tiny_synthetic(data_dir: str, train: int = 64, val: int = 16, test: int = 16) -> list[str]:
    """Flags for a tiny synthetic set and a short run (the app generates the set)."""
    return [
        f"--data_dir={data_dir}",
        "--synthetic_num_classes=3",
        "--synthetic_image_size=48",
        f"--synthetic_train_size={train}",
        f"--synthetic_val_size={val}",
        f"--synthetic_test_size={test}",
        "--resize_size=40",
        "--crop_size=32",
        "--batch_size=16",
        "--eval_batch_size=16",
        "--verbose=2",
    ]


# --- flags -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--strategy=tpu", ["--strategy", "auto", "one_device", "mirrored", "multi_worker"]),
        ("--backbone=resnet51", ["--backbone", "small_cnn", "resnet50", "deit_base"]),
        ("--optimizer=rmsprop", ["--optimizer", "sgd", "adam", "adamw"]),
    ],
)
def test_bad_flags_exit_nonzero_naming_the_flag_and_the_choices(flag, expected):
    result = run_app("train", flag, timeout=120)
    assert result.returncode != 0
    message = result.stderr
    assert "Traceback" not in message, message[-2000:]
    for word in expected:
        assert word in message, (word, message[-2000:])


def test_inconsistent_flags_are_a_usage_error(tmp_path):
    result = run_app(
        "train", "--crop_size=64", "--resize_size=48", f"--model_dir={tmp_path}", timeout=120
    )
    assert result.returncode != 0
    assert "--crop_size" in result.stderr and "--resize_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_default_flags_file_is_the_embedded_default():
    code = (
        "import json, sys\n"
        "from absl import flags\n"
        "import apps.train as train\n"
        "F = flags.FLAGS\n"
        "F(['train', '--flagfile=default.flags'])\n"
        "values = {n: [F[n].value, F[n].default, F[n].present] for n in train.APP_FLAGS}\n"
        "print(json.dumps(values))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    values = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (value, default, _) in values.items():
        assert value == default, f"default.flags: --{name}={value}, the code's default: {default}"
    testing_only = {"logical_cpus", "dry_run", "init_from", "verbose"}
    missing = [n for n, (_, _, present) in values.items() if not present and n not in testing_only]
    assert not missing, f"default.flags does not list {missing}"


# --- the main job --------------------------------------------------------------


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def read_event_tags(log_dir: str):
    from tensorboard.backend.event_processing import event_accumulator

    files = sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*")))
    assert files, f"no event file in {log_dir}"
    found = {}
    for path in files:
        events = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        events.Reload()
        for tag in events.Tags()["tensors"]:
            plugin = events.SummaryMetadata(tag).plugin_data.plugin_name
            found[tag] = (plugin, events.Tensors(tag))
    return found


@pytest.mark.slow
def test_main_job_trains_evaluates_and_exports(tmp_path):
    import tensorflow as tf

    model_dir = tmp_path / "run"
    result = run_app(
        "train",
        *tiny_synthetic(str(tmp_path / "data")),
        f"--model_dir={model_dir}",
        "--epochs=2",
        "--eval_every=1",
        "--num_summary_images=3",
    )
    assert result.returncode == 0, result.stderr[-4000:]

    tags = read_event_tags(str(model_dir / "tensorboard" / "eval_val"))
    for tag in (
        "localization/max_box_acc_v2",
        "localization/max_box_acc_iou50",
        "localization/miou",
        "localization/top1_cls",
    ):
        assert tags[tag][0] == "scalars", tag
        # Evaluated after epoch 1 (callback) and at the end.
        assert len(tags[tag][1]) == 2
    assert tags["maps/examples"][0] == "images"
    assert tags["curves/max_box_acc_v2_vs_tau"][0] == "images"
    maps = tf.make_ndarray(tags["maps/examples"][1][-1].tensor_proto)
    assert len(maps) == 2 + 3  # width, height, three PNGs
    assert tf.io.decode_png(maps[2]).shape == (32, 32, 3)
    assert "train/loss" in read_event_tags(str(model_dir / "tensorboard" / "train"))

    metrics = json.loads((model_dir / "metrics.json").read_text())
    summary = metrics["summary"]
    assert metrics["tau_split"] == "val" and metrics["report_split"] == "test"
    assert 0 <= metrics["tau"] < 1
    for key in ("max_box_acc_v2", "centre_baseline_max_box_acc_v2", "top1_loc", "gt_known_loc"):
        assert 0 <= summary[key] <= 100, key
    assert metrics["step"] == 2 * (64 // 16)
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("backbone", "method", "num_classes", "class_names", "normalization", "tau"):
        assert key in config
    assert config["tau"] == metrics["tau"]

    (export_dir,) = glob.glob(str(model_dir / "export" / "wsol" / "*"))
    assert os.path.basename(export_dir) == str(metrics["step"])
    loaded = tf.saved_model.load(export_dir)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(2)]
    out = loaded.signatures["serving_default"](
        image_bytes=tf.constant([png_bytes(im) for im in images])
    )
    assert out["class_ids"].shape == (2, 3)
    assert out["heatmaps"].shape == (2, 32, 32)
    boxes = out["boxes"].numpy()
    assert boxes.shape == (2, 4) and (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_with_the_same_step_count(tmp_path):
    common = [
        *tiny_synthetic(str(tmp_path / "data"), train=96, val=16, test=16),
        "--epochs=3",
        "--steps_per_epoch=6",
        "--backup_every_steps=2",
        "--eval_every=0",
        "--noexport",
    ]
    # Generate the data once (first run), uninterrupted.
    straight = run_app("train", *common, f"--model_dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-4000:]
    total = json.loads((tmp_path / "straight" / "metrics.json").read_text())["step"]
    assert total == 18

    model_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "apps.train", *common, f"--model_dir={model_dir}"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metadata = model_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and process.poll() is None:
        if metadata.exists():
            step = json.loads(metadata.read_text())["step"]
            if step >= 2:
                process.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert killed_at is not None and killed_at < total, "the run was not killed mid-training"
    assert not (model_dir / "metrics.json").exists()

    resumed = run_app("train", *common, f"--model_dir={model_dir}")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = (model_dir / "train.log").read_text()
    restored = [int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "resumed from" in line]
    assert restored and restored[-1] >= killed_at, log[-2000:]
    assert json.loads((model_dir / "metrics.json").read_text())["step"] == total

    # Started again once finished: nothing left to train, same result.
    again = run_app("train", *common, f"--model_dir={model_dir}")
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((model_dir / "metrics.json").read_text())["step"] == total


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_state(tmp_path):
    model_dir = tmp_path / "run"
    result = run_app(
        "train",
        *tiny_synthetic(str(tmp_path / "data"), train=64, val=8, test=8),
        f"--model_dir={model_dir}",
        "--epochs=3",
        "--lr=1e12",
        "--backup_every_steps=1",
    )
    assert result.returncode == 1
    assert "the loss became NaN at step" in result.stderr
    nan_step = int(result.stderr.split("the loss became NaN at step ")[1].split(";")[0])
    saved = json.loads((model_dir / "backup" / "training_metadata.json").read_text())
    assert saved["step"] == nan_step - 1
    assert not (model_dir / "metrics.json").exists()
    assert not (model_dir / "export").exists()


# --- the recipes -------------------------------------------------------------


def write_fixture(name: str, parent: str) -> tuple[str, str]:
    """Writes a tiny dataset in the publisher's layout; returns (converter name, its data_dir)."""
    sys.path.insert(0, ROOT)
    from tests.tfrecords.converters import fixtures

    if name in ("cub", "vitol_cub"):
        info = fixtures.write_cub(parent, per_class=2, segmentations=False)
        return "cub", info["root"]
    if name == "aircraft":
        info = fixtures.write_aircraft(parent, per_split=2)
        return "aircraft", info["root"]
    info = fixtures.write_dogs(os.path.join(parent, "dogs"), per_class=3)
    return "dogs", info["root"]


@pytest.mark.slow
@pytest.mark.parametrize("flagfile", FLAGFILES)
def test_recipe_flagfiles_build_their_model_and_pipeline(flagfile, tmp_path):
    converter, raw = write_fixture(flagfile.split(".")[0], str(tmp_path / "raw"))
    data_dir = str(tmp_path / "tfrecords")
    converted = run_app(
        "convert",
        f"--dataset={converter}",
        f"--data_dir={raw}",
        f"--output_dir={data_dir}",
        "--workers=0",
        "--noprogress",
    )
    assert converted.returncode == 0, converted.stderr[-3000:]
    result = run_app(
        "train",
        f"--flagfile={flagfile}",
        "--weights=none",
        f"--data_dir={data_dir}",
        f"--model_dir={tmp_path / 'run'}",
        "--resize_size=40",
        "--crop_size=32",
        "--batch_size=2",
        "--dry_run",
        "--verbose=2",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    with open(os.path.join(ROOT, flagfile)) as f:
        recipe = dict(
            line.strip()[2:].split("=", 1) for line in f if line.startswith("--") and "=" in line
        )
    assert config["backbone"] == recipe["backbone"]
    assert config["method"] == recipe["method"]
    assert config["lr"] == float(recipe["lr"])
    assert config["epochs"] == int(recipe["epochs"])
    assert "dry run" in result.stderr
