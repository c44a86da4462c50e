"""BoxEvaluator against hand-worked cases and a per-threshold OpenCV loop written here.

``_Straightforward`` below follows WSOL_PROTOCOL.md section 1 literally: for every
tau it thresholds the map with OpenCV, asks ``cv2.findContours`` for the
contours, keeps all of them or the one with the largest ``cv2.contourArea``,
and takes the best inclusive IoU against the ground truth. Every protocol rule
also has a small case below whose expected numbers are worked out by hand.
"""

import cv2
import numpy as np
import pytest

from wsolkeras.metrics import BoxEvaluator


def _iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union if union > 0 else 0.0


def _protocol_boxes(q, tau, multi_contour):
    """The boxes the protocol predicts on uint8 map q at one tau."""
    height, width = q.shape
    _, binary = cv2.threshold(q, int(tau * np.max(q)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return [(0, 0, 0, 0)]
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append((x, y, min(x + w, width - 1), min(y + h, height - 1)))
    return boxes


class _Straightforward:
    """The protocol's per-threshold loop (no shortcut), accumulating the same curves."""

    def __init__(self, iou_thresholds, interval, multi_contour):
        self.iou_thresholds = iou_thresholds
        self.taus = np.arange(0, 1, interval)
        self.multi_contour = multi_contour
        self.correct = {t: np.zeros(len(self.taus)) for t in iou_thresholds}
        self.iou_sum = np.zeros(len(self.taus))
        self.count = 0

    def image_ious(self, scoremap, gt):
        s = np.asarray(scoremap, np.float64)
        if not np.isfinite(s).all() or s.min() == s.max():
            s = np.zeros_like(s)
        q = (s * 255).astype(np.uint8)
        out = []
        for tau in self.taus:
            boxes = _protocol_boxes(q, tau, self.multi_contour)
            out.append(max((_iou(p, g) for p in boxes for g in gt), default=0.0))
        return np.array(out)

    def update(self, scoremaps, gt_boxes):
        for s, gt in zip(scoremaps, gt_boxes, strict=True):
            ious = self.image_ious(s, [tuple(int(v) for v in g) for g in gt])
            for t in self.iou_thresholds:
                self.correct[t] += ious >= t / 100
            self.iou_sum += ious
            self.count += 1

    def result(self):
        curves = {t: self.correct[t] * 100.0 / self.count for t in self.iou_thresholds}
        miou = self.iou_sum / self.count
        return curves, miou


def _ious_at_all_taus(scoremap, gt, multi_contour, interval=0.01):
    """The evaluator's IoU at every tau for one image (its mean IoU curve), checked
    against the per-threshold loop too."""
    ev = BoxEvaluator((50,), interval, multi_contour)
    ev.update(np.asarray(scoremap, np.float64)[None], [np.asarray(gt).reshape(-1, 4)])
    ious = ev.result()["miou_curve"]
    ref = _Straightforward((50,), interval, multi_contour).image_ious(scoremap, gt)
    np.testing.assert_allclose(ious, ref, rtol=0, atol=1e-12)
    return ious


def _level(values):
    """Score map whose quantised value q = uint8(s * 255) is exactly ``values``."""
    return (np.asarray(values, np.float64) + 0.5) / 255


# --- each protocol rule on a hand-worked case -----------------------------------------


def test_uint8_truncation_not_rounding():
    # s * 255 = [51.0, 153.0, 254.745] -> q = [51, 153, 254] (truncated; rounding would
    # give 255). At tau = 0.6: k = int(0.6 * 254) = 152, foreground q > 152 = pixels 1, 2,
    # box (1, 0, 2, 0) -> IoU 1. With rounding: k = int(0.6 * 255) = 153 and only pixel 2
    # would be on, box (2, 0, 2, 0), IoU 1/2.
    s = np.array([[0.2, 0.6, 0.999]])
    gt = [(1, 0, 2, 0)]
    for multi in (True, False):
        assert _ious_at_all_taus(s, gt, multi)[60] == 1.0


def test_cut_is_int_tau_times_max_and_foreground_is_strict():
    # q = [100, 101, 200]; tau = 0.5: k = int(0.5 * 200) = 100; q > 100 keeps pixels 1
    # and 2 (the pixel equal to k is background): box (1, 0, min(1 + 2, 2), 0) = (1, 0, 2, 0).
    s = _level([[100, 101, 200]])
    ious = _ious_at_all_taus(s, [(1, 0, 2, 0)], True)
    assert ious[50] == 1.0
    # tau = 0.51: k = int(0.51 * 200) = 102 -> only pixel 2: box (2, 0, 2, 0), IoU 1/2
    assert ious[51] == 0.5


def test_components_are_8_connected():
    # Two diagonal pixels form one contour: box (1, 1, 3, 3). Taken 4-connected they would
    # be two contours with boxes (1, 1, 2, 2) and (2, 2, 3, 3), best IoU 4/9.
    s = np.zeros((5, 5))
    s[1, 1] = s[2, 2] = 1.0
    for multi in (True, False):
        assert _ious_at_all_taus(s, [(1, 1, 3, 3)], multi)[0] == 1.0


def test_hole_borders_are_contours():
    # A 5x5 square with a one-pixel hole at (3, 3): two contours. Outer box
    # (1, 1, min(1 + 5, 6), 6) = (1, 1, 6, 6); the hole border runs through the 4
    # pixels around the hole: boundingRect (2, 2, 3, 3) -> box (2, 2, 5, 5).
    s = np.zeros((7, 7))
    s[1:6, 1:6] = 1.0
    s[3, 3] = 0.0
    gt = [(2, 2, 5, 5)]
    assert _ious_at_all_taus(s, gt, True)[0] == 1.0  # V2 keeps the hole's contour
    # V1 keeps the larger contour, the outer one: IoU((1,1,6,6), (2,2,5,5)) = 16 / 36
    assert _ious_at_all_taus(s, gt, False)[0] == pytest.approx(16 / 36, abs=1e-15)


def test_largest_contour_by_polygon_area_not_pixel_count():
    # A: a 1x10 line (10 pixels, polygon area 0); B: a 3x3 square (9 pixels, polygon
    # through the pixel centres 2 x 2 = area 4). MaxBoxAcc keeps B: box (5, 5, 8, 8).
    s = np.zeros((12, 12))
    s[1, 1:11] = 1.0
    s[5:8, 5:8] = 1.0
    assert _ious_at_all_taus(s, [(5, 5, 8, 8)], False)[0] == 1.0
    assert _ious_at_all_taus(s, [(1, 1, 11, 2)], False)[0] == 0.0


def test_largest_contour_area_counts_its_holes_until_they_open():
    # R: the border of the square (2..12, 2..12), one pixel wide, at level 200, except
    # pixel (7, 2) (the gap) at level 100; inside it an isolated pixel at 250. B: a
    # solid 7x7 square (16..22, 4..10) at 150. Everything else is 0.
    q = np.zeros((15, 25), np.int64)
    q[2, 2:13] = q[12, 2:13] = q[2:13, 2] = q[2:13, 12] = 200
    q[7, 2] = 100
    q[7, 7] = 250
    q[4:11, 16:23] = 150
    s = _level(q)
    gt_ring, gt_square = [(2, 2, 13, 13)], [(16, 4, 23, 11)]
    ring, square = (_ious_at_all_taus(s, gt, False) for gt in (gt_ring, gt_square))
    # tau 0.30: cut int(0.3 * 250) = 75 < 100, the ring is closed. Pixels: ring 40,
    # square 49; contour areas: ring 10 x 10 = 100 (its hole filled: the hole's own
    # contour has 98 and the pixel inside 0), square 6 x 6 = 36 -> the ring's box.
    assert ring[30] == 1.0 and square[30] == 0.0
    # tau 0.50: cut 125 opens the gap: the hole reaches the border and the ring is a
    # C of 39 pixels whose contour encloses only its 4 corners' half cells, area 2
    # -> the square's box.
    assert ring[50] == 0.0 and square[50] == 1.0


def test_ties_go_to_the_first_contour_in_opencv_order():
    # Two 2x2 squares, area 1 each. OpenCV lists the contour found last in its raster
    # scan first, so max() keeps the lower-right square: box (4, 4, 6, 6).
    s = np.zeros((8, 8))
    s[1:3, 1:3] = 1.0
    s[4:6, 4:6] = 1.0
    assert _ious_at_all_taus(s, [(4, 4, 6, 6)], False)[0] == 1.0
    assert _ious_at_all_taus(s, [(1, 1, 3, 3)], False)[0] == 0.0
    # same rows: the one further right is found last
    s = np.zeros((4, 9))
    s[1:3, 1:3] = 1.0
    s[1:3, 5:7] = 1.0
    assert _ious_at_all_taus(s, [(5, 1, 7, 3)], False)[0] == 1.0


def _tie_maps(rng, n, height, width):
    """Maps made of copies of one shape (solid, ring, cross, diagonal) at a few
    heights, so that the largest area ties at many cuts, in different rows and in
    the same row; some with isolated pixels."""
    shapes = [
        np.ones((2, 3)),
        np.pad(np.zeros((2, 2)), 1, constant_values=1),
        np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]),
        np.array([[1, 1, 0], [0, 1, 1]]),
    ]
    maps = []
    for i in range(n):
        shape = shapes[i % len(shapes)]
        m = np.zeros((height, width))
        for _ in range(rng.integers(2, 7)):
            y = rng.integers(0, height - shape.shape[0] + 1)
            x = rng.integers(0, width - shape.shape[1] + 1)
            if rng.random() < 0.3 and m.any():  # on the top row of an earlier copy
                y = int(np.flatnonzero(m.any(axis=1))[0])
            patch = m[y : y + shape.shape[0], x : x + shape.shape[1]]
            np.maximum(patch, shape * rng.choice([0.4, 0.7, 1.0]), out=patch)
        if i % 3 == 0:
            m = np.maximum(m, (rng.random((height, width)) < 0.02) * rng.uniform(0.1, 1.0))
        maps.append(m)
    return np.stack(maps)


