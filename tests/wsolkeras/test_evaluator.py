"""wsolkeras.evaluator: what it writes for an evaluation, and the progress wrapper.

Evaluations of real models (and the exact reproduction of the train app's
metrics.json): tests/apps/test_evaluate.py.
"""

import json

import numpy as np
from PIL import Image

from wsolkeras import evaluation, evaluator


def fake_evaluation(split: str, peak: float) -> evaluation.SplitEvaluation:
    taus = np.round(np.arange(0, 1, 0.01), 2)
    curve = {
        iou: np.clip(100 - np.abs(taus - peak) * 200 - iou / 2, 0, 100)
        for iou in range(30, 100, 10)
    }
    table = {str(i): float(curve[i].max()) for i in (50, 60, 70, 80, 90)}
    v2 = {str(i): float(curve[i].max()) for i in (30, 50, 70)}
    metrics = {
        "max_box_acc": {
            "max_box_acc": table,
            "best_tau": {k: peak for k in table},
            "mean": float(np.mean(list(table.values()))),
            "miou": 0.5,
            "miou_tau": peak,
        },
        "max_box_acc_v2": {
            "max_box_acc": v2,
            "best_tau": {k: peak for k in v2},
            "mean": float(np.mean(list(v2.values()))),
            "miou": 0.5,
            "miou_tau": peak,
        },
        "top1_loc_max": 40.0,
        "top1": 80.0,
        "num_images": 10,
        "num_localization_images": 10,
    }
    curves = {
        "max_box_acc": {i: curve[i] for i in (50, 60, 70, 80, 90)},
        "max_box_acc_v2": {i: curve[i] for i in (30, 50, 70)},
        "top1_loc": {50: curve[50] * 0.8},
    }
    return evaluation.SplitEvaluation(split, 10, metrics, taus, curves)


def test_write_outputs_writes_the_report_the_plots_and_events(tmp_path):
    evaluations = {"val": fake_evaluation("val", 0.3), "test": fake_evaluation("test", 0.35)}
    found = evaluation.report(evaluations, tau=0.3, tau_split="val", step=7)
    written = evaluator.write_outputs(str(tmp_path), found, evaluations)
    assert json.loads((tmp_path / "metrics.json").read_text()) == found
    # At the tau chosen on val, the test curve is read there: 100 - 0.05 * 200 - 25.
    assert found["summary"]["gt_known_loc"] == np.float64(100 - 0.05 * 200 - 25)
    for name in ("box_acc_vs_tau.png", "box_acc_v2_vs_tau.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["test", "val"]
    assert written["metrics"] == str(tmp_path / "metrics.json")
    lines = evaluator.summary_lines(found)
    assert lines[0] == "test split, tau = 0.30 chosen on val"
    assert any("MaxBoxAcc at IoU 0.5: " in line for line in lines)


def test_progress_passes_everything_through(capsys):
    assert list(evaluator.progress(iter(range(5)), 5, "x", enabled=True)) == list(range(5))
    assert "x: 100%" in capsys.readouterr().err
    assert list(evaluator.progress(range(3), 3, "y", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
