"""The all-levels component engine against OpenCV, one level at a time."""

import cv2
import numpy as np
import pytest

from wsolkeras.metrics import _forest


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


def _reference(values, level, conn):
    on = (values >= level).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(on, connectivity=conn)
    return lab, stats[1:], n - 1


@pytest.mark.parametrize("conn", [8, 4])
def test_components_match_opencv_at_every_level(conn):
    rng = np.random.default_rng(conn)
    images = []
    for k in range(24):
        h, w = rng.integers(5, 30), rng.integers(5, 30)
        if k % 3 == 0:
            img = rng.integers(0, 40, (h, w))
        elif k % 3 == 1:
            img = cv2.resize(rng.random((4, 4)), (w, h), interpolation=cv2.INTER_CUBIC)
            img = (img - img.min()) / max(np.ptp(img), 1e-9) * 40
        else:
            img = rng.integers(0, 3, (h, w)) * rng.integers(0, 40)
        images.append(img.astype(np.uint8))
    hmax = max(i.shape[0] for i in images)
    wmax = max(i.shape[1] for i in images)
    hc, wc = hmax + hmax % 2, wmax + wmax % 2
    canvas = np.zeros((len(images), hc, wc), np.uint8)
    for i, img in enumerate(images):
        canvas[i, : img.shape[0], : img.shape[1]] = img
    border = np.zeros((hc, wc), bool)
    border[[0, hmax - 1], :wmax] = True
    border[:hmax, [0, wmax - 1]] = True
    lmax = int(canvas.max())
    got = _forest.components(canvas, conn, lmax, area=conn == 8, border=border)
    for i in range(len(images)):
        padded = canvas[i, :hmax, :wmax]
        for level in range(1, lmax + 1):
            lab, stats, n = _reference(padded, level, conn)
            sel = (got.image == i) & (got.level == level)
            boxes = sorted(zip(got.x0[sel], got.y0[sel], got.x1[sel], got.y1[sel], strict=True))
            ref = sorted((x, y, x + w - 1, y + h - 1) for x, y, w, h, _ in stats)
            assert [tuple(map(int, b)) for b in boxes] == ref, (i, level)
            if conn == 8:
                # twice the bit-quad area of each component's own pixels
                p = np.pad(lab, 1)
                cells = [p[:-1, :-1], p[1:, :-1], p[:-1, 1:], p[1:, 1:]]
                count = sum((c > 0).astype(int) for c in cells)
                top = np.maximum(np.maximum(cells[0], cells[1]), np.maximum(cells[2], cells[3]))
                a2 = 2 * np.bincount(top[count == 4], minlength=n + 1)
                a2 += np.bincount(top[count == 3], minlength=n + 1)
                assert sorted(got.area2[sel].tolist()) == sorted(a2[1:].tolist())
            else:
                # border flag: does the component touch the frame at this level?
                frame = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
                touching = sorted(
                    (x, y, x + w - 1, y + h - 1)
                    for j, (x, y, w, h, _) in enumerate(stats, start=1)
                    if j in frame
                )
                flagged = sorted(
                    tuple(map(int, b))
                    for b, t in zip(
                        boxes,
                        got.border[sel][
                            np.lexsort((got.y1[sel], got.x1[sel], got.y0[sel], got.x0[sel]))
                        ],
                        strict=True,
                    )
                    if t >= level
                )
                assert flagged == touching, (i, level)