def test_ties_of_the_largest_area_match_opencv():
    # At equal largest areas the sweep keeps the component whose top row is lowest
    # (OpenCV's scan finds it last and lists it first); equal top rows go to OpenCV.
    rng = np.random.default_rng(17)
    maps = _tie_maps(rng, 96, 24, 28)
    rows_differ = rows_equal = 0  # ties of each kind, counted with OpenCV
    for m in maps:
        q = (m * 255).astype(np.uint8)
        for k in sorted({int(t * q.max()) for t in np.arange(0, 1, 0.01)}):
            binary = (q > k).astype(np.uint8)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            areas = [cv2.contourArea(c) for c in contours]
            tops = [cv2.boundingRect(c)[1] for c, a in zip(contours, areas) if a == max(areas)]
            if len(tops) > 1:
                lowest = max(tops)
                rows_differ += tops.count(lowest) == 1
                rows_equal += tops.count(lowest) > 1
    assert rows_differ > 50 and rows_equal > 10
    _assert_curves_match(maps, _random_gt(rng, 96, 24, 28), (30, 50, 70), 0.01, False)
    # the boxes themselves, not only the curves: each map's own box as ground truth
    for m in maps[:24]:
        q = (m * 255).astype(np.uint8)
        box = _protocol_boxes(q, 0.5, False)[0]
        assert _ious_at_all_taus(m, [box], False)[50] == 1.0


