"""Pixel average precision (PxAP) of the WSOL protocol, for splits with masks.

WSOL_PROTOCOL.md section 1: the score pixels of the whole split are pooled into
histogram bins with edges ``[0, dt, ..., 1 - dt, 1, 2, 3]`` (``np.histogram``:
half-open bins, the last one closed), separately for ground-truth foreground
and background pixels (pixels of the ignore region are left out); precision and
recall are taken at descending cut-offs and PxAP = sum over cut-offs of
precision x recall gain where something is predicted positive, x 100. This is
not sklearn's average precision. Only two histograms are kept, so memory does
not grow with the number of maps.
"""

from __future__ import annotations

import numpy as np

from wsolkeras.metrics.scoremap import prepare_scoremaps


class MaskEvaluator:
    """PxAP over score maps and ground-truth masks.

    Args:
      cam_curve_interval: bin width dt of the score histogram (thresholds
        ``arange(0, 1, dt)``).

    Score maps follow the same rules as in ``BoxEvaluator``: NaN, infinite or
    constant maps count as all zeros; other values must lie in [0, 1].
    """

    def __init__(self, cam_curve_interval: float = 0.01):
        interval = float(cam_curve_interval)
        if not 0.0 < interval < 1.0:
            raise ValueError(f"cam_curve_interval must be in (0, 1), got {interval}")
        self.cam_curve_interval = interval
        self.thresholds = np.arange(0, 1, interval)
        # bins [0, dt), ..., [1 - dt, 1), [1, 2), [2, 3] as in the reference
        self.bin_edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self.reset()

    def reset(self) -> None:
        """Forgets every map seen so far."""
        nbins = self.bin_edges.size - 1
        self._true_hist = np.zeros(nbins, np.int64)
        self._false_hist = np.zeros(nbins, np.int64)
        self.count = 0

    def update(
        self,
        scoremaps: np.ndarray,
        gt_masks: np.ndarray,
        ignore_masks: np.ndarray | None = None,
    ) -> None:
        """Adds a batch.

        Args:
          scoremaps: ``[B, H, W]`` floats in [0, 1].
          gt_masks: ``[B, H, W]``, foreground where ``> 0.5`` (the union of the
            instance masks, resized nearest-neighbour to the evaluation size).
          ignore_masks: optional ``[B, H, W]``, ignored where ``> 0.5`` and not
            foreground.
        """
        maps = prepare_scoremaps(scoremaps)
        masks = np.asarray(gt_masks)
        if masks.shape != maps.shape:
            raise ValueError(
                f"gt_masks shape {masks.shape} does not match scoremaps shape {maps.shape}"
            )
        foreground = masks > 0.5
        counted = ~foreground
        if ignore_masks is not None:
            ignore = np.asarray(ignore_masks)
            if ignore.shape != maps.shape:
                raise ValueError(
                    f"ignore_masks shape {ignore.shape} does not match scoremaps shape {maps.shape}"
                )
            counted &= ~(ignore > 0.5)
        self._true_hist += np.histogram(maps[foreground], bins=self.bin_edges)[0]
        self._false_hist += np.histogram(maps[counted], bins=self.bin_edges)[0]
        self.count += maps.shape[0]

    def result(self) -> dict:
        """``{"pxap", "precision", "recall", "thresholds"}``.

        ``precision[i]`` and ``recall[i]`` are those of predicting foreground where
        the score is ``>= thresholds[i]`` (descending: 2, 1, 1 - dt, ..., 0);
        precision is NaN where nothing is predicted.

        Raises:
          ValueError: before any update, or when no foreground pixel was seen
            (PxAP is undefined; the reference raises too).
        """
        if self.count == 0:
            raise ValueError("MaskEvaluator.result() called before any update()")
        true_hist = self._true_hist.astype(np.float64)
        false_hist = self._false_hist.astype(np.float64)
        num_true = true_hist.sum()
        if num_true <= 0:
            raise ValueError(
                f"no ground-truth foreground pixel in the {self.count} masks seen: "
                "PxAP is undefined"
            )
        tp = true_hist[::-1].cumsum()
        fn = num_true - tp
        fp = false_hist[::-1].cumsum()
        predicted = (tp + fp) != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        pxap = (precision[1:] * np.diff(recall))[predicted[1:]].sum() * 100
        return {
            "pxap": float(pxap),
            "precision": precision,
            "recall": recall,
            "thresholds": self.bin_edges[:-1][::-1].copy(),
        }
