"""apps.train on your own photos: a class-folder directory with boxes for a few val images only.

The user's path end to end, as subprocesses from the repository root:
``apps.convert --dataset=folder`` then ``apps.train``. Training needs no box;
tau is chosen on the boxed val images; a split with no box is reported as
classification only; with no box on the tau split, tau is ``--default_tau``
and the export uses it.
"""

import csv
import json
import os

import numpy as np
import pytest

from tests.apps.app_runner import run_app

CLASSES = ("circle", "square", "triangle")
# Images per class in each split folder; boxes for BOXED_PER_CLASS val images of each class.
PER_SPLIT = {"train": 14, "val": 3, "test": 3}
BOXED_PER_CLASS = 2
SIZE = 64


def draw(rng: np.random.Generator, class_name: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A noisy 64 px image with the class's shape in the class's colour; its inclusive box."""
    import cv2

    image = rng.integers(0, 90, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    half = int(rng.integers(8, 16))
    cx, cy = (int(v) for v in rng.integers(half + 1, SIZE - half - 1, 2))
    if class_name == "circle":
        cv2.circle(mask, (cx, cy), half, 1, thickness=-1)
    elif class_name == "square":
        cv2.rectangle(mask, (cx - half, cy - half), (cx + half, cy + half), 1, thickness=-1)
    else:
        points = np.array([[cx, cy - half], [cx - half, cy + half], [cx + half, cy + half]])
        cv2.fillPoly(mask, [points.astype(np.int32)], 1)
    colour = {"circle": (40, 40, 230), "square": (40, 220, 40), "triangle": (230, 60, 40)}
    image[mask > 0] = colour[class_name]
    ys, xs = np.nonzero(mask)
    return image, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def write_photos(root: str) -> tuple[str, int]:
    """``root/photos/{train,val,test}/<class>/NNN.png`` and ``root/boxes.csv``.

    The CSV boxes the first BOXED_PER_CLASS val images of each class and
    nothing else. Returns (the photos directory, the number of boxed images).
    """
    import cv2

    rng = np.random.default_rng(0)
    photos = os.path.join(root, "photos")
    rows = []
    for split, count in PER_SPLIT.items():
        for class_name in CLASSES:
            folder = os.path.join(photos, split, class_name)
            os.makedirs(folder)
            for index in range(count):
                image, box = draw(rng, class_name)
                name = f"{index:03d}.png"
                assert cv2.imwrite(os.path.join(folder, name), image)
                if split == "val" and index < BOXED_PER_CLASS:
                    rows.append([f"{split}/{class_name}/{name}", *box])
    with open(os.path.join(root, "boxes.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "xmin", "ymin", "xmax", "ymax"])
        writer.writerows(rows)
    return photos, len(rows)


def train_flags(data_dir: str, model_dir: str) -> list[str]:
    return [
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        "--nosynthetic",
        "--backbone=small_cnn",
        "--method=cam",
        "--resize_size=40",
        "--crop_size=32",
        "--batch_size=14",
        "--eval_batch_size=16",
        "--eval_every=0",
        "--num_summary_images=2",
        "--verbose=2",
    ]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("own"))
    photos, num_boxed = write_photos(root)
    data_dir = os.path.join(root, "tfrecords")
    result = run_app(
        "convert",
        "--dataset=folder",
        f"--data_dir={photos}",
        f"--output_dir={data_dir}",
        f"--boxes={os.path.join(root, 'boxes.csv')}",
        "--workers=0",
        "--noprogress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(data_dir, "manifest.json")) as f:
        splits = json.load(f)["splits"]
    # The fixture is what the test claims: no box to train on, a few in val, none in test.
    assert splits["train"]["num_with_boxes"] == 0
    assert splits["val"]["num_with_boxes"] == num_boxed == BOXED_PER_CLASS * len(CLASSES)
    assert splits["test"]["num_with_boxes"] == 0
    return data_dir, num_boxed


@pytest.mark.slow
def test_train_on_own_photos_chooses_tau_on_the_boxed_val_images(converted, tmp_path):
    data_dir, num_boxed = converted
    model_dir = tmp_path / "run"
    result = run_app("train", *train_flags(data_dir, str(model_dir)), "--epochs=2", "--noexport")
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())

    val = metrics["splits"]["val"]
    num_val = PER_SPLIT["val"] * len(CLASSES)
    assert val["num_images"] == num_val and val["num_localization_images"] == num_boxed
    assert val["classification_only"] is False
    for key in ("max_box_acc_v2", "max_box_acc"):
        assert 0 <= val[key]["mean"] <= 100
    assert 0 <= val["at_tau"]["gt_known_loc"] <= 100
    assert metrics["tau_split"] == "val" and metrics["tau_source"] == "chosen"
    assert metrics["tau"] == pytest.approx(val["max_box_acc"]["best_tau"]["50"])
    assert "computed over the images that have boxes" in metrics["localization_rule"]
    assert f"{num_val - num_boxed} images without a box left out" in result.stderr

    test = metrics["splits"]["test"]
    assert metrics["classification_only_splits"] == ["test"]
    assert test["classification_only"] is True and test["num_localization_images"] == 0
    assert test["num_images"] == PER_SPLIT["test"] * len(CLASSES)
    assert "classification only" in test["note"] and "max_box_acc_v2" not in test
    assert metrics["summary"]["classification_only"] is True
    assert metrics["summary"]["top1_cls"] == test["top1"]
    # Warned before training (from the manifest) and when evaluating.
    assert "no image of the 'test' split has a box" in result.stderr
    assert "test: no image of the split has a ground-truth box" in result.stderr
    config = json.loads((model_dir / "config.json").read_text())
    assert config["tau"] == metrics["tau"] and config["tau_source"] == "chosen"

    # apps.evaluate on the run follows the same rules: tau from the boxed val
    # images, the boxless test split reported as classification only.
    result = run_app("evaluate", f"--model_dir={model_dir}", "--noprogress")
    assert result.returncode == 0, result.stderr[-4000:]
    again = json.loads((model_dir / "eval" / "test" / "metrics.json").read_text())
    assert again["tau"] == metrics["tau"] and again["classification_only_splits"] == ["test"]
    assert again["splits"]["test"]["top1"] == test["top1"]


@pytest.mark.slow
def test_no_box_on_the_tau_split_falls_back_to_default_tau_and_exports_it(converted, tmp_path):
    data_dir, num_boxed = converted
    model_dir = tmp_path / "run"
    # tau on the unboxed test split, the boxed val split reported at that tau.
    result = run_app(
        "train",
        *train_flags(data_dir, str(model_dir)),
        "--epochs=1",
        "--steps_per_epoch=1",
        "--tau_split=test",
        "--test_split=val",
        "--default_tau=0.35",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["tau"] == 0.35 and metrics["tau_source"] == "default"
    assert "could not be chosen on data" in metrics["tau_rule"]
    assert "--default_tau" in metrics["tau_rule"]
    assert metrics["classification_only_splits"] == ["test"]
    assert "using --default_tau=0.35" in result.stderr
    summary = metrics["summary"]
    assert summary["split"] == "val" and summary["num_localization_images"] == num_boxed
    assert summary["gt_known_loc"] == metrics["splits"]["val"]["at_tau"]["gt_known_loc"]
    assert metrics["splits"]["val"]["at_tau"]["tau"] == 0.35

    config = json.loads((model_dir / "config.json").read_text())
    assert config["tau"] == 0.35 and config["tau_source"] == "default"
    export_dir = model_dir / config["export"]
    info = json.loads((export_dir / "assets.extra" / "wsolkeras.json").read_text())
    assert info["tau"] == 0.35


def test_default_tau_outside_0_1_is_an_error_naming_the_flag(tmp_path):
    # 1.0 is not a threshold: the protocol's taus are arange(0, 1, interval).
    result = run_app("train", "--default_tau=1.0", f"--model_dir={tmp_path}", timeout=120)
    assert result.returncode != 0
    assert "--default_tau" in result.stderr and "[0, 1)" in result.stderr
    assert "Traceback" not in result.stderr