def test_box_is_one_pixel_larger_and_clipped():
    s = np.zeros((8, 8))
    s[4, 3] = 1.0  # boundingRect (3, 4, 1, 1) -> (3, 4, 4, 5)
    assert _ious_at_all_taus(s, [(3, 4, 4, 5)], True)[0] == 1.0
    s = np.zeros((8, 8))
    s[7, 7] = 1.0  # (7, 7, min(8, 7), min(8, 7)) = (7, 7, 7, 7)
    assert _ious_at_all_taus(s, [(7, 7, 7, 7)], True)[0] == 1.0


def test_no_contour_gives_box_0_0_0_0():
    s = np.zeros((5, 5))  # max(q) = 0: k = 0 and nothing is > 0 at any tau
    assert (_ious_at_all_taus(s, [(0, 0, 0, 0)], True) == 1.0).all()
    # IoU((0,0,0,0), (0,0,1,1)) = 1 / 4
    assert (_ious_at_all_taus(s, [(0, 0, 1, 1)], False) == 0.25).all()


def test_iou_is_inclusive_and_best_over_all_pairs():
    s = np.zeros((6, 6))
    s[0, 0] = 1.0  # box (0, 0, 1, 1)
    # inter 1 pixel, union 4 + 4 - 1 = 7
    assert _ious_at_all_taus(s, [(1, 1, 2, 2)], True)[0] == pytest.approx(1 / 7, abs=1e-15)
    # two ground-truth boxes: the best pair counts
    assert _ious_at_all_taus(s, [(4, 4, 5, 5), (0, 0, 1, 1)], True)[0] == 1.0
    # two predicted boxes (V2): (0, 0, 1, 1) and (4, 4, 5, 5); each gt matches one
    s[4, 4] = 1.0
    assert _ious_at_all_taus(s, [(4, 4, 5, 5)], True)[0] == 1.0


