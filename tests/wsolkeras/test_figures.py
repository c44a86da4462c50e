"""wsolkeras.figures: the BoxAcc plot and the overlay, against independent computations."""

import io

import numpy as np
from PIL import Image

from wsolkeras import figures


def test_box_acc_plot_is_a_png_with_one_line_per_iou():
    taus = np.linspace(0, 0.99, 100)
    curves = {iou: 100 * np.exp(-((taus - iou / 100) ** 2) * 20) for iou in (50, 70, 90)}
    png = figures.box_acc_plot(taus, curves, title="test", tau=0.42)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB")).astype(int)
    # matplotlib's first three default colours: one line each.
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):
        assert (np.abs(pixels - colour).sum(axis=-1) < 30).sum() > 50, colour


def jet(v: float) -> np.ndarray:
    """matplotlib's jet, written out: piecewise-linear red, green and blue."""

    def channel(points):
        xs, ys = zip(*points, strict=True)
        return np.interp(v, xs, ys)

    red = channel([(0, 0), (0.35, 0), (0.66, 1), (0.89, 1), (1, 0.5)])
    green = channel([(0, 0), (0.125, 0), (0.375, 1), (0.64, 1), (0.91, 0), (1, 0)])
    blue = channel([(0, 0.5), (0.11, 1), (0.34, 1), (0.65, 0), (1, 0)])
    return np.array([red, green, blue])


def test_overlay_blends_the_upsampled_map_and_draws_the_box():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[:, 4:] = 1.0  # right half hot
    out = figures.overlay_prediction(image, heatmap, (30, 10, 50, 30), alpha=0.4)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    for y, x, value in ((35, 2, 0.0), (35, 57, 1.0)):
        expected = np.round(255 * (0.6 * image[y, x] / 255 + 0.4 * jet(value)))
        np.testing.assert_allclose(out[y, x], expected, atol=1)
    assert tuple(out[30, 40]) == figures.BOX_COLOUR and tuple(out[20, 30]) == figures.BOX_COLOUR
    labelled = figures.overlay_prediction(image, heatmap, None, label="Laysan Albatross 0.93")
    assert (labelled[0:5, 0:20] == 0).mean() > 0.5, "the label sits on a black band"
    assert labelled.shape == image.shape
