"""cam_to_scoremap against a numpy Keys-bicubic + min-max normalisation written here."""

import numpy as np
import pytest

from wsolkeras.metrics import cam_to_scoremap, normalize_scoremap
from wsolkeras.metrics.scoremap import prepare_scoremaps, quantize


def _keys(t, a=-0.75):
    """Keys' cubic convolution kernel (OpenCV's INTER_CUBIC uses a = -0.75)."""
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _resize_axis(x, n_out):
    """1-D bicubic along the last axis: half-pixel centres, edge pixels repeated."""
    n = x.shape[-1]
    out = np.zeros(x.shape[:-1] + (n_out,))
    for j in range(n_out):
        src = (j + 0.5) * n / n_out - 0.5
        i = int(np.floor(src))
        t = src - i
        for k in range(-1, 3):
            out[..., j] += _keys(t - k) * x[..., min(max(i + k, 0), n - 1)]
    return out


def _expected(cam, height, width):
    up = _resize_axis(_resize_axis(np.asarray(cam, np.float64), width).T, height).T
    if np.isnan(up).any() or up.min() == up.max():
        return np.zeros_like(up)
    up = up - up.min()
    return up / up.max()


def test_matches_keys_bicubic_and_min_max():
    rng = np.random.default_rng(0)
    cams = rng.normal(size=(3, 7, 5)).astype(np.float32)
    got = cam_to_scoremap(cams, (28, 20))
    assert got.shape == (3, 28, 20) and got.dtype == np.float64
    for cam, g in zip(cams, got, strict=True):
        np.testing.assert_allclose(g, _expected(cam, 28, 20), rtol=0, atol=1e-12)
        assert g.min() == 0.0 and g.max() == 1.0


def test_square_size_and_single_map():
    rng = np.random.default_rng(1)
    cam = rng.normal(size=(14, 14))
    got = cam_to_scoremap(cam, 56)
    assert got.shape == (56, 56)
    np.testing.assert_allclose(got, _expected(cam, 56, 56), rtol=0, atol=1e-12)


def test_resizes_in_float64_like_the_reference():
    # The reference casts the model output to float64 before cv2.resize; a float32
    # resize rounds differently, which moves uint8(s * 255) at some pixels.
    rng = np.random.default_rng(2)
    cam = rng.normal(size=(14, 14)).astype(np.float32)
    got = cam_to_scoremap(cam, 224)
    np.testing.assert_allclose(got, _expected(cam.astype(np.float64), 224, 224), atol=1e-12)


def test_nan_inf_and_constant_maps_become_zeros():
    cams = np.ones((4, 6, 6))
    cams[0, 2, 3] = np.nan
    cams[1, 0, 0] = np.inf
    cams[2] = 3.5  # constant
    cams[3, 1, 1] = 2.0  # a normal map
    got = cam_to_scoremap(cams, 12)
    assert (got[:3] == 0).all()
    assert got[3].max() == 1.0


def test_normalize_scoremap_rule():
    m = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_array_equal(normalize_scoremap(m), [[0, 0.25], [0.5, 1.0]])
    assert (normalize_scoremap(np.full((2, 2), 7.0)) == 0).all()


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        cam_to_scoremap(np.zeros((2, 3, 4, 5)), 8)
    with pytest.raises(ValueError, match="size"):
        cam_to_scoremap(np.zeros((3, 4)), (8, 0))


def test_prepare_and_quantize():
    maps = np.zeros((4, 2, 2))
    maps[0] = [[0.0, 0.5], [1.0, 0.999]]
    maps[1] = np.nan
    maps[2] = 0.3  # constant: zeros, as the protocol's normalisation makes it
    maps[3] = [[0.0, np.inf], [0.2, 0.1]]
    out = prepare_scoremaps(maps)
    assert (out[1:] == 0).all()
    # truncation, not rounding: 0.999 * 255 = 254.745 -> 254
    np.testing.assert_array_equal(quantize(out[:1])[0], [[0, 127], [255, 254]])
    with pytest.raises(ValueError, match=r"scoremaps\[1\].*outside \[0, 1\]"):
        prepare_scoremaps(np.stack([np.zeros((2, 2)), np.full((2, 2), 1.5) - np.eye(2)]))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        prepare_scoremaps(np.zeros((2, 2)))