def test_gt_partly_outside_the_map_is_plain_arithmetic():
    s = np.zeros((6, 6))
    s[0, 0] = 1.0  # box (0, 0, 1, 1), 4 pixels; gt 4x4 = 16 pixels, overlap 4
    assert _ious_at_all_taus(s, [(-2, -2, 1, 1)], True)[0] == 0.25


def test_nan_inf_constant_maps_count_as_zeros():
    gt = [np.array([[0, 0, 0, 0]])] * 3
    maps = np.full((3, 5, 5), 0.7)  # constant: zeros -> box (0, 0, 0, 0) -> IoU 1
    maps[1, 2, 2] = np.nan
    maps[2, 1, 1] = np.inf
    ev = BoxEvaluator((50,), 0.1, True)
    ev.update(maps, gt)
    assert (ev.result()["miou_curve"] == 1.0).all()


def test_image_without_box_counts_and_is_never_correct():
    s = np.zeros((2, 6, 6))
    s[:, 0, 0] = 1.0
    ev = BoxEvaluator((50,), 0.5, True)  # taus 0.0, 0.5
    ev.update(s, [np.array([[0, 0, 1, 1]]), np.zeros((0, 4))])
    r = ev.result()
    assert r["count"] == 2
    np.testing.assert_array_equal(r["box_acc_curve"][50], [50.0, 50.0])
    np.testing.assert_array_equal(r["miou_curve"], [0.5, 0.5])


def test_aggregation_by_hand():
    # Image 1: a 2x2 square (box (2, 2, 4, 4)) of value 1 next to a 1-pixel spot of
    # q = 127: tau 0.0 and 0.25 keep both (k = 0, 63): boxes (2,2,4,4), (6,6,7,7).
    # tau 0.5 (k = 127) and 0.75 keep only the square.
    s1 = np.zeros((8, 8))
    s1[2:4, 2:4] = 1.0
    s1[6, 6] = _level(127)
    gt1 = np.array([[2, 2, 4, 4]])
    # Image 2: a spot at (1, 1) (box (1, 1, 2, 2)) of value 1; gt (1, 1, 3, 3) -> IoU 4/9.
    s2 = np.zeros((8, 8))
    s2[1, 1] = 1.0
    gt2 = np.array([[1, 1, 3, 3]])
    for multi in (True, False):
        ev = BoxEvaluator((30, 50), 0.25, multi)
        ev.update(np.stack([s1, s2]), [gt1, gt2], correct=[True, False])
        r = ev.result()
        # image 1 IoU = 1 at every tau; image 2 IoU = 4/9 at every tau
        np.testing.assert_allclose(r["miou_curve"], [(1 + 4 / 9) / 2] * 4, atol=1e-15)
        assert r["max_box_acc"] == {30: 100.0, 50: 50.0}
        assert r["best_tau"] == {30: 0.0, 50: 0.0}
        assert r["mean"] == 75.0
        assert r["miou_tau"] == 0.0
        loc = ev.loc_accuracy(0.5, iou=30)
        assert loc["gt_known_loc"] == 100.0 and loc["top1_loc"] == 50.0


