"""The Evaluator component: a trained run or an exported SavedModel, evaluated on a split.

The threshold tau is chosen on the tau split (the validation split) and
the requested split is reported at it, with ``wsolkeras.evaluation`` (the
one implementation of the protocol's metrics over a data set, which the train
app uses too): MaxBoxAccV2, MaxBoxAcc at IoU 0.5 to 0.9 with mIoU, Top-1 Loc,
GT-known Loc, top-1 classification and PxAP where the split has masks.

Sources (:class:`Source`):

- :func:`from_run`: a train app's ``--model_dir`` with any extractor;
- :func:`from_saved_model`: a SavedModel written by ``wsolkeras.export``, through
  its ``localize_class`` signature (logits, and the exported extractor's raw
  maps for the ground-truth class, as the protocol evaluates).

:func:`write_outputs` writes ``metrics.json``, TensorBoard events and the
BoxAcc-against-tau plots.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator

import tensorflow as tf

from wsolkeras import atomic, evaluation

DEFAULT_TAU = 0.5
"""apps.train's --default_tau default, for runs whose config.json predates the flag."""

log = logging.getLogger(__name__)

PLOTS = {
    "max_box_acc": ("box_acc_vs_tau.png", "BoxAcc, largest box (MaxBoxAcc)"),
    "max_box_acc_v2": ("box_acc_v2_vs_tau.png", "BoxAcc, all boxes (MaxBoxAccV2)"),
}


@dataclasses.dataclass
class Source:
    """What is evaluated, and how the data must be prepared for it.

    ``model(images, training=False)`` gives logits and ``extractor(images,
    classes)`` raw maps, for ``images`` normalised by ``normalization`` at
    ``image_size``.
    """

    kind: str
    path: str
    model: Callable
    extractor: Callable
    extractor_name: str
    normalization: str
    image_size: int
    step: int
    config: dict


def from_run(model_dir: str, extractor: str | None = None) -> Source:
    """A train run (``--model_dir``) with ``extractor`` (default: the run's)."""
    from wsolkeras import extractors, runs

    run = runs.load_run(model_dir)
    name = extractor or run.extractor
    try:
        extract = extractors.get(name, run.model)
    except ValueError as error:
        raise ValueError(f"--extractor={name}: {error}") from None
    config = dict(run.config)
    config["extractor"] = name
    return Source(
        kind="model_dir",
        path=model_dir,
        model=run.model,
        extractor=extract,
        extractor_name=name,
        normalization=run.normalization,
        image_size=run.image_size,
        step=run.step,
        config=config,
    )


class _SavedModelLogits:
    """``model(images)`` -> logits through ``localize_class`` (class 0's map is not used)."""

    def __init__(self, exported):
        self.exported = exported

    def __call__(self, images, training=False):
        classes = tf.zeros([tf.shape(images)[0]], tf.int32)
        return self.exported.for_classes(images, classes)["logits"]


class _SavedModelMaps:
    def __init__(self, exported):
        self.exported = exported

    def __call__(self, images, classes=None):
        return self.exported.for_classes(images, classes)["raw_maps"]


def from_saved_model(path: str) -> Source:
    """An exported SavedModel (a version directory, or its model directory: the newest)."""
    from wsolkeras import serving

    exported = serving.ExportedModel(path)
    if serving.SIGNATURE_CLASS not in exported.loaded.signatures:
        raise ValueError(
            f"{exported.path} has no {serving.SIGNATURE_CLASS!r} signature (an older export): "
            "export the run again with python -m apps.export, or evaluate its --model_dir"
        )
    info = exported.info
    return Source(
        kind="saved_model",
        path=exported.path,
        model=_SavedModelLogits(exported),
        extractor=_SavedModelMaps(exported),
        extractor_name=exported.extractor or "exported",
        # The signature normalises in its graph: the data stays in [0, 255].
        normalization="raw",
        image_size=exported.image_size,
        step=int(info.get("step", exported.version or 0)),
        config={**info, "extractor": exported.extractor},
    )


def progress(iterable: Iterable, total: int, description: str, enabled: bool) -> Iterator:
    """``iterable`` with a progress bar on stderr (tqdm) when ``enabled``."""
    if not enabled:
        yield from iterable
        return
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with tensorflow-datasets
        yield from iterable
        return
    with tqdm(
        total=total, desc=description, unit="batch", file=sys.stderr, dynamic_ncols=True
    ) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def evaluate_split(
    source: Source,
    data_dir: str,
    split: str,
    *,
    batch_size: int,
    cam_curve_interval: float = 0.01,
    centre_baseline: bool = True,
    num_examples: int = 0,
    show_progress: bool = False,
) -> evaluation.SplitEvaluation:
    """One split of a converted data set through :func:`wsolkeras.evaluation.evaluate`."""
    from wsolkeras import data

    info = data.read_info(data_dir)
    dataset = data.make_dataset(
        data_dir,
        split,
        training=False,
        batch_size=batch_size,
        crop_size=source.image_size,
        normalization=source.normalization,
    )
    batches = math.ceil(info.split_sizes[split] / batch_size)
    return evaluation.evaluate(
        source.model,
        progress(dataset, batches, split, show_progress),
        extractor=source.extractor,
        eval_size=source.image_size,
        split=split,
        cam_curve_interval=cam_curve_interval,
        centre_baseline=centre_baseline,
        num_examples=num_examples,
        require_boxes=False,
    )


