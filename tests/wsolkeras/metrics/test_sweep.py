"""The compiled all-levels component sweep against OpenCV, one level at a time."""

import cv2
import numpy as np
import pytest

from wsolkeras.metrics import _sweep
from wsolkeras.metrics.scoremap import quantize


def _filled_bitquad_area2(component):
    """Twice the bit-quad area of a component with its holes filled (cells with 4
    corners inside count 2, with 3 corners 1), in numpy."""
    outside = (~component).astype(np.uint8)
    n, lab = cv2.connectedComponents(np.pad(outside, 1, constant_values=1), connectivity=4)
    exterior = lab == lab[0, 0]
    filled = ~exterior[1:-1, 1:-1]
    p = np.pad(filled, 1).astype(int)
    corners = p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:]
    return int(2 * (corners == 4).sum() + (corners == 3).sum())


def test_bitquad_area_equals_opencv_contour_area():
    # The claim _boxes relies on: cv2.contourArea of an outer contour (CHAIN_APPROX_SIMPLE
    # polygon through pixel centres) is the bit-quad area of its component, holes filled.
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        binary = (rng.random((rng.integers(3, 16), rng.integers(3, 16))) < 0.6).astype(np.uint8)
        contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        _, lab = cv2.connectedComponents(binary, connectivity=8)
        for contour, (_, _, _, parent) in zip(contours, hierarchy[0], strict=True):
            if parent >= 0:
                continue  # a hole border
            x, y = contour[0, 0]  # an outer contour starts on its component
            area2 = _filled_bitquad_area2(lab == lab[y, x])
            assert 2 * cv2.contourArea(contour) == area2
            checked += 1
    assert checked > 500


def test_hole_contour_box_is_the_hole_grown_by_one():
    # The claim _boxes relies on for holes: the boundingRect of a hole contour is the
    # box of the 4-connected background component inside it, one pixel larger on
    # every side.
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(300):
        binary = (rng.random((rng.integers(3, 16), rng.integers(3, 16))) < 0.7).astype(np.uint8)
        contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(1 - binary, connectivity=4)
        frame = set(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]).tolist())
        holes = sorted(
            (x - 1, y - 1, w + 2, h + 2)
            for j, (x, y, w, h, _) in enumerate(stats)
            if j > 0 and j not in frame
        )
        rects = (
            sorted(
                cv2.boundingRect(c)
                for c, (_, _, _, parent) in zip(contours, hierarchy[0], strict=True)
                if parent >= 0
            )
            if contours
            else []
        )
        assert rects == holes
        checked += len(holes)
    assert checked > 100


def _components(img, conn, levels, area=False, border=False):
    """upper_sets on a uint8 image at the given increasing levels (level j of the
    sweep: pixels >= levels[j - 1]); also checks the scan's quantisation of the
    matching score map."""
    h, w = img.shape
    ws = _sweep.Workspace(h, w)
    s = (img.astype(np.float64) + 0.5) / 255  # quantises back to img
    q = ws.batch[0].ravel()  # padded, as the sweep reads past a run's end
    nf, nb, lo, hi = _sweep.scan(s, s.view(np.int64), q, ws.fg, ws.bg, True, True)
    np.testing.assert_array_equal(q.reshape(h, w), quantize(np.minimum(s, 1.0)))
    # the extremes' bit patterns (non-negative floats sort as their bits)
    assert (lo, hi) == (s.min().view(np.int64), s.max().view(np.int64))
    # lut[v] = number of levels <= v
    lut = np.searchsorted(np.asarray(levels), np.arange(256), side="right").astype(np.uint8)
    return _sweep.upper_sets(q, h, w, conn, lut, area, border, ws.fg, nf, ws.labels)


def _random_images(rng, count):
    # noise: more than 255 groups (labels wider than a byte)
    images = [rng.integers(0, 40, (48, 48)).astype(np.uint8)]
    for k in range(count):
        h, w = rng.integers(1, 30), rng.integers(1, 30)
        if k % 3 == 0:
            img = rng.integers(0, 40, (h, w))
        elif k % 3 == 1:
            img = cv2.resize(rng.random((4, 4)), (int(w), int(h)), interpolation=cv2.INTER_CUBIC)
            img = (img - img.min()) / max(np.ptp(img), 1e-9) * 40
        else:
            img = rng.integers(0, 3, (h, w)) * rng.integers(0, 40)
        images.append(img.astype(np.uint8))
    return images