def test_loc_accuracy_without_class_information():
    s = np.zeros((1, 6, 6))
    s[0, 1, 1] = 1.0  # box (1, 1, 2, 2) at every tau
    ev = BoxEvaluator((50,), 0.5, False)
    ev.update(s, [np.array([[1, 1, 2, 3]])])  # IoU 4 / 6
    loc = ev.loc_accuracy(0.0, iou=50)
    assert loc == {"tau": 0.0, "iou": 50, "gt_known_loc": 100.0, "top1_loc": None}
    with pytest.raises(ValueError, match="iou=70"):
        ev.loc_accuracy(0.0, iou=70)
    ev.reset()
    with pytest.raises(ValueError, match="before any update"):
        ev.result()


def test_miou_tau_is_the_smallest_on_ties_and_max_is_per_threshold():
    # one pixel of q = 200 and one of q = 100: tau < 0.5 keeps both, tau >= 0.5 keeps one
    s = np.zeros((6, 6))
    s[1, 1] = _level(200)
    s[4, 4] = _level(100)
    ev = BoxEvaluator((50, 100), 0.25, True)
    ev.update(s[None], [np.array([[1, 1, 2, 2]])])
    r = ev.result()
    np.testing.assert_array_equal(r["miou_curve"], [1.0, 1.0, 1.0, 1.0])
    assert r["miou_tau"] == 0.0 and r["best_tau"] == {50: 0.0, 100: 0.0}


# --- bad input ------------------------------------------------------------------------