def resolve_splits(data_dir: str, split: str, tau_split: str) -> tuple[str, str]:
    """``(split, tau_split)`` checked against the data set; ``ValueError`` naming the flag."""
    from wsolkeras import data, training

    manifest = data.read_manifest(data_dir)
    training.split_size(manifest, split, "--split")
    return split, training.resolve_tau_split(manifest, tau_split, split)


def evaluate(
    source: Source,
    data_dir: str,
    split: str,
    *,
    tau_split: str = "val",
    batch_size: int = 64,
    cam_curve_interval: float = 0.01,
    centre_baseline: bool = True,
    num_examples: int = 0,
    show_progress: bool = False,
) -> tuple[dict, dict[str, evaluation.SplitEvaluation]]:
    """Chooses tau on ``tau_split``, reports ``split`` at it: ``(metrics.json dict, evaluations)``.

    The dict is :func:`wsolkeras.evaluation.report`'s (what the train app
    writes) plus ``evaluation``: what was evaluated on what.
    """
    split, tau_split = resolve_splits(data_dir, split, tau_split)
    kwargs = dict(
        batch_size=batch_size,
        cam_curve_interval=cam_curve_interval,
        centre_baseline=centre_baseline,
        num_examples=num_examples,
        show_progress=show_progress,
    )
    evaluations = {tau_split: evaluate_split(source, data_dir, tau_split, **kwargs)}
    # As the train app: a tau split with no box falls back to the run's --default_tau.
    tau = evaluation.choose_tau(
        evaluations[tau_split], default=source.config.get("default_tau", DEFAULT_TAU)
    )
    if split != tau_split:
        evaluations[split] = evaluate_split(source, data_dir, split, **kwargs)
    found = evaluation.report(
        evaluations, tau=tau, tau_split=tau_split, step=source.step, config=source.config
    )
    found["evaluation"] = {
        "source": source.kind,
        "path": os.path.abspath(source.path),
        "data_dir": os.path.abspath(data_dir),
        "split": split,
        "extractor": source.extractor_name,
        "batch_size": batch_size,
        "cam_curve_interval": cam_curve_interval,
    }
    return found, evaluations


def write_outputs(
    output_dir: str,
    found: dict,
    evaluations: dict[str, evaluation.SplitEvaluation],
    *,
    num_images: int = 0,
) -> dict[str, str]:
    """Writes ``metrics.json``, the plots and TensorBoard events; returns ``{what: path}``.

    - ``metrics.json``: ``found`` (atomically);
    - ``box_acc_vs_tau.png`` (IoU 0.5 to 0.9, largest box) and
      ``box_acc_v2_vs_tau.png`` (IoU 0.3/0.5/0.7, all boxes) for the report
      split, the chosen tau marked (none when that split has no box);
    - ``tensorboard/<split>/``: scalars, curves and example maps per split.
    """
    from wsolkeras import figures, summaries

    os.makedirs(output_dir, exist_ok=True)
    tau = float(found["tau"])
    step = int(found["step"])
    report = evaluations[found["report_split"]]
    written = {}
    # A classification-only split (no box) has no BoxAcc curve to plot.
    plots = {} if report.classification_only else PLOTS
    for key, (name, title) in plots.items():
        path = os.path.join(output_dir, name)
        png = figures.box_acc_plot(
            report.taus, report.curves[key], title=f"{report.split}: {title}", tau=tau
        )
        with atomic.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(png)
        written[key] = path
    writers = summaries.Writers(os.path.join(output_dir, "tensorboard"))
    try:
        for name, found_split in evaluations.items():
            summaries.write_evaluation(
                writers.get(name), step, found_split, tau=tau, max_images=num_images
            )
    finally:
        writers.close()
    written["tensorboard"] = os.path.join(output_dir, "tensorboard")
    path = os.path.join(output_dir, "metrics.json")
    atomic.write_json(path, found)
    written["metrics"] = path
    return written


def summary_lines(found: dict) -> list[str]:
    """The report split's headline figures, one per line, for the terminal."""
    summary = found["summary"]
    names = {
        "top1_cls": "top-1 classification",
        "max_box_acc_v2": "MaxBoxAccV2 (IoU 0.3/0.5/0.7)",
        "max_box_acc_mean_50_90": "MaxBoxAcc, mean of IoU 0.5..0.9",
        "miou": "mIoU",
        "gt_known_loc": "GT-known Loc (IoU 0.5, at tau)",
        "top1_loc": "Top-1 Loc (IoU 0.5, at tau)",
        "pxap": "PxAP",
        "centre_baseline_max_box_acc_v2": "centre baseline MaxBoxAccV2",
    }
    lines = [
        f"{found['report_split']} split, tau = {found['tau']:.2f} chosen on {found['tau_split']}"
    ]
    for key, label in names.items():
        if key in summary and summary[key] is not None:
            lines.append(f"  {label:<36} {summary[key]:8.3f}")
    report = found["splits"][found["report_split"]]
    if report.get("classification_only"):
        lines.append(f"  {report['note']}")
        return lines
    table = report["max_box_acc"]["max_box_acc"]
    lines.append(
        "  MaxBoxAcc at IoU "
        + "  ".join(f"{int(iou) / 100:.1f}: {value:.2f}" for iou, value in table.items())
    )
    return lines