@pytest.mark.parametrize("every_level", [True, False])
@pytest.mark.parametrize("conn", [8, 4])
def test_components_match_opencv_at_every_level(conn, every_level):
    rng = np.random.default_rng(conn + 10 * every_level)
    for i, img in enumerate(_random_images(rng, 40)):
        top = int(img.max())
        if every_level:
            levels = np.arange(1, top + 1)
        else:  # some levels only, as the cuts of a coarse threshold grid
            levels = np.flatnonzero(rng.random(top) < 0.4) + 1
        x0, y0, x1, y1, aux, start = _components(img, conn, levels, area=conn == 8)
        if conn == 4:  # only the components not touching the image border
            hx0, hy0, hx1, hy1, _, hstart = _components(img, conn, levels, border=True)
        for j, level in enumerate(levels, start=1):
            on = (img >= level).astype(np.uint8)
            n, lab, stats, _ = cv2.connectedComponentsWithStats(on, connectivity=conn)
            sel = slice(start[j + 1], start[j])
            boxes = list(zip(x0[sel], y0[sel], x1[sel], y1[sel], strict=True))
            ref = sorted((x, y, x + w - 1, y + h - 1) for x, y, w, h, _ in stats[1:])
            assert sorted(tuple(map(int, b)) for b in boxes) == ref, (i, level)
            if conn == 8:
                # twice the bit-quad area of each component's own pixels
                p = np.pad(lab, 1)
                cells = [p[:-1, :-1], p[1:, :-1], p[:-1, 1:], p[1:, 1:]]
                count = sum((c > 0).astype(int) for c in cells)
                top = np.maximum(np.maximum(cells[0], cells[1]), np.maximum(cells[2], cells[3]))
                a2 = 2 * np.bincount(top[count == 4], minlength=n)
                a2 += np.bincount(top[count == 3], minlength=n)
                assert sorted(aux[sel].tolist()) == sorted(a2[1:].tolist()), (i, level)
            else:
                frame = set(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]).tolist())
                inner = sorted(
                    (x, y, x + w - 1, y + h - 1)
                    for c, (x, y, w, h, _) in enumerate(stats)
                    if c > 0 and c not in frame
                )
                hsel = slice(hstart[j + 1], hstart[j])
                got = sorted(zip(hx0[hsel], hy0[hsel], hx1[hsel], hy1[hsel], strict=True))
                assert [tuple(map(int, b)) for b in got] == inner, (i, level)


def test_scan_segments_are_unimodal_both_ways():
    rng = np.random.default_rng(3)
    rows = [  # flat, monotone, plateaus at the ends, single pixels
        [5, 5, 5, 5],
        [1, 2, 2, 3],
        [3, 3, 2, 1],
        [2, 2, 3, 3, 1, 1],
        [1, 1, 0, 0, 2, 2],
        [0, 3, 0, 3, 0],
        [3, 0, 3, 0, 3],
        [7],
    ]
    hand = [np.array([r], np.uint8) for r in rows] + [np.array([r], np.uint8).T for r in rows]
    for img in hand + _random_images(rng, 30):
        h, w = img.shape
        ws = _sweep.Workspace(h, w)
        q = np.empty(h * w, np.uint8)
        s = (img + 0.5) / 255
        nf, nb, *_ = _sweep.scan(s, s.view(np.int64), q, ws.fg, ws.bg, True, True)
        for (x0, x1, val, pf, pl, first), ns, sign in ((ws.fg, nf, 1), (ws.bg, nb, -1)):
            assert first[h] == ns
            for y in range(h):
                segs = range(first[y], first[y + 1])
                # the segments tile the row
                assert x0[segs[0]] == 0 and x1[segs[-1]] == w - 1
                assert all(x0[s + 1] == x1[s] + 1 for s in segs[:-1])
                for s in segs:
                    run = sign * img[y, x0[s] : x1[s] + 1].astype(int)
                    d = np.sign(np.diff(run))
                    nonzero = d[d != 0]
                    # non-decreasing then non-increasing (for bg: in -img)
                    assert not np.any((nonzero[:-1] < 0) & (nonzero[1:] > 0))
                    assert val[s] == img[y, x0[s] : x1[s] + 1][np.argmax(run)]
                    top = np.flatnonzero(run == run.max()) + x0[s]
                    assert (pf[s], pl[s]) == (top[0], top[-1])
