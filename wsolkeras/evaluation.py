"""Evaluate a WSOL model over a dataset split with the protocol's metrics.

For each batch of a ``wsolkeras.data`` split: logits -> top-1 classification;
the extractor's map for the ground-truth class (the protocol's GT-known
setting; for a correctly classified image it is also the predicted class's
map) -> :func:`wsolkeras.metrics.cam_to_scoremap` at the evaluation size ->
the evaluators:

- ``max_box_acc_v2``: ``BoxEvaluator`` at IoU 30/50/70, every contour
  (MaxBoxAccV2, the protocol's headline number);
- ``max_box_acc``: ``BoxEvaluator`` at IoU 50..90, the largest contour
  (MaxBoxAcc v1, RFGA's table, with mIoU);
- ``top1_loc``: Top-1 Loc = correct class AND IoU >= 0.5 (largest contour),
  from the same evaluator told which images were classified right;
- ``pxap`` with ``MaskEvaluator`` where the split has masks;
- optionally the centre baseline: the same evaluators on a centred isotropic
  Gaussian score map (the protocol's "center-gaussian" baseline; sweeping tau
  sweeps the size of a centred box).

The threshold tau is chosen on one split (:func:`choose_tau`: the best tau of
MaxBoxAcc at IoU 50, the GT-known Loc threshold) and applied to another with
:meth:`SplitEvaluation.at_tau` (Top-1 Loc and GT-known Loc).

Localization metrics are computed over the images that have boxes: on every
split, an image with no ground-truth box (``num_boxes == 0``, e.g. your own
photos where only a few are boxed) is left out of every localization metric
(MaxBoxAcc, MaxBoxAccV2, mIoU, Top-1 Loc, GT-known Loc, PxAP) instead of
counting as a miss; top-1 classification is over all images.
``num_localization_images`` says how many images the localization metrics
cover, ``num_images`` how many the classification covers. A split with no
box at all is an error, or, with ``require_boxes=False``, a classification-only
evaluation (``classification_only``: top-1 alone; :func:`choose_tau` then
returns its ``default``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

V2_IOUS = (30, 50, 70)
TABLE_IOUS = (50, 60, 70, 80, 90)
LOC_IOU = 50
LOCALIZATION_RULE = (
    "localization metrics are computed over the images that have boxes (num_boxes > 0); "
    "top-1 classification over all images"
)


@dataclasses.dataclass
class SplitEvaluation:
    """What one split's evaluation found.

    ``metrics`` is JSON-ready (percent, floats); ``curves`` holds BoxAcc per
    tau for each evaluator (``{name: {iou: array}}``), at ``taus``.
    ``examples`` holds the first few images for summaries.
    """

    split: str
    num_images: int
    metrics: dict
    taus: np.ndarray
    curves: dict[str, dict[int, np.ndarray]]
    examples: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    baseline: dict | None = None

    @property
    def classification_only(self) -> bool:
        """True when no image of the split has a box: ``metrics`` holds top-1 alone."""
        return not self.curves

    def at_tau(self, tau: float) -> dict:
        """GT-known Loc and Top-1 Loc (percent, IoU >= 0.5) at ``tau`` chosen elsewhere."""
        if self.classification_only:
            raise ValueError(f"the {self.split} split has no box: no localization at a tau")
        index = tau_index(self.taus, tau)
        return {
            "tau": float(tau),
            "gt_known_loc": float(self.curves["max_box_acc"][LOC_IOU][index]),
            "top1_loc": float(self.curves["top1_loc"][LOC_IOU][index]),
            "max_box_acc_v2_at_tau": float(
                np.mean([self.curves["max_box_acc_v2"][iou][index] for iou in V2_IOUS])
            ),
        }


def tau_index(taus: np.ndarray, tau: float) -> int:
    """Index of ``tau`` in the threshold list (the nearest one)."""
    return int(np.argmin(np.abs(np.asarray(taus) - tau)))


def choose_tau(evaluation: SplitEvaluation, default: float | None = None) -> float:
    """The tau of the largest-contour MaxBoxAcc at IoU 50 (the GT-known Loc threshold).

    For a classification-only evaluation (no box on the split) tau cannot be
    chosen on data: ``default`` is returned, or a ``ValueError`` raised when
    there is none.
    """
    if evaluation.classification_only:
        if default is None:
            raise ValueError(f"the {evaluation.split} split has no box: tau cannot be chosen on it")
        return float(default)
    return float(evaluation.metrics["max_box_acc"]["best_tau"][str(LOC_IOU)])


def centre_gaussian_scoremaps(batch: int, size: int) -> np.ndarray:
    """``[batch, size, size]`` centred isotropic Gaussians, sigma = size / 4, in [0, 1].

    Thresholding at tau gives the disc of radius ``sigma * sqrt(-2 ln tau)``:
    a centred square box from 0.14 to 3 sigma, i.e. up to the whole image.
    """
    centre = (size - 1) / 2.0
    axis = np.arange(size, dtype=np.float64) - centre
    sigma = size / 4.0
    gaussian = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2.0 * sigma**2))
    gaussian = (gaussian - gaussian.min()) / (gaussian.max() - gaussian.min())
    return np.broadcast_to(gaussian, (batch, size, size))


def box_acc_curves(result: dict) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """``(taus, {iou: BoxAcc percent per tau})`` from a ``BoxEvaluator.result()``."""
    curves = {int(k): np.asarray(v, np.float64) for k, v in result["box_acc_curve"].items()}
    return np.asarray(result["taus"], np.float64), curves


_SCALAR_KEYS = ("max_box_acc", "best_tau", "mean", "miou", "miou_tau")


class _Evaluators:
    """The evaluators of one kind of score map (the model's, or the baseline's)."""

    def __init__(self, interval: float, with_masks: bool):
        from wsolkeras import metrics

        self.v2 = metrics.BoxEvaluator(
            iou_thresholds=V2_IOUS, cam_curve_interval=interval, multi_contour=True
        )
        # Largest contour at 50..90 (RFGA's table); fed whether each image's
        # class was right, so it also gives Top-1 Loc at IoU 50.
        self.table = metrics.BoxEvaluator(
            iou_thresholds=TABLE_IOUS, cam_curve_interval=interval, multi_contour=False
        )
        self.masks = metrics.MaskEvaluator(cam_curve_interval=interval) if with_masks else None
        self.num_images = 0

    def update(self, scoremaps, gt_boxes, correct, masks=None, ignore=None):
        self.v2.update(scoremaps, gt_boxes)
        self.table.update(scoremaps, gt_boxes, correct=np.asarray(correct, bool))
        if self.masks is not None and masks is not None:
            self.masks.update(scoremaps, masks, ignore)
        self.num_images += len(gt_boxes)

    def result(self) -> tuple[dict, np.ndarray, dict]:
        v2 = self.v2.result()
        table = self.table.result()
        taus, v2_curves = box_acc_curves(v2)
        _, table_curves = box_acc_curves(table)
        top1 = np.array(
            [self.table.loc_accuracy(tau, LOC_IOU)["top1_loc"] for tau in taus], np.float64
        )
        found = {
            "max_box_acc_v2": _jsonable({k: v2[k] for k in _SCALAR_KEYS}),
            "max_box_acc": _jsonable({k: table[k] for k in _SCALAR_KEYS}),
            "top1_loc_max": float(np.max(top1)),
        }
        if self.masks is not None:
            found["pxap"] = float(self.masks.result()["pxap"])
        curves = {
            "max_box_acc_v2": v2_curves,
            "max_box_acc": table_curves,
            "top1_loc": {LOC_IOU: top1},
        }
        return found, taus, curves


def _jsonable(result: dict) -> dict:
    out = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out[key] = {str(k): float(v) for k, v in value.items()}
        else:
            out[key] = float(value)
    return out


def evaluate(
    model: Callable,
    dataset: Iterable[dict],
    *,
    extractor: Callable,
    eval_size: int,
    split: str = "val",
    cam_curve_interval: float = 0.01,
    centre_baseline: bool = False,
    num_examples: int = 0,
    max_batches: int | None = None,
    require_boxes: bool = True,
) -> SplitEvaluation:
    """Evaluates ``model`` over ``dataset`` (``wsolkeras.data`` batches, not shuffled).

    Localization metrics are computed over the images that have boxes
    (``num_boxes > 0``); top-1 classification over all images.

    Args:
        model: returns logits ``[B, C]`` for normalised images.
        dataset: dicts with ``image``, ``label``, ``boxes``, ``num_boxes`` (and
            ``mask`` / ``ignore_mask`` where the split has them).
        extractor: ``extractor(images, classes)`` -> raw maps ``[B, h, w]``
            (a ``wsolkeras.extractors`` extractor).
        eval_size: the evaluation size S (the images' size).
        split: its name, for messages and the result.
        cam_curve_interval: the threshold step (0.01: 100 thresholds).
        centre_baseline: also evaluate the centre Gaussian baseline.
        num_examples: keep this many first images (image, score map, boxes).
        max_batches: stop after this many batches (None: the whole split).
        require_boxes: a split with no box at all raises ``ValueError``; False:
            it gives a classification-only evaluation (top-1 alone), with a
            logged warning.
    """
    from tfrecords import schema
    from wsolkeras import metrics

    model_ev = baseline_ev = None
    top1_correct = 0
    total = 0
    skipped = 0
    examples: dict[str, list] = {"image": [], "scoremap": [], "gt_boxes": [], "label": []}
    for index, batch in enumerate(dataset):
        if max_batches is not None and index >= max_batches:
            break
        images = batch["image"]
        labels = np.asarray(batch["label"]).astype(np.int64)
        logits = np.asarray(tf.cast(model(images, training=False), tf.float32))
        predicted = logits.argmax(axis=-1)
        correct = predicted == labels
        top1_correct += int(correct.sum())
        total += len(labels)

        num_boxes = np.asarray(batch["num_boxes"])
        has_box = num_boxes > 0
        skipped += int((~has_box).sum())
        if not has_box.any():
            continue
        keep = np.flatnonzero(has_box)
        raw = np.asarray(extractor(images, tf.constant(labels, tf.int32)), np.float64)
        scoremaps = metrics.cam_to_scoremap(raw[keep], eval_size)
        gt_boxes = schema.boxes_to_pixels(
            np.asarray(batch["boxes"])[keep], num_boxes[keep], eval_size
        )
        masks = np.asarray(batch["mask"])[keep] if "mask" in batch else None
        ignore = np.asarray(batch["ignore_mask"])[keep] if "ignore_mask" in batch else None
        if model_ev is None:
            model_ev = _Evaluators(cam_curve_interval, masks is not None)
            if centre_baseline:
                baseline_ev = _Evaluators(cam_curve_interval, masks is not None)
        model_ev.update(scoremaps, gt_boxes, correct[keep], masks, ignore)
        if baseline_ev is not None:
            centre = centre_gaussian_scoremaps(len(keep), eval_size)
            baseline_ev.update(centre, gt_boxes, correct[keep], masks, ignore)
        room = num_examples - len(examples["image"])
        if room > 0:
            examples["image"].extend(np.asarray(images)[keep][:room])
            examples["scoremap"].extend(scoremaps[:room])
            examples["gt_boxes"].extend(gt_boxes[:room])
            examples["label"].extend(labels[keep][:room])

    if model_ev is None:
        if require_boxes:
            raise ValueError(
                f"the {split} split has no image with a ground-truth box: localization cannot "
                "be evaluated on it (choose another split with --tau_split)"
            )
        log.warning(
            "%s: no image of the split has a ground-truth box: classification only "
            "(top-1 over its %d images, no localization metric)",
            split,
            total,
        )
        return SplitEvaluation(
            split=split,
            num_images=total,
            metrics={
                "top1": 100.0 * top1_correct / max(total, 1),
                "num_images": total,
                "num_localization_images": 0,
                "classification_only": True,
            },
            taus=np.zeros(0),
            curves={},
        )
    if skipped:
        log.warning(
            "%s: %d images without a box left out of the localization metrics", split, skipped
        )
    found, taus, curves = model_ev.result()
    found["top1"] = 100.0 * top1_correct / max(total, 1)
    found["num_images"] = total
    found["num_localization_images"] = model_ev.num_images
    found["classification_only"] = False
    baseline = None
    if baseline_ev is not None:
        baseline_metrics, _, baseline_curves = baseline_ev.result()
        baseline_metrics.pop("top1_loc_max", None)
        baseline = {"metrics": baseline_metrics, "curves": baseline_curves}
    return SplitEvaluation(
        split=split,
        num_images=total,
        metrics=found,
        taus=taus,
        curves=curves,
        examples={
            "image": np.asarray(examples["image"]),
            "scoremap": np.asarray(examples["scoremap"]),
            "gt_boxes": examples["gt_boxes"],
            "label": np.asarray(examples["label"]),
        },
        baseline=baseline,
    )


def headline(evaluation: SplitEvaluation) -> dict:
    """The few numbers a log line or a table row needs (percent)."""
    m = evaluation.metrics
    if evaluation.classification_only:
        return {"top1": round(m["top1"], 4), "localization": "none (no box on the split)"}
    out = {
        "top1": m["top1"],
        "max_box_acc_v2": m["max_box_acc_v2"]["mean"],
        "max_box_acc@50": m["max_box_acc"]["max_box_acc"][str(LOC_IOU)],
        "max_box_acc_mean_50_90": m["max_box_acc"]["mean"],
        "miou": m["max_box_acc"]["miou"],
    }
    if "pxap" in m:
        out["pxap"] = m["pxap"]
    return {
        k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in out.items()
    }


def report(
    evaluations: dict[str, SplitEvaluation],
    *,
    tau: float,
    tau_split: str,
    step: int,
    config: dict | None = None,
) -> dict:
    """The JSON ``metrics.json`` holds: every split's metrics, the chosen tau, the centre baseline.

    ``summary`` holds the headline figures of the report split (the test
    split when there is one besides ``tau_split``): its MaxBoxAccV2, the
    centre baseline's on the same split with the same evaluator, the margin,
    and Top-1 Loc / GT-known Loc at the tau chosen on ``tau_split``.

    A classification-only split (no box) reports top-1 alone, with a ``note``,
    and is listed in ``classification_only_splits``; when ``tau_split`` is one,
    ``tau`` was not chosen on data (``tau_source``: ``"default"``) and
    ``tau_rule`` says so.
    """
    splits = {}
    for name, found in evaluations.items():
        entry = dict(found.metrics)
        if found.classification_only:
            entry["note"] = "no image of this split has a ground-truth box: classification only"
            splits[name] = entry
            continue
        entry["at_tau"] = found.at_tau(tau)
        if found.baseline is not None:
            entry["centre_baseline"] = dict(found.baseline["metrics"])
        splits[name] = entry
    report_split = next((s for s in evaluations if s != tau_split), tau_split)
    chosen = splits[report_split]
    summary = {"split": report_split, "top1_cls": chosen["top1"]}
    if evaluations[report_split].classification_only:
        summary["classification_only"] = True
    else:
        summary.update(_localization_summary(chosen))
    tau_from_data = tau_split not in evaluations or not evaluations[tau_split].classification_only
    if tau_from_data:
        tau_rule = (
            f"the threshold of the best MaxBoxAcc (largest contour) at IoU {LOC_IOU / 100} "
            f"on the {tau_split!r} split"
        )
    else:
        tau_rule = (
            f"no image of the {tau_split!r} split has a ground-truth box, so tau could not be "
            f"chosen on data: it is the fixed default {float(tau)} (apps.train --default_tau)"
        )
    return {
        "step": int(step),
        "tau": float(tau),
        "tau_split": tau_split,
        "tau_source": "chosen" if tau_from_data else "default",
        "tau_rule": tau_rule,
        "localization_rule": LOCALIZATION_RULE,
        "classification_only_splits": [s for s, e in evaluations.items() if e.classification_only],
        "report_split": report_split,
        "summary": summary,
        "splits": splits,
        "config": {
            k: config[k]
            for k in ("backbone", "method", "extractor", "dataset", "image_size", "epochs")
            if config and k in config
        },
    }


def _localization_summary(chosen: dict) -> dict:
    summary = {
        "num_localization_images": chosen["num_localization_images"],
        "max_box_acc_v2": chosen["max_box_acc_v2"]["mean"],
        "max_box_acc_mean_50_90": chosen["max_box_acc"]["mean"],
        "miou": chosen["max_box_acc"]["miou"],
        "gt_known_loc": chosen["at_tau"]["gt_known_loc"],
        "top1_loc": chosen["at_tau"]["top1_loc"],
    }
    if "pxap" in chosen:
        summary["pxap"] = chosen["pxap"]
    if "centre_baseline" in chosen:
        centre = chosen["centre_baseline"]["max_box_acc_v2"]["mean"]
        summary["centre_baseline_max_box_acc_v2"] = centre
        summary["margin_over_centre_baseline"] = summary["max_box_acc_v2"] - centre
    return summary
