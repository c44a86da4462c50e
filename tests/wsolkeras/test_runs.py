"""wsolkeras.runs: reading a train run back, and which tau fits which extractor."""

import json

import pytest

from wsolkeras import runs


def write_config(model_dir, **config):
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(config))


def test_read_config_says_what_is_missing(tmp_path):
    with pytest.raises(runs.RunError, match="does not exist"):
        runs.read_config(str(tmp_path / "nowhere"))
    with pytest.raises(runs.RunError, match="no config.json"):
        runs.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(runs.RunError, match="not valid JSON"):
        runs.read_config(str(tmp_path))


def test_a_run_without_its_model_has_not_finished(tmp_path):
    write_config(tmp_path / "run", backbone="small_cnn")
    with pytest.raises(runs.RunError, match="has not finished training"):
        runs.load_run(str(tmp_path / "run"))


def test_load_run_and_the_tau_rules(tmp_path):
    from wsolkeras import models

    model = models.build(backbone="small_cnn", method="cam", num_classes=3, image_size=32, seed=0)
    model_dir = tmp_path / "run"
    write_config(
        model_dir,
        image_size=32,
        normalization="unit",
        extractor="cam",
        class_names=["a", "b", "c"],
        total_steps=40,
        tau=0.25,
    )
    model.save(model_dir / "model.keras")  # not compiled: no optimizer step to read
    run = runs.load_run(str(model_dir))
    assert run.step == 40 and run.num_classes == 3 and run.image_size == 32
    assert run.class_names == ["a", "b", "c"]
    assert run.choose_tau("cam") == 0.25
    assert run.choose_tau("gradcam", 0.6) == 0.6
    with pytest.raises(runs.RunError, match="chosen on cam maps, not gradcam maps"):
        run.choose_tau("gradcam")
    run.config.pop("tau")
    with pytest.raises(runs.RunError, match="records no tau"):
        run.choose_tau("cam")
