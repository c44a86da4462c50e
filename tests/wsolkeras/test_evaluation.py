"""wsolkeras.evaluation on maps whose answer is known: perfect boxes, wrong boxes, the centre."""

import numpy as np
import pytest

from wsolkeras import evaluation

SIZE = 32
# Inclusive pixel boxes (x0, y0, x1, y1) at SIZE, one object per image.
BOXES = [(4, 6, 15, 19), (10, 2, 27, 13), (1, 1, 12, 30), (18, 18, 29, 29), (3, 20, 14, 28)]
LABELS = [0, 1, 2, 0, 1]
PREDICTED = [0, 1, 0, 0, 2]  # images 2 and 4 misclassified
PERFECT = [True, True, True, False, False]  # maps on the object, or far from it


def indicator(box, size=SIZE):
    x0, y0, x1, y1 = box
    m = np.zeros((size, size))
    m[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return m


def far_box(box):
    x0, y0, x1, y1 = box
    # The opposite corner, disjoint from the object.
    return (0, 0, 2, 2) if x0 > 10 or y0 > 10 else (SIZE - 3, SIZE - 3, SIZE - 1, SIZE - 1)


def protocol_iou(gt):
    """IoU of the protocol's box of an indicator map (widened by one pixel) with its box."""
    x0, y0, x1, y1 = gt
    px1, py1 = min(x1 + 1, SIZE - 1), min(y1 + 1, SIZE - 1)
    return ((x1 - x0 + 1) * (y1 - y0 + 1)) / ((px1 - x0 + 1) * (py1 - y0 + 1))


IMAGES = np.random.default_rng(0).normal(size=(len(BOXES), SIZE, SIZE, 3)).astype(np.float32)


def index_of(image) -> int:
    """Which of IMAGES this is (by its first pixel)."""
    return int(np.argmin(np.abs(IMAGES[:, 0, 0, 0] - float(np.asarray(image)[0, 0, 0]))))


def batches(extra_unboxed: bool = False, with_masks: bool = False):
    normalised = [[y0 / SIZE, x0 / SIZE, y1 / SIZE, x1 / SIZE] for x0, y0, x1, y1 in BOXES]
    batch = {
        "image": IMAGES,
        "label": np.array(LABELS, np.int32),
        "boxes": np.array(normalised, np.float32)[:, None, :],
        "num_boxes": np.ones(len(BOXES), np.int32),
    }
    if with_masks:
        batch["mask"] = np.stack([indicator(b) for b in BOXES]).astype(np.uint8)
    out = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    if extra_unboxed:
        out.append(
            {
                "image": IMAGES[:1],
                "label": np.array([0], np.int32),
                "boxes": np.zeros((1, 1, 4), np.float32),
                "num_boxes": np.zeros(1, np.int32),
                **({"mask": np.zeros((1, SIZE, SIZE), np.uint8)} if with_masks else {}),
            }
        )
    return out


def fake_model(images, training=False):
    """Logits that predict ``PREDICTED[i]`` for image i."""
    logits = np.zeros((len(images), 3), np.float32)
    for row, image in enumerate(np.asarray(images)):
        logits[row, PREDICTED[index_of(image)]] = 5.0
    return logits


def fake_extractor(images, classes):
    """Indicator maps at the evaluation size: on the object for PERFECT images."""
    maps = []
    for image in np.asarray(images):
        i = index_of(image)
        maps.append(indicator(BOXES[i] if PERFECT[i] else far_box(BOXES[i])))
    return np.stack(maps)


def run(extra_unboxed=False, with_masks=False, **kwargs):
    return evaluation.evaluate(
        fake_model,
        batches(extra_unboxed, with_masks),
        extractor=fake_extractor,
        eval_size=SIZE,
        split="val",
        **kwargs,
    )


def test_scores_of_perfect_and_wrong_maps():
    found = run()
    m = found.metrics
    ious = [protocol_iou(b) if p else 0.0 for b, p in zip(BOXES, PERFECT, strict=True)]
    assert m["top1"] == pytest.approx(100 * 3 / 5)
    for delta in (30, 50, 70):
        expected = 100 * np.mean([iou >= delta / 100 for iou in ious])
        assert m["max_box_acc_v2"]["max_box_acc"][str(delta)] == pytest.approx(expected)
    for delta in (50, 60, 70, 80, 90):
        expected = 100 * np.mean([iou >= delta / 100 for iou in ious])
        assert m["max_box_acc"]["max_box_acc"][str(delta)] == pytest.approx(expected)
    assert m["max_box_acc_v2"]["mean"] == pytest.approx(60.0)
    miou = m["max_box_acc"]["miou"]
    assert miou == pytest.approx(np.mean(ious)) or miou == pytest.approx(100 * np.mean(ious))
    # The maps are binary: every tau gives the same boxes.
    at = found.at_tau(0.37)
    assert at["gt_known_loc"] == pytest.approx(60.0)
    # Top-1 Loc: right class AND IoU >= 0.5: images 0 and 1 (image 2 is misclassified).
    assert at["top1_loc"] == pytest.approx(40.0)
    assert found.taus.shape == (100,)
    assert "pxap" not in m


def test_images_without_boxes_count_for_top1_only_and_masks_give_pxap():
    found = run(extra_unboxed=True, with_masks=True, num_examples=4)
    m = found.metrics
    assert m["num_images"] == 6 and m["num_localization_images"] == 5
    assert m["top1"] == pytest.approx(100 * 4 / 6)
    assert m["max_box_acc_v2"]["mean"] == pytest.approx(60.0)
    assert 0 < m["pxap"] <= 100
    assert found.examples["image"].shape == (4, SIZE, SIZE, 3)
    np.testing.assert_array_equal(found.examples["gt_boxes"][0], [BOXES[0]])


def test_centre_gaussian_is_a_centred_disc():
    maps = evaluation.centre_gaussian_scoremaps(2, 64)
    assert maps.shape == (2, 64, 64)
    assert maps.min() == pytest.approx(0.0) and maps.max() == pytest.approx(1.0)
    np.testing.assert_allclose(maps[0], maps[0][::-1, ::-1])
    np.testing.assert_allclose(maps[0], maps[0].T)
    for tau in (0.2, 0.5, 0.8):
        inside = maps[0] > tau
        ys, xs = np.nonzero(inside)
        radius = (xs.max() - xs.min() + 1) / 2
        low = maps[0].min()
        # s = (g - low) / (1 - low), g = exp(-r^2 / (2 sigma^2)), sigma = 16.
        expected = 16 * np.sqrt(-2 * np.log(tau * (1 - low) + low))
        assert abs(radius - expected) <= 1.0


def test_centre_baseline_finds_centred_objects_and_misses_corner_ones():
    centred = [(8, 8, 23, 23)] * 2
    corner = [(0, 0, 4, 4)] * 2
    for boxes, expected in ((centred, 100.0), (corner, 0.0)):
        normalised = [[y0 / SIZE, x0 / SIZE, y1 / SIZE, x1 / SIZE] for x0, y0, x1, y1 in boxes]
        data = [
            {
                "image": np.zeros((2, SIZE, SIZE, 3), np.float32),
                "label": np.zeros(2, np.int32),
                "boxes": np.array(normalised, np.float32)[:, None],
                "num_boxes": np.ones(2, np.int32),
            }
        ]
        found = evaluation.evaluate(
            lambda images, training=False: np.zeros((len(images), 3), np.float32),
            data,
            extractor=lambda images, classes: np.random.default_rng(1).uniform(
                size=(len(images), 8, 8)
            ),
            eval_size=SIZE,
            centre_baseline=True,
        )
        baseline = found.baseline["metrics"]
        assert baseline["max_box_acc"]["max_box_acc"]["70"] == pytest.approx(expected)


def test_tau_chosen_on_val_is_applied_to_test_in_the_report():
    val = run()
    test = run(centre_baseline=True)
    tau = evaluation.choose_tau(val)
    assert tau == pytest.approx(float(val.metrics["max_box_acc"]["best_tau"]["50"]))
    report = evaluation.report({"val": val, "test": test}, tau=tau, tau_split="val", step=7)
    assert report["tau"] == tau and report["tau_split"] == "val" and report["step"] == 7
    assert report["report_split"] == "test"
    summary = report["summary"]
    assert summary["gt_known_loc"] == pytest.approx(test.at_tau(tau)["gt_known_loc"])
    assert summary["top1_loc"] == pytest.approx(40.0)
    centre = test.baseline["metrics"]["max_box_acc_v2"]["mean"]
    assert summary["centre_baseline_max_box_acc_v2"] == pytest.approx(centre)
    assert summary["margin_over_centre_baseline"] == pytest.approx(60.0 - centre)
    assert "val" in report["splits"] and "centre_baseline" in report["splits"]["test"]


def test_a_split_without_boxes_says_so():
    data = [
        {
            "image": np.zeros((1, SIZE, SIZE, 3), np.float32),
            "label": np.zeros(1, np.int32),
            "boxes": np.zeros((1, 1, 4), np.float32),
            "num_boxes": np.zeros(1, np.int32),
        }
    ]
    with pytest.raises(ValueError, match="--tau_split"):
        evaluation.evaluate(
            lambda images, training=False: np.zeros((1, 2), np.float32),
            data,
            extractor=lambda images, classes: np.zeros((1, 4, 4)),
            eval_size=SIZE,
            split="val",
        )
