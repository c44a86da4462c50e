"""Figures for people: BoxAcc against the threshold, and a heat map with its box over an image.

- :func:`box_acc_plot`: BoxAcc (percent) against tau, one line per IoU
  threshold (RFGA's Figure 4), with the chosen tau marked; PNG bytes
  (matplotlib's Agg backend, no display needed).
- :func:`overlay_prediction`: an image at its own size with the heat map
  (upsampled to it, jet colours) blended over it and the predicted box drawn,
  with an optional label; uint8 RGB.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

BOX_COLOUR = (230, 20, 20)


def box_acc_plot(
    taus: np.ndarray,
    curves: Mapping[int, np.ndarray],
    *,
    title: str = "",
    tau: float | None = None,
    dpi: int = 120,
) -> bytes:
    """PNG bytes of BoxAcc (percent) against tau, one line per IoU (percent keys)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4.0), dpi=dpi)
    axes = figure.add_subplot()
    for iou in sorted(curves):
        axes.plot(taus, curves[iou], label=f"IoU {iou / 100:.1f}", linewidth=1.5)
    if tau is not None:
        axes.axvline(tau, color="0.3", linestyle="--", linewidth=1, label=f"tau = {tau:.2f}")
    axes.set_xlabel("threshold tau")
    axes.set_ylabel("BoxAcc (%)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _jet(values: np.ndarray) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps["jet"](np.clip(values, 0.0, 1.0))[..., :3]


def overlay_prediction(
    image: np.ndarray,
    heatmap: np.ndarray,
    box: Sequence[int] | None = None,
    *,
    label: str | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """``image`` (uint8 RGB ``[H, W, 3]``) with ``heatmap`` (``[h, w]`` in [0, 1]) over it.

    The heat map is resized to ``H x W`` (bilinear); ``box`` is an inclusive
    pixel box ``(x0, y0, x1, y1)`` in the image's own coordinates (red);
    ``label`` is written in its top-left corner.
    """
    import cv2

    image = np.asarray(image)
    height, width = image.shape[:2]
    heat = cv2.resize(
        np.asarray(heatmap, np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )
    blended = (1.0 - alpha) * (image.astype(np.float64) / 255.0) + alpha * _jet(heat)
    canvas = np.ascontiguousarray(np.round(255.0 * np.clip(blended, 0.0, 1.0)).astype(np.uint8))
    line = max(1, min(height, width) // 100)
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), BOX_COLOUR, line)
    if label:
        thickness = 1 if min(height, width) < 300 else 2
        font = cv2.FONT_HERSHEY_SIMPLEX
        (unit_w, _), _ = cv2.getTextSize(label, font, 1.0, thickness)
        # Readable on large images, and never wider than the image.
        scale = min(max(0.3, min(height, width) / 500.0), 0.95 * width / max(unit_w, 1))
        (text_w, text_h), base = cv2.getTextSize(label, font, scale, thickness)
        cv2.rectangle(canvas, (0, 0), (text_w + 4, text_h + base + 4), (0, 0, 0), cv2.FILLED)
        cv2.putText(
            canvas,
            label,
            (2, text_h + 2),
            font,
            scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return canvas
