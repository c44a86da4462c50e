"""The protocol's per-threshold box IoU for a batch of quantised score maps.

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

* ``k = int(tau * max(q))`` takes at most ``max(q)`` values; the foreground
  ``q > k`` only depends on which distinct cut is used, so the image is
  re-coded as ``c`` = number of distinct cuts below ``q`` (foreground at the
  j-th cut = ``c >= j``).
* ``_forest.components`` gives, for every cut level, every 8-connected
  component of ``c >= l`` (its pixel box and, for MaxBoxAcc, twice the
  bit-quad area of its pixels) and, run on the reversed image with
  4-connectivity, every background component with the level at which it
  reaches the border: the holes. A contour's ``boundingRect`` is its
  component's pixel box (outer contour) or its hole's box grown by one pixel
  (the hole border runs on the foreground pixels around the hole).
* ``cv2.contourArea`` of an outer contour equals the bit-quad area of the
  component with its holes filled (cells with 4 corners inside count 1, with 3
  corners 1/2; checked against OpenCV in the tests). Filling holes only adds
  area, at most the number of cells inside the holes' boxes, and hole contours
  never exceed their parent (which OpenCV lists first). So the largest
  component is known exactly when its unfilled area beats every other
  component's unfilled area plus the cells of the holes that can lie inside
  it. Where that does not settle it (about one cut in 200 on CAM-like maps),
  that one cut is evaluated with OpenCV exactly as the protocol does.
"""

from __future__ import annotations

import cv2
import numpy as np

from wsolkeras.metrics import _forest