def test_mismatched_shapes_raise_naming_them():
    ev = BoxEvaluator()
    with pytest.raises(ValueError, match=r"3 score maps.*\(3, 4, 4\)"):
        ev.update(np.zeros((3, 4, 4)), [np.zeros((0, 4))] * 2)
    with pytest.raises(ValueError, match=r"gt_boxes\[1\].*\(2, 3\)"):
        ev.update(np.zeros((2, 4, 4)), [np.zeros((0, 4)), np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"x1 < x0"):
        ev.update(np.zeros((1, 4, 4)), [np.array([[3, 0, 1, 2]])])
    with pytest.raises(ValueError, match=r"correct must have shape \(2,\)"):
        ev.update(np.zeros((2, 4, 4)), [np.zeros((0, 4))] * 2, correct=[True])
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        ev.update(np.zeros((4, 4)), [np.zeros((0, 4))])
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        ev.update(np.full((1, 4, 4), 2.0) - np.eye(4), [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="before any update"):
        ev.result()
    ev.update(np.zeros((1, 4, 4)), [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="not on the threshold grid"):
        ev.loc_accuracy(0.005)
    with pytest.raises(ValueError, match="for some batches"):
        ev.update(np.zeros((1, 4, 4)), [np.zeros((0, 4))], correct=[True])
    with pytest.raises(ValueError, match="iou_thresholds"):
        BoxEvaluator(iou_thresholds=(0.5,))


# --- randomised comparison with the per-threshold loop ---------------------------------


def _random_maps(rng, n, height, width):
    """Mixed kinds: smooth blobs, several blobs, noise, rings (holes), thin lines,
    plateaus, constants."""
    yy, xx = np.mgrid[:height, :width]
    maps = []
    for i in range(n):
        kind = i % 8
        if kind == 0:  # smooth CAM-like
            m = cv2.resize(rng.normal(size=(4, 4)), (width, height), interpolation=cv2.INTER_CUBIC)
        elif kind == 1:  # several gaussian blobs
            m = np.zeros((height, width))
            for _ in range(rng.integers(2, 5)):
                cy, cx = rng.uniform(0, height), rng.uniform(0, width)
                m += rng.uniform(0.3, 1) * np.exp(
                    -((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(4, 40)
                )
        elif kind == 2:  # noise
            m = rng.random((height, width))
        elif kind == 3:  # rings: holes at many levels
            r = np.hypot(yy - rng.uniform(0, height), xx - rng.uniform(0, width))
            m = np.exp(-((r - rng.uniform(3, 12)) ** 2) / rng.uniform(2, 10))
            m += 0.3 * np.cos(xx / rng.uniform(1, 3)) * np.cos(yy / rng.uniform(1, 3))
        elif kind == 4:  # thin lines and isolated pixels
            m = np.zeros((height, width))
            for _ in range(rng.integers(2, 6)):
                y, x = rng.integers(0, height), rng.integers(0, width)
                m[y, x : x + rng.integers(1, 15)] = rng.random()
                m[y : y + rng.integers(1, 15), x] = rng.random()
                m[rng.integers(0, height), rng.integers(0, width)] = rng.random()
        elif kind == 5:  # coarse plateaus (many equal areas and ties)
            m = cv2.resize(
                rng.integers(0, 4, (5, 5)).astype(float),
                (width, height),
                interpolation=cv2.INTER_NEAREST,
            )
        elif kind == 6:  # binary noise: many holes and components
            m = (rng.random((height, width)) < rng.uniform(0.3, 0.7)).astype(float)
        else:  # constant
            m = np.full((height, width), rng.random())
        if m.max() > m.min():
            m = (m - m.min()) / (m.max() - m.min())
        maps.append(m)
    return np.stack(maps)


def _random_gt(rng, n, height, width):
    out = []
    for _ in range(n):
        boxes = []
        for _ in range(rng.integers(0, 4)):  # 0 to 3 boxes, some partly outside
            x0, y0 = rng.integers(-3, width), rng.integers(-3, height)
            boxes.append((x0, y0, x0 + rng.integers(0, width), y0 + rng.integers(0, height)))
        out.append(np.array(boxes, np.int64).reshape(-1, 4))
    return out


@pytest.mark.parametrize("multi_contour", [True, False])
def test_random_maps_match_the_per_threshold_loop(multi_contour):
    rng = np.random.default_rng(7 if multi_contour else 8)
    thresholds = (30, 50, 70, 90)
    ev = BoxEvaluator(thresholds, 0.01, multi_contour, chunk_size=64)
    ref = _Straightforward(thresholds, 0.01, multi_contour)
    for height, width, n in ((32, 32, 64), (48, 40, 64), (64, 57, 64), (33, 64, 48)):
        maps = _random_maps(rng, n, height, width)
        gt = _random_gt(rng, n, height, width)
        ev.update(maps[: n // 2], gt[: n // 2])
        ev.update(maps[n // 2 :], gt[n // 2 :])
        ref.update(maps, gt)
    curves, miou = ref.result()
    r = ev.result()
    assert r["count"] == ref.count == 240
    np.testing.assert_allclose(r["miou_curve"], miou, rtol=0, atol=1e-9)
    for t in thresholds:
        np.testing.assert_allclose(r["box_acc_curve"][t], curves[t], rtol=0, atol=1e-9)
        assert r["max_box_acc"][t] == pytest.approx(curves[t].max(), abs=1e-9)
    assert r["miou"] == pytest.approx(miou.max(), abs=1e-9)


def _assert_curves_match(maps, gt, thresholds, interval, multi_contour):
    """BoxEvaluator's BoxAcc and mIoU curves equal the per-threshold loop's."""
    ev = BoxEvaluator(thresholds, interval, multi_contour)
    ref = _Straightforward(thresholds, interval, multi_contour)
    ev.update(maps, gt)
    ref.update(maps, gt)
    curves, miou = ref.result()
    r = ev.result()
    np.testing.assert_allclose(r["miou_curve"], miou, rtol=0, atol=1e-9)
    for t in thresholds:
        np.testing.assert_allclose(r["box_acc_curve"][t], curves[t], rtol=0, atol=1e-9)


@pytest.mark.parametrize("multi_contour", [True, False])
def test_fine_grid_and_full_size_maps_match(multi_contour):
    rng = np.random.default_rng(11)
    # step 0.001: 1000 taus (at most 255 distinct cuts)
    maps = _random_maps(rng, 16, 40, 40)
    gt = _random_gt(rng, 16, 40, 40)
    _assert_curves_match(maps, gt, (50,), 0.001, multi_contour)
    # CAM-like maps at the protocol's 224 x 224
    cams = rng.normal(size=(4, 14, 14))
    maps = np.stack([cv2.resize(c, (224, 224), interpolation=cv2.INTER_CUBIC) for c in cams])
    maps = (maps - maps.min(axis=(1, 2), keepdims=True)) / np.ptp(maps, axis=(1, 2), keepdims=True)
    gt = [
        np.array([[40, 30, 150, 200]]),
        np.array([[0, 0, 223, 223]]),
        np.array([[100, 100, 120, 130], [10, 20, 60, 70]]),
        np.array([[60, 60, 160, 160]]),
    ]
    _assert_curves_match(maps, gt, (30, 50, 70), 0.01, multi_contour)


@pytest.mark.parametrize("multi_contour", [True, False])
def test_runs_longer_than_a_masked_step_match(multi_contour):
    # Rows of one segment wider than 64 px (the sweep's masked steps take runs of
    # up to 64 px at once and longer ones pixel by pixel): a wide ring whose hole
    # spans 100 columns, a ramp, a long bar, a wide frame, and mixed maps 150 px
    # wide.
    rng = np.random.default_rng(13)
    yy, xx = np.mgrid[0:30, 0:150]
    ring = np.exp(-(((np.abs(xx - 75) / 70) ** 4 + (np.abs(yy - 15) / 12) ** 4 - 0.6) ** 2) * 8)
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, 150), (30, 150))
    # one falling bar alone in its columns: its pixels set the box's right end
    # from cut to cut
    bar = np.zeros((30, 150))
    bar[5, 10:121] = np.linspace(1.0, 0.2, 111)
    bar[20:25, 60:70] = 0.5
    # a frame whose hole rows are 114 px, next to a solid block whose area lies
    # between the frame's own and the frame's with its hole (which the largest
    # contour must count)
    frame = np.zeros((30, 150))
    frame[2:13, 5:121] = 0.9
    frame[3:12, 6:120] = 0.1
    frame[15:29, 70:150] = 0.6  # area 1027 (the frame: 2, with its hole 1150)
    maps = np.concatenate([np.stack([ring, ramp, bar, frame]), _random_maps(rng, 6, 30, 150)])
    gt = [np.array([[10, 2, 140, 28]]), np.array([[100, 0, 149, 29]]), np.array([[10, 0, 100, 10]])]
    gt += [np.array([[5, 2, 120, 12]])]
    gt += _random_gt(rng, 6, 30, 150)
    _assert_curves_match(maps, gt, (30, 50, 70), 0.01, multi_contour)


def test_float32_maps_negative_zero_and_chunks():
    # float32 maps are the protocol's float64 values (exact conversion); -0.0 is 0.
    rng = np.random.default_rng(5)
    maps = _random_maps(rng, 12, 24, 20).astype(np.float32)
    maps[0, 0, 0] = -0.0
    gt = _random_gt(rng, 12, 24, 20)
    for multi in (True, False):
        ev = BoxEvaluator((30, 50), 0.05, multi, chunk_size=5)
        ev.update(maps[:2], gt[:2])  # then chunks of 5, 5: the scratch has to grow
        ev.update(maps[2:], gt[2:])
        ref = _Straightforward((30, 50), 0.05, multi)
        ref.update(maps.astype(np.float64), gt)
        curves, miou = ref.result()
        r = ev.result()
        np.testing.assert_allclose(r["miou_curve"], miou, rtol=0, atol=1e-12)
        for t in (30, 50):
            np.testing.assert_allclose(r["box_acc_curve"][t], curves[t], rtol=0, atol=1e-9)


def test_a_bad_map_in_a_later_chunk_adds_nothing():
    ev = BoxEvaluator((50,), 0.1, True, chunk_size=2)
    maps = np.zeros((5, 6, 6))
    maps[:, 1, 1] = 1.0
    maps[3, 2, 2] = 1.5  # in the second chunk
    with pytest.raises(ValueError, match=r"scoremaps\[3\] has values in \[0.0, 1.5\]"):
        ev.update(maps, [np.array([[1, 1, 2, 2]])] * 5)
    with pytest.raises(ValueError, match="before any update"):
        ev.result()
    maps[3, 2, 2] = 0.0
    ev.update(maps, [np.array([[1, 1, 2, 2]])] * 5)
    assert ev.result()["count"] == 5
