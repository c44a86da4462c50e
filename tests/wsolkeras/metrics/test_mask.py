"""MaskEvaluator (PxAP) against a direct count of precision and recall written here."""

import numpy as np
import pytest

from wsolkeras.metrics import MaskEvaluator


def _pxap_direct(maps, masks, ignores, interval):
    """The protocol's PxAP with no histogram: at each cut-off e of [0, dt, ..., 1 - dt,
    1, 2] (descending), count the pixels with score >= e directly."""
    cuts = np.append(np.arange(0, 1, interval), [1.0, 2.0])[::-1]
    fg = masks > 0.5
    counted_bg = ~fg
    if ignores is not None:
        counted_bg &= ~(ignores > 0.5)
    pos, neg = maps[fg], maps[counted_bg]
    tp = np.array([(pos >= e).sum() for e in cuts], float)
    fp = np.array([(neg >= e).sum() for e in cuts], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall = tp / pos.size
    total = 0.0
    for i in range(1, len(cuts)):
        if tp[i] + fp[i] > 0:
            total += precision[i] * (recall[i] - recall[i - 1])
    return 100 * total


def test_hand_worked_pxap():
    # 4 pixels: foreground scores 0.9, 0.4; background 0.6, 0.1. dt = 0.5 -> cut-offs
    # 2, 1, 0.5, 0. At 0.5: tp 1, fp 1 -> P 1/2, R 1/2; at 0: tp 2, fp 2 -> P 1/2, R 1.
    # PxAP = 100 * (1/2 * 1/2 + 1/2 * 1/2) = 50.
    maps = np.array([[[0.9, 0.4], [0.6, 0.1]]])
    masks = np.array([[[1, 1], [0, 0]]])
    ev = MaskEvaluator(0.5)
    ev.update(maps, masks)
    r = ev.result()
    assert r["pxap"] == pytest.approx(50.0, abs=1e-12)
    np.testing.assert_array_equal(r["thresholds"], [2.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(r["recall"], [0, 0, 0.5, 1.0])
    # ignoring the background pixel at 0.6: at 0.5, P = 1 -> 100 * (1 * 1/2 + 2/3 * 1/2)
    ev = MaskEvaluator(0.5)
    ev.update(maps, masks, ignore_masks=np.array([[[0, 0], [1, 0]]]))
    assert ev.result()["pxap"] == pytest.approx(100 * (0.5 + 1 / 3), abs=1e-12)


def test_ignore_never_removes_foreground():
    maps = np.array([[[0.9, 0.2]]])
    masks = np.array([[[1, 0]]])
    ev = MaskEvaluator(0.1)
    ev.update(maps, masks, ignore_masks=np.ones((1, 1, 2)))  # covers the foreground too
    assert ev.result()["pxap"] == pytest.approx(100.0)


@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_random_batches_match_direct_count(interval):
    rng = np.random.default_rng(3)
    ev = MaskEvaluator(interval)
    all_maps, all_masks, all_ign = [], [], []
    for _ in range(5):
        maps = rng.random((6, 24, 20))
        maps[0] = np.round(maps[0], 2)  # values exactly on bin edges
        maps[1] = 0.0
        maps[2, :3] = 1.0
        masks = (rng.random((6, 24, 20)) < 0.3).astype(np.uint8) * 255
        ign = (rng.random((6, 24, 20)) < 0.2).astype(np.float32)
        ev.update(maps, masks, ign)
        all_maps.append(maps)
        all_masks.append(masks)
        all_ign.append(ign)
    expected = _pxap_direct(
        np.concatenate(all_maps), np.concatenate(all_masks), np.concatenate(all_ign), interval
    )
    assert ev.result()["pxap"] == pytest.approx(expected, abs=1e-9)


def test_degenerate_maps_and_bad_input():
    ev = MaskEvaluator()
    maps = np.full((2, 3, 3), 0.5)  # constant -> zeros
    maps[1, 0, 0] = np.nan  # -> zeros
    ev.update(maps, np.ones((2, 3, 3)))
    # every score 0: one cut-off (0) predicts all 18 pixels, P = 1, R = 1
    assert ev.result()["pxap"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match=r"gt_masks shape \(2, 3\) does not match"):
        ev.update(np.zeros((2, 3, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="ignore_masks shape"):
        ev.update(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)), np.zeros((1, 2, 2)))
    empty = MaskEvaluator()
    with pytest.raises(ValueError, match="before any update"):
        empty.result()
    empty.update(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="no ground-truth foreground"):
        empty.result()
