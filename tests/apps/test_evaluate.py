"""apps.evaluate as users run it: a train run's model_dir or its SavedModel, on a split.

The metrics themselves are tested against the protocol in
tests/wsolkeras/metrics and tests/wsolkeras/test_evaluation.py; here the
app must reproduce, from what a run left on disk, exactly the report the train
app wrote at the end of training (same keys, same values), and write its plots
and TensorBoard events.
"""

import glob
import json
import os

import numpy as np
import pytest

from tests.apps.app_runner import run_app

pytestmark = pytest.mark.slow


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_scalars(log_dir: str) -> dict[str, float]:
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    found = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        events = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        events.Reload()
        for tag in events.Tags()["tensors"]:
            if events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":
                found[tag] = float(tf.make_ndarray(events.Tensors(tag)[-1].tensor_proto))
    return found


def test_the_model_dir_reproduces_the_train_apps_metrics_exactly(trained_run):
    from PIL import Image

    model_dir, _ = trained_run
    result = run_app("evaluate", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-4000:]
    output_dir = os.path.join(model_dir, "eval", "test")
    trained = read_json(os.path.join(model_dir, "metrics.json"))
    evaluated = read_json(os.path.join(output_dir, "metrics.json"))
    about = evaluated.pop("evaluation")
    assert evaluated == trained
    assert about["source"] == "model_dir" and about["split"] == "test"
    test = evaluated["splits"]["test"]
    assert set(test["max_box_acc"]["max_box_acc"]) == {"50", "60", "70", "80", "90"}
    assert set(test["max_box_acc_v2"]["max_box_acc"]) == {"30", "50", "70"}
    for key in ("top1", "pxap", "top1_loc_max", "at_tau", "centre_baseline"):
        assert key in test, key
    assert evaluated["tau_split"] == "val" and evaluated["report_split"] == "test"
    assert "top-1 classification" in result.stdout and "MaxBoxAcc at IoU 0.5" in result.stdout
    assert "test: 100%" in result.stderr, "a progress bar"

    for name in ("box_acc_vs_tau.png", "box_acc_v2_vs_tau.png"):
        with Image.open(os.path.join(output_dir, name)) as image:
            assert image.format == "PNG" and image.width > 300
            assert len(np.unique(np.asarray(image.convert("L")))) > 10, "something is drawn"
    scalars = read_scalars(os.path.join(output_dir, "tensorboard", "test"))
    assert scalars["localization/max_box_acc_v2"] == pytest.approx(test["max_box_acc_v2"]["mean"])
    assert scalars["at_tau/tau"] == pytest.approx(evaluated["tau"])
    assert "localization/max_box_acc_iou90" in scalars
    assert read_scalars(os.path.join(output_dir, "tensorboard", "val"))


def test_the_saved_model_gives_the_same_report_to_float_rounding(trained_run, exported, tmp_path):
    model_dir, data_dir = trained_run
    version_dir, _ = exported
    output_dir = tmp_path / "eval"
    result = run_app(
        "evaluate",
        f"--saved_model={os.path.dirname(version_dir)}",
        f"--data_dir={data_dir}",
        f"--output_dir={output_dir}",
        "--noprogress",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    trained = read_json(os.path.join(model_dir, "metrics.json"))
    evaluated = read_json(output_dir / "metrics.json")
    assert evaluated["evaluation"]["source"] == "saved_model"
    assert evaluated["evaluation"]["path"] == os.path.abspath(version_dir)
    for key in ("tau_split", "report_split", "step"):
        assert evaluated[key] == trained[key], key
    assert evaluated.keys() == trained.keys() | {"evaluation"}
    # The SavedModel's graph computes the same maps to float32 rounding (~1e-7,
    # fused kernels), so a pixel right at a threshold may fall the other way:
    # each accuracy may differ by one image, no more.
    for split, found in evaluated["splits"].items():
        expected = trained["splits"][split]
        one_image = 100.0 / found["num_localization_images"] + 1e-9
        assert found.keys() == expected.keys()
        for kind in ("max_box_acc", "max_box_acc_v2"):
            for iou, value in found[kind]["max_box_acc"].items():
                assert abs(value - expected[kind]["max_box_acc"][iou]) <= one_image, (kind, iou)
        assert abs(found["top1"] - expected["top1"]) <= one_image
        assert abs(found["pxap"] - expected["pxap"]) < 1.0
    assert (output_dir / "box_acc_vs_tau.png").exists()


def test_another_extractor_gets_its_own_tau_and_directory(trained_run):
    model_dir, _ = trained_run
    result = run_app(
        "evaluate", f"--model_dir={model_dir}", "--extractor=gradcam", "--split=val", "--noprogress"
    )
    assert result.returncode == 0, result.stderr[-4000:]
    evaluated = read_json(os.path.join(model_dir, "eval", "val-gradcam", "metrics.json"))
    assert evaluated["evaluation"]["extractor"] == "gradcam"
    assert evaluated["config"]["extractor"] == "gradcam"
    assert list(evaluated["splits"]) == ["val"] and evaluated["report_split"] == "val"
    best = evaluated["splits"]["val"]["max_box_acc"]
    assert evaluated["tau"] == pytest.approx(best["best_tau"]["50"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["--model_dir", "--saved_model"]),
        (["--model_dir={tmp}/nowhere"], ["--model_dir=", "does not exist"]),
        (["--model_dir={run}", "--extractor=gradcamm"], ["--extractor", "gradcam++", "rollout"]),
        (["--model_dir={run}", "--extractor=rollout"], ["--extractor=rollout"]),
        (["--model_dir={run}", "--split=nope"], ["--split=nope", "train", "val", "test"]),
        (
            ["--saved_model={export}", "--extractor=gradcam", "--output_dir={tmp}/o"],
            ["a SavedModel gives the heat maps it was exported with (cam)"],
        ),
    ],
)
def test_bad_flags_exit_nonzero_with_a_clear_message(
    args, expected, trained_run, exported, tmp_path
):
    model_dir, data_dir = trained_run
    args = [a.format(tmp=tmp_path, run=model_dir, export=exported[0], data=data_dir) for a in args]
    result = run_app("evaluate", *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, (text, result.stderr[-3000:])