_NO_BOX = np.zeros((1, 4), np.int64)


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Inclusive-pixel IoU of boxes ``pred[..., 4]`` and ``gt[..., 4]`` (broadcast).

    Boxes are ``(x0, y0, x1, y1)`` with ``x1``, ``y1`` the last pixel inside, so a
    box's area is ``(x1 - x0 + 1) * (y1 - y0 + 1)`` as in the protocol.
    """
    iw = np.minimum(pred[..., 2], gt[..., 2]) - np.maximum(pred[..., 0], gt[..., 0]) + 1
    ih = np.minimum(pred[..., 3], gt[..., 3]) - np.maximum(pred[..., 1], gt[..., 1]) + 1
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_p = (pred[..., 2] - pred[..., 0] + 1) * (pred[..., 3] - pred[..., 1] + 1)
    area_g = (gt[..., 2] - gt[..., 0] + 1) * (gt[..., 3] - gt[..., 1] + 1)
    union = area_p + area_g - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class _CutTable:
    """Per maximum value m of a map: the distinct cuts, the re-coding LUT, tau -> level."""

    def __init__(self, taus: np.ndarray):
        self.taus = taus
        self._cache: dict[int, tuple[np.ndarray, int, np.ndarray, np.ndarray]] = {}

    def __call__(self, m: int):
        if m not in self._cache:
            # The reference computes int(tau * np.max(q)): a float64 product, truncated.
            k = (self.taus * np.float64(m)).astype(np.int64)
            cuts = np.unique(k)
            lut = np.searchsorted(cuts, np.arange(256), side="left").astype(np.uint8)
            level = np.searchsorted(cuts, k) + 1
            self._cache[m] = (cuts, len(cuts), lut, level)
        return self._cache[m]


class LevelIoU:
    """Best IoU per (map, tau) for one threshold grid and contour mode."""

    def __init__(self, taus: np.ndarray, multi_contour: bool):
        self.taus = np.asarray(taus, np.float64)
        self.multi_contour = multi_contour
        self.cuts = _CutTable(self.taus)
        self.fallback_cuts = 0  # cuts evaluated with OpenCV (ambiguous largest contour)

    def __call__(self, q: np.ndarray, gt: list[np.ndarray]) -> np.ndarray:
        """IoU ``[B, T]`` for uint8 maps ``q [B, H, W]`` and per-map gt boxes ``[n_i, 4]``."""
        bsz, hh, ww = q.shape
        ntau = self.taus.size
        maxima = q.reshape(bsz, -1).max(axis=1)
        tables = [self.cuts(int(m)) for m in maxima]
        nlev = np.array([t[1] for t in tables])
        lmax = int(nlev.max())
        # Canvas: the image padded to even size with zeros (never on).
        hc, wc = hh + hh % 2, ww + ww % 2
        c_can = np.zeros((bsz, hc, wc), np.uint8)
        for i, (_, _, lut, _) in enumerate(tables):
            c_can[i, :hh, :ww] = cv2.LUT(q[i], lut)
        fg = _forest.components(c_can, 8, lmax, area=not self.multi_contour)
        fg_img = fg.image
        fx0, fy0, fx1, fy1 = fg.x0, fg.y0, fg.x1, fg.y1
        holes = self._holes(c_can, nlev, lmax, hh, ww)

        # iou_lev[i, l]: best IoU at level l (1-based); -1 = no contour at that level
        iou_lev = np.full((bsz, lmax + 1), -1.0)
        gt_img, gt_box = _flatten_gt(gt)
        comp_box = np.stack(
            [fx0, fy0, np.minimum(fx1 + 1, ww - 1), np.minimum(fy1 + 1, hh - 1)], axis=1
        )
        if self.multi_contour:
            hi, hl, hx0, hy0, hx1, hy1 = holes
            hole_box = np.stack(
                [hx0 - 1, hy0 - 1, np.minimum(hx1 + 2, ww - 1), np.minimum(hy1 + 2, hh - 1)],
                axis=1,
            )
            img = np.concatenate([fg_img, hi])
            lev = np.concatenate([fg.level, hl])
            boxes = np.concatenate([comp_box, hole_box])
            _scatter_best(iou_lev, img, lev, boxes, gt_img, gt_box)
        else:
            chosen, ambiguous = _largest(fg_img, fg.level, fx0, fy0, fx1, fy1, fg.area2, holes)
            _scatter_best(
                iou_lev, fg_img[chosen], fg.level[chosen], comp_box[chosen], gt_img, gt_box
            )
            for i, lev in ambiguous:
                box = _reference_largest_box(q[i], tables[i][0][lev - 1])
                iou_lev[i, lev] = _best_iou(box[None], gt[i])
                self.fallback_cuts += 1

        empty = iou_lev < 0
        empty[:, 0] = False
        empty &= np.arange(lmax + 1)[None, :] <= nlev[:, None]
        if empty.any():
            for i in np.unique(np.nonzero(empty)[0]):
                iou_lev[i, empty[i]] = _best_iou(_NO_BOX, gt[i])
        out = np.empty((bsz, ntau))
        for i, t in enumerate(tables):
            out[i] = iou_lev[i, t[3]]
        return out

    def _holes(self, c_can, nlev, lmax, hh, ww):
        """Holes as (image, level, x0, y0, x1, y1) pixel boxes: 4-connected components
        of the background ``c < l`` that contain no image-border pixel."""
        # background at level l  <=>  d = L - c >= L + 1 - l
        d = np.zeros_like(c_can)
        d[:, :hh, :ww] = nlev[:, None, None].astype(np.uint8) - c_can[:, :hh, :ww]
        brd = np.zeros(d.shape[1:], bool)
        brd[[0, hh - 1], :ww] = True
        brd[:hh, [0, ww - 1]] = True
        bg = _forest.components(d, 4, lmax, border=brd)
        keep = bg.border < bg.level  # never reaches the border at that level
        img = bg.image[keep]
        return (
            img,
            nlev[img] + 1 - bg.level[keep],
            bg.x0[keep],
            bg.y0[keep],
            bg.x1[keep],
            bg.y1[keep],
        )


def _flatten_gt(gt: list[np.ndarray]):
    counts = np.array([len(g) for g in gt])
    img = np.repeat(np.arange(len(gt)), counts)
    boxes = np.concatenate([np.asarray(g, np.int64).reshape(-1, 4) for g in gt])
    return img, boxes


def _best_iou(boxes: np.ndarray, gt: np.ndarray) -> float:
    if len(gt) == 0:
        return 0.0
    return float(box_iou(boxes[:, None, :], np.asarray(gt, np.int64)[None, :, :]).max())


def _scatter_best(iou_lev, img, lev, boxes, gt_img, gt_box):
    """iou_lev[img, lev] = max(iou_lev, best IoU of each box against its image's gt)."""
    if img.size == 0 or gt_img.size == 0:
        np.maximum.at(iou_lev, (img, lev), 0.0)
        return
    # pair every box with every gt box of the same image
    order = np.argsort(gt_img, kind="stable")
    gt_img, gt_box = gt_img[order], gt_box[order]
    nimg = iou_lev.shape[0]
    first = np.searchsorted(gt_img, np.arange(nimg))
    count = np.searchsorted(gt_img, np.arange(nimg), side="right") - first
    n = count[img]
    rep = np.repeat(np.arange(img.size), n)
    offs = np.arange(rep.size) - np.repeat(np.cumsum(n) - n, n)
    g = gt_box[first[img][rep] + offs]
    ious = box_iou(boxes[rep], g)
    np.maximum.at(iou_lev, (img[rep], lev[rep]), ious)
    none = n == 0
    if none.any():
        np.maximum.at(iou_lev, (img[none], lev[none]), 0.0)


def _largest(img, lev, x0, y0, x1, y1, area2, holes):
    """Index of the largest-area component per (image, level) where it is certain,
    and the (image, level) pairs where it is not."""
    n = img.size
    if n == 0:
        return np.zeros(0, np.int64), []
    key = img.astype(np.int64) * 1024 + lev
    # Upper bound on the area that filling holes adds to each component (x2): all
    # cells inside the boxes of the holes that lie strictly inside its box.
    extra = np.zeros(n, np.int64)
    hi, hl, hx0, hy0, hx1, hy1 = holes
    if hi.size:
        hkey = hi.astype(np.int64) * 1024 + hl
        order = np.argsort(key, kind="stable")
        skey = key[order]
        lo = np.searchsorted(skey, hkey, side="left")
        up = np.searchsorted(skey, hkey, side="right")
        cnt = up - lo
        hrep = np.repeat(np.arange(hi.size), cnt)
        crow = order[
            np.repeat(lo, cnt) + (np.arange(hrep.size) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        ]
        inside = (
            (x0[crow] < hx0[hrep])
            & (y0[crow] < hy0[hrep])
            & (x1[crow] > hx1[hrep])
            & (y1[crow] > hy1[hrep])
        )
        cells = 2 * (hx1 - hx0 + 2) * (hy1 - hy0 + 2)
        np.add.at(extra, crow[inside], cells[hrep[inside]])
    # best by unfilled area; ambiguous if any other component could reach it
    order = np.lexsort((area2, key))
    skey = key[order]
    last = np.flatnonzero(np.r_[skey[1:] != skey[:-1], True])
    best = order[last]
    group_of = np.searchsorted(skey[last], key)  # group index of every component
    upper = area2 + extra
    upper_others = np.where(np.arange(n) == best[group_of], -1, upper)
    rival = np.full(last.size, -1, np.int64)
    np.maximum.at(rival, group_of, upper_others)
    sure = rival < area2[best]
    amb = [(int(img[b]), int(lev[b])) for b in best[~sure]]
    return best[sure], amb


def _reference_largest_box(q: np.ndarray, cut: int) -> np.ndarray:
    """The protocol's MaxBoxAcc box at one cut, with OpenCV (used where ambiguous)."""
    hh, ww = q.shape
    _, binary = cv2.threshold(q, int(cut), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.zeros(4, np.int64)
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    return np.array([x, y, min(x + w, ww - 1), min(y + h, hh - 1)], np.int64)
