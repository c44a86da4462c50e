"""Box localisation metrics of the WSOL protocol: MaxBoxAcc, MaxBoxAccV2, mIoU, Top-1 Loc.

The numbers are those of the protocol's reference (clovaai/wsolevaluation,
WSOL_PROTOCOL.md section 1) for the same score maps and boxes; each map is
evaluated at all thresholds at once by a compiled sweep (see ``_boxes`` and
``_sweep``), and only per-threshold counts are kept, so memory does not grow
with the number of maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsolkeras.metrics._boxes import LevelIoU


def _check_interval(interval: float) -> float:
    interval = float(interval)
    if not 0.0 < interval < 1.0:
        raise ValueError(f"cam_curve_interval must be in (0, 1), got {interval}")
    return interval


def _as_maps(scoremaps) -> np.ndarray:
    """Score maps as C-contiguous float32/float64 ``[B, H, W]`` (no copy if they are)."""
    arr = np.asarray(scoremaps)
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"scoremaps must have shape [B, H, W] with H, W > 0, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"scoremaps must be real numbers, got dtype {arr.dtype}")
    # The reference evaluates float64 maps; float32 values are converted exactly
    # inside the sweep, other types here.
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_range(stats: np.ndarray, first: int) -> None:
    """Raises for a map outside [0, 1] that the protocol would not turn into zeros
    (``stats``: each map's min, max and whether it is all finite)."""
    lo, hi, finite = stats[:, 0], stats[:, 1], stats[:, 2] > 0
    bad = finite & (lo != hi) & ((lo < 0) | (hi > 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"scoremaps[{first + i}] has values in [{lo[i]}, {hi[i]}], outside [0, 1]; "
            "normalise raw maps with wsolkeras.metrics.cam_to_scoremap first"
        )


def _as_boxes(boxes, index: int) -> np.ndarray:
    arr = np.asarray(boxes)
    if arr.size == 0:
        return np.zeros((0, 4), np.int64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(
            f"gt_boxes[{index}] must have shape [N, 4] (x0, y0, x1, y1), got {arr.shape}"
        )
    kind = arr.dtype.kind
    if kind == "f":
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(
                f"gt_boxes[{index}] must be integer pixel coordinates at the evaluation size "
                "(tfrecords.schema.boxes_to_pixels converts normalised boxes)"
            )
    elif kind not in "iu":
        raise ValueError(f"gt_boxes[{index}] must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    for box in arr.tolist():  # a few boxes: plain Python is quicker than numpy here
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"gt_boxes[{index}] has a box with x1 < x0 or y1 < y0: {box}")
    return arr


class BoxEvaluator:
    """MaxBoxAcc (v1), MaxBoxAccV2, mIoU and Top-1 / GT-known Loc over score maps.

    Args:
      iou_thresholds: IoU thresholds delta in percent (ints). The protocol's
        MaxBoxAccV2 is ``(30, 50, 70)`` with ``multi_contour=True``; RFGA's table
        is ``(50, 60, 70, 80, 90)`` with ``multi_contour=False``.
      cam_curve_interval: step of the score-map thresholds tau in
        ``arange(0, 1, cam_curve_interval)`` (1.0 excluded).
      multi_contour: True keeps the box of every contour (MaxBoxAccV2); False
        keeps only the contour with the largest ``cv2.contourArea`` (MaxBoxAcc).
      chunk_size: maps are evaluated this many at a time; the working memory is
        about 65 kB per 224x224 map of a chunk (4 MB at 64) plus a few MB of
        scratch, whatever the number of maps.

    Protocol (WSOL_PROTOCOL.md section 1), per map and tau: ``q = uint8(s * 255)``,
    foreground ``q > int(tau * max(q))``, OpenCV's contours of it (8-connected
    components and their holes), each contour's box ``(x, y, min(x + w, W - 1),
    min(y + h, H - 1))`` from ``cv2.boundingRect`` (no contour: ``(0, 0, 0, 0)``),
    the image's IoU = best inclusive-pixel IoU over all (predicted, ground-truth)
    box pairs, BoxAcc(delta, tau) = % of images with IoU >= delta / 100.

    Defined behaviour for degenerate input (never a crash):

    * a map with NaN or infinite values, or a constant map, is evaluated as all
      zeros (what the protocol's normalisation turns it into): no contour at any
      tau, so its box is ``(0, 0, 0, 0)``;
    * ground-truth boxes partly or wholly outside the map are used as given: the
      IoU is plain arithmetic on inclusive coordinates, as in the reference;
    * an image with no ground-truth box has IoU 0 at every tau: it counts in the
      denominators and is never correct (the reference crashes on it).

    Shapes or counts that do not match raise ``ValueError`` naming them; so do
    map values outside [0, 1] (normalise raw maps with ``cam_to_scoremap``) and
    boxes with ``x1 < x0`` or ``y1 < y0``.
    """

    def __init__(
        self,
        iou_thresholds: Sequence[int] = (30, 50, 70),
        cam_curve_interval: float = 0.01,
        multi_contour: bool = True,
        chunk_size: int = 64,
    ):
        thresholds = tuple(iou_thresholds)
        if not thresholds:
            raise ValueError("iou_thresholds must not be empty")
        for t in thresholds:
            if isinstance(t, bool) or not isinstance(t, int | np.integer) or not 0 <= t <= 100:
                raise ValueError(f"iou_thresholds must be ints in [0, 100] (percent), got {t!r}")
        if len(set(thresholds)) != len(thresholds):
            raise ValueError(f"iou_thresholds has duplicates: {thresholds}")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.iou_thresholds = tuple(int(t) for t in thresholds)
        self.cam_curve_interval = _check_interval(cam_curve_interval)
        self.multi_contour = bool(multi_contour)
        self.chunk_size = int(chunk_size)
        # The reference's threshold list: list(np.arange(0, 1, cam_curve_interval)).
        self.taus = np.arange(0, 1, self.cam_curve_interval)
        self._ious = LevelIoU(self.taus, self.multi_contour)
        self.reset()

    def reset(self) -> None:
        """Forgets every map seen so far."""
        ntau = self.taus.size
        self.count = 0
        self._num_correct = {t: np.zeros(ntau, np.int64) for t in self.iou_thresholds}
        self._num_top1 = {t: np.zeros(ntau, np.int64) for t in self.iou_thresholds}
        self._iou_sum = np.zeros(ntau, np.float64)
        self._num_classified = 0
        self._with_class: bool | None = None

    def update(
        self,
        scoremaps: np.ndarray,
        gt_boxes: Sequence[np.ndarray],
        correct: np.ndarray | Sequence[bool] | None = None,
    ) -> None:
        """Adds a batch.

        Args:
          scoremaps: ``[B, H, W]`` floats in [0, 1] at the evaluation resolution.
          gt_boxes: B arrays ``[N_i, 4]`` of inclusive pixel boxes ``(x0, y0, x1,
            y1)`` at that resolution (``N_i`` may be 0).
          correct: optional B booleans, whether the predicted class was right
            (for Top-1 Loc). Give it for every batch or for none.

        A batch with bad input raises ``ValueError`` and adds nothing.
        """
        maps = _as_maps(scoremaps)
        bsz = maps.shape[0]
        if len(gt_boxes) != bsz:
            raise ValueError(
                f"gt_boxes has {len(gt_boxes)} entries for {bsz} score maps "
                f"(scoremaps shape {maps.shape})"
            )
        boxes = [_as_boxes(b, i) for i, b in enumerate(gt_boxes)]
        flags = None
        if correct is not None:
            flags = np.asarray(correct)
            if flags.shape != (bsz,):
                raise ValueError(
                    f"correct must have shape ({bsz},) for scoremaps {maps.shape}, "
                    f"got {flags.shape}"
                )
            if flags.dtype != bool and not np.isin(flags, (0, 1)).all():
                raise ValueError("correct must hold booleans (predicted class right or not)")
            flags = flags.astype(bool)
        if self._with_class is not None and self._with_class != (flags is not None):
            raise ValueError(
                "correct was given for some batches and not for others; give it for all "
                "batches (Top-1 Loc) or for none"
            )
        # counts of this batch, added to the totals once every map has passed
        ntau = self.taus.size
        correct_counts = {t: np.zeros(ntau, np.int64) for t in self.iou_thresholds}
        top1_counts = {t: np.zeros(ntau, np.int64) for t in self.iou_thresholds}
        iou_sum = self._iou_sum.copy()
        for start in range(0, bsz, self.chunk_size):
            stop = min(start + self.chunk_size, bsz)
            ious, stats = self._ious(maps[start:stop], boxes[start:stop])
            _check_range(stats, start)
            for t in self.iou_thresholds:
                hit = ious >= t / 100  # the reference compares with _THRESHOLD / 100
                correct_counts[t] += hit.sum(axis=0)
                if flags is not None:
                    top1_counts[t] += (hit & flags[start:stop, None]).sum(axis=0)
            # image by image, as a running mean over images would (cumsum adds in order)
            iou_sum = np.cumsum(np.concatenate([iou_sum[None], ious]), axis=0)[-1]
        for t in self.iou_thresholds:
            self._num_correct[t] += correct_counts[t]
            self._num_top1[t] += top1_counts[t]
        self._iou_sum = iou_sum
        if flags is not None:
            self._num_classified += bsz
        self._with_class = flags is not None
        self.count += bsz

    def result(self) -> dict:
        """The metrics over every map seen since the last reset.

        Returns a dict with
          ``max_box_acc``: {IoU %: max over tau of BoxAcc, in %};
          ``best_tau``: {IoU %: the tau reaching it (smallest on ties)};
          ``mean``: mean of ``max_box_acc`` over the IoU thresholds (MaxBoxAccV2
          with the defaults);
          ``miou``, ``miou_tau``: max over tau of the mean image IoU, and its tau
          (smallest on ties);
          ``box_acc_curve``: {IoU %: BoxAcc (%) at every tau}; ``miou_curve``: mean
          IoU at every tau; ``taus``: the thresholds; ``count``: number of maps.
        """
        if self.count == 0:
            raise ValueError("BoxEvaluator.result() called before any update()")
        curves = {t: self._num_correct[t] * 100.0 / float(self.count) for t in self.iou_thresholds}
        max_box_acc = {t: float(c.max()) for t, c in curves.items()}
        best_tau = {t: float(self.taus[int(np.argmax(c))]) for t, c in curves.items()}
        miou_curve = self._iou_sum / self.count
        k = int(np.argmax(miou_curve))
        return {
            "max_box_acc": max_box_acc,
            "best_tau": best_tau,
            "mean": float(np.average([max_box_acc[t] for t in self.iou_thresholds])),
            "miou": float(miou_curve[k]),
            "miou_tau": float(self.taus[k]),
            "box_acc_curve": curves,
            "miou_curve": miou_curve,
            "taus": self.taus.copy(),
            "count": self.count,
        }

    def loc_accuracy(self, tau: float, iou: int = 50) -> dict:
        """GT-known Loc and Top-1 Loc (in %) at a fixed tau of the grid.

        The protocol chooses tau on the validation split (e.g. ``best_tau[50]`` of
        another evaluator) and reports on test at that tau. ``top1_loc`` (correct
        class and IoU >= iou) is None unless ``correct`` was given to ``update``.
        """
        if self.count == 0:
            raise ValueError("BoxEvaluator.loc_accuracy() called before any update()")
        if iou not in self.iou_thresholds:
            raise ValueError(f"iou={iou!r} is not one of iou_thresholds {self.iou_thresholds}")
        where = np.flatnonzero(np.abs(self.taus - float(tau)) < 1e-9)
        if where.size == 0:
            raise ValueError(
                f"tau={tau!r} is not on the threshold grid arange(0, 1, "
                f"{self.cam_curve_interval}); use one of result()['taus']"
            )
        k = int(where[0])
        top1 = None
        if self._with_class:
            top1 = float(self._num_top1[iou][k] * 100.0 / float(self._num_classified))
        return {
            "tau": float(self.taus[k]),
            "iou": iou,
            "gt_known_loc": float(self._num_correct[iou][k] * 100.0 / float(self.count)),
            "top1_loc": top1,
        }
