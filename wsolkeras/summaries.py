"""TensorBoard summaries of an evaluation: scalars, BoxAcc-vs-tau curves, maps with boxes.

:func:`write_evaluation` writes, for one :class:`wsolkeras.evaluation.SplitEvaluation`:

- scalars ``localization/...`` (top-1, MaxBoxAccV2 and its IoUs, MaxBoxAcc at
  50..90 and their mean, mIoU, PxAP, the best taus, Top-1 Loc / GT-known Loc
  at the chosen tau);
- ``curves/box_acc_vs_tau``: a matplotlib plot of BoxAcc against tau, one
  line per IoU, as an image;
- ``maps/examples``: a few images with the heat map over them, the
  ground-truth boxes (green) and the box predicted at tau (red).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

GT_COLOUR = (0, 220, 0)
PRED_COLOUR = (230, 20, 20)


def scalar_items(evaluation, at_tau: dict | None = None) -> dict[str, float]:
    """The flat ``{tag: value}`` scalars of an evaluation (percent, taus in [0, 1])."""
    m = evaluation.metrics
    items = {
        "localization/top1_cls": m["top1"],
        "localization/max_box_acc_v2": m["max_box_acc_v2"]["mean"],
        "localization/max_box_acc_mean_50_90": m["max_box_acc"]["mean"],
        "localization/miou": m["max_box_acc"]["miou"],
        "localization/top1_loc_max": m["top1_loc_max"],
    }
    for iou, value in m["max_box_acc_v2"]["max_box_acc"].items():
        items[f"localization/max_box_acc_v2_iou{iou}"] = value
        items[f"tau/max_box_acc_v2_iou{iou}"] = m["max_box_acc_v2"]["best_tau"][iou]
    for iou, value in m["max_box_acc"]["max_box_acc"].items():
        items[f"localization/max_box_acc_iou{iou}"] = value
        items[f"tau/max_box_acc_iou{iou}"] = m["max_box_acc"]["best_tau"][iou]
    if "pxap" in m:
        items["localization/pxap"] = m["pxap"]
    if at_tau:
        items["at_tau/tau"] = at_tau["tau"]
        items["at_tau/gt_known_loc"] = at_tau["gt_known_loc"]
        items["at_tau/top1_loc"] = at_tau["top1_loc"]
    return {k: float(v) for k, v in items.items()}


def curve_image(taus: np.ndarray, curves: dict[int, np.ndarray], title: str) -> np.ndarray:
    """A plot of BoxAcc (percent) against tau, one line per IoU, as uint8 ``[H, W, 3]``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.6), dpi=80)
    axes = figure.add_subplot()
    for iou in sorted(curves):
        axes.plot(taus, curves[iou], label=f"IoU {iou / 100:.1f}")
    axes.set_xlabel("threshold tau")
    axes.set_ylabel("BoxAcc (%)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return tf.io.decode_png(buffer.getvalue(), channels=3).numpy()


def _to_unit(image: np.ndarray) -> np.ndarray:
    """A normalised image back to [0, 1] for display (per-image min-max: any normalisation)."""
    image = np.asarray(image, np.float64)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def _jet(values: np.ndarray) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps["jet"](np.clip(values, 0.0, 1.0))[..., :3]


def draw_box(image: np.ndarray, box: Sequence[int], colour: Sequence[int], width: int = 1) -> None:
    """Draws the inclusive pixel box ``(x0, y0, x1, y1)`` into ``image``, in place."""
    height, width_px = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, x1 = np.clip([x0, x1], 0, width_px - 1)
    y0, y1 = np.clip([y0, y1], 0, height - 1)
    for t in range(width):
        image[min(y0 + t, y1), x0 : x1 + 1] = colour
        image[max(y1 - t, y0), x0 : x1 + 1] = colour
        image[y0 : y1 + 1, min(x0 + t, x1)] = colour
        image[y0 : y1 + 1, max(x1 - t, x0)] = colour


def overlay(
    images: np.ndarray,
    scoremaps: np.ndarray,
    gt_boxes: Sequence[np.ndarray],
    pred_boxes: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Images with their heat map blended over them and boxes drawn: uint8 ``[B, S, S, 3]``.

    ``gt_boxes``: per image ``[N, 4]`` inclusive pixel ``(x0, y0, x1, y1)``
    (green); ``pred_boxes``: ``[B, 4]`` in the same convention (red).
    """
    out = []
    for i, (image, scoremap) in enumerate(zip(images, scoremaps, strict=True)):
        blended = (1 - alpha) * _to_unit(image) + alpha * _jet(scoremap)
        canvas = np.round(255 * np.clip(blended, 0, 1)).astype(np.uint8)
        line = max(1, canvas.shape[0] // 96)
        for box in gt_boxes[i]:
            draw_box(canvas, box, GT_COLOUR, line)
        if pred_boxes is not None:
            draw_box(canvas, pred_boxes[i], PRED_COLOUR, line)
        out.append(canvas)
    return np.stack(out)


def predicted_pixel_boxes(scoremaps: np.ndarray, tau: float) -> np.ndarray:
    """The export's box at tau (``wsolkeras.export``: largest component) for score maps, pixels."""
    from wsolkeras import export

    mask = export.foreground(tf.constant(scoremaps, tf.float32), tau)
    return export.largest_component_boxes(mask).numpy()


def write_evaluation(
    writer: tf.summary.SummaryWriter,
    step: int,
    evaluation,
    *,
    tau: float | None = None,
    max_images: int = 8,
) -> None:
    """Writes one split's evaluation at ``step`` (scalars, curve images, example maps).

    A classification-only evaluation (no box on the split) writes top-1 alone.
    """
    if evaluation.classification_only:
        with writer.as_default(step=step):
            tf.summary.scalar("localization/top1_cls", float(evaluation.metrics["top1"]))
        writer.flush()
        return
    at_tau = evaluation.at_tau(tau) if tau is not None else None
    with writer.as_default(step=step):
        for tag, value in scalar_items(evaluation, at_tau).items():
            tf.summary.scalar(tag, value)
        if evaluation.baseline is not None:
            b = evaluation.baseline["metrics"]
            tf.summary.scalar("baseline/centre_max_box_acc_v2", b["max_box_acc_v2"]["mean"])
            tf.summary.scalar("baseline/centre_max_box_acc_mean_50_90", b["max_box_acc"]["mean"])
        for name, title in (
            ("max_box_acc_v2", "BoxAcc, all contours (MaxBoxAccV2)"),
            ("max_box_acc", "BoxAcc, largest contour (MaxBoxAcc)"),
        ):
            plot = curve_image(
                evaluation.taus, evaluation.curves[name], f"{evaluation.split}: {title}"
            )
            tf.summary.image(f"curves/{name}_vs_tau", plot[None], step=step)
        examples = evaluation.examples
        if max_images and len(examples.get("image", ())):
            chosen_tau = (
                tau
                if tau is not None
                else float(evaluation.metrics["max_box_acc"]["best_tau"]["50"])
            )
            count = min(max_images, len(examples["image"]))
            maps = examples["scoremap"][:count]
            images = overlay(
                examples["image"][:count],
                maps,
                examples["gt_boxes"][:count],
                predicted_pixel_boxes(maps, chosen_tau),
            )
            tf.summary.image("maps/examples", images, step=step, max_outputs=count)
    writer.flush()


class Writers:
    """One ``tf.summary`` writer per TensorBoard run under ``log_dir`` (``train``, ``eval_val``).

    A non-chief worker gets no-op writers, so only one process writes events.
    """

    def __init__(self, log_dir: str, chief: bool = True):
        self.log_dir = log_dir
        self.chief = chief
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def get(self, name: str) -> tf.summary.SummaryWriter:
        if name not in self._writers:
            self._writers[name] = (
                tf.summary.create_file_writer(f"{self.log_dir}/{name}")
                if self.chief
                else tf.summary.create_noop_writer()
            )
        return self._writers[name]

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class TrainSummaries(keras.callbacks.Callback):
    """Training scalars (loss parts, accuracy, learning rate) every ``every`` steps.

    The step is the optimizer's step count, so a resumed run continues the
    same curves (Keras' own TensorBoard callback restarts its count at each
    ``fit``).
    """

    def __init__(self, writer: tf.summary.SummaryWriter, every: int = 10):
        super().__init__()
        self.writer = writer
        self.every = max(1, int(every))

    def _write(self, logs, prefix):
        optimizer = self.model.optimizer
        step = int(optimizer.iterations.numpy())
        with self.writer.as_default(step=step):
            for key, value in (logs or {}).items():
                try:
                    tf.summary.scalar(f"{prefix}/{key}", float(value))
                except (TypeError, ValueError):
                    continue
            lr = optimizer.learning_rate
            tf.summary.scalar("train/learning_rate", float(keras.ops.convert_to_numpy(lr)))

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) % self.every == 0:
            self._write(logs, "train")

    def on_epoch_end(self, epoch, logs=None):
        self._write(logs, "epoch")
        self.writer.flush()
