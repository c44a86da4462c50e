"""The protocol's per-threshold box IoU for a batch of score maps.

For every map and every threshold tau of the grid this computes what the
protocol's reference computes with one OpenCV ``threshold`` + ``findContours``
per tau (WSOL_PROTOCOL.md section 1): the best IoU, over the predicted boxes at
that tau and the ground-truth boxes, where the predicted boxes are

* ``multi_contour=True`` (MaxBoxAccV2): the boxes of every contour, i.e. of
  every 8-connected foreground component and of every hole (4-connected
  background component not touching the image border);
* ``multi_contour=False`` (MaxBoxAcc): the box of the contour with the largest
  ``cv2.contourArea``, the first one in OpenCV's order on ties.

How, without one OpenCV call per tau:

* ``k = int(tau * max(q))`` takes at most ``max(q)`` distinct values; the
  compiled sweep (``_sweep.box_ious``) finds the components of every distinct
  cut at once and scores them.
* A contour's ``boundingRect`` is its component's pixel box (outer contour) or
  its hole's box grown by one pixel (the hole border runs on the foreground
  pixels around the hole; checked against OpenCV in the tests).
* ``cv2.contourArea`` of an outer contour equals the bit-quad area of the
  component with its holes filled (cells with 4 corners inside count 1, with 3
  corners 1/2; checked against OpenCV in the tests), and a hole's contour is
  smaller than its parent's, which OpenCV lists first. At cut k the filled
  components are the 8-connected components of the complement of the
  background that reaches the image border; raising each pixel to the first
  cut at which its background component reaches the border (``fill_holes``)
  gives one image whose components at every cut are those, so one more sweep
  over it, with areas, gives the largest contour's box at every cut. On exact
  ties of the largest area ``max`` keeps the contour OpenCV lists first, which
  among outer contours is the one its raster scan finds last: the component
  whose first pixel (in its top row) comes last. Ties whose components start on
  the same row go to OpenCV on the whole map.
"""

from __future__ import annotations

import cv2
import numpy as np

from wsolkeras.metrics import _sweep


class LevelIoU:
    """Best IoU per (map, tau) for one threshold grid and contour mode."""

    def __init__(self, taus: np.ndarray, multi_contour: bool):
        self.taus = np.asarray(taus, np.float64)
        self.multi_contour = multi_contour
        # The reference's cut int(tau * np.max(q)): a float64 product, truncated,
        # for every possible maximum m of a uint8 map.
        self.cut_table = (self.taus[None, :] * np.arange(256, dtype=np.float64)[:, None]).astype(
            np.int64
        )
        self.need_table = np.zeros((256, 256), bool)
        self.need_table[np.arange(256)[:, None], self.cut_table] = True
        self._workspaces: dict[tuple[int, int], _sweep.Workspace] = {}

    def __call__(self, maps: np.ndarray, gt: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """IoU ``[B, T]`` for C-contiguous float maps ``[B, H, W]`` and per-map gt
        boxes ``[n_i, 4]`` (int64), and each map's ``(min, max, all finite)``
        ``[B, 3]`` (maps that are constant or not finite are evaluated as zeros;
        the caller checks the others' range)."""
        bsz, hh, ww = maps.shape
        ws = self._workspaces.get((hh, ww))
        if ws is None or ws.batch.shape[0] < bsz:
            ws = self._workspaces[(hh, ww)] = _sweep.Workspace(hh, ww, bsz)
        gt_first = np.zeros(bsz + 1, np.int64)
        gt_first[1:] = np.cumsum([len(g) for g in gt])
        gt_all = np.concatenate([np.zeros((0, 4), np.int64)] + list(gt))
        iou_k = np.zeros((bsz, 256))
        amb = np.empty((bsz * 256, 2), np.int64)
        stats = np.empty((bsz, 4))
        q = ws.batch[:bsz]
        namb = _sweep.box_ious(
            maps,
            maps.view(np.int64 if maps.dtype == np.float64 else np.int32),
            gt_all,
            gt_first,
            self.need_table,
            self.multi_contour,
            iou_k,
            amb,
            stats,
            q,
            ws.fg,
            ws.bg,
            ws.labels,
            ws.r,
            ws.filled,
        )
        for i, cut in amb[:namb]:  # ties for the largest contour: OpenCV's order
            x0, y0, x1, y1 = _reference_largest_box(q[i], int(cut)).tolist()
            iou_k[i, cut] = _sweep.best_iou(x0, y0, x1, y1, gt[i], 0, len(gt[i]))
        qmax = stats[:, 3].astype(np.int64)
        return np.take_along_axis(iou_k, self.cut_table[qmax], axis=1), stats[:, :3]


def _reference_largest_box(q: np.ndarray, cut: int) -> np.ndarray:
    """The protocol's MaxBoxAcc box at one cut, with OpenCV (used where ambiguous)."""
    hh, ww = q.shape
    _, binary = cv2.threshold(q, cut, 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.zeros(4, np.int64)
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    return np.array([x, y, min(x + w, ww - 1), min(y + h, hh - 1)], np.int64)
