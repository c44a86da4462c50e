"""wsolkeras.summaries: boxes drawn where they are, and events TensorBoard reads back."""

import glob

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from wsolkeras import evaluation, summaries


def test_draw_box_outlines_exactly_the_inclusive_box():
    image = np.zeros((10, 12, 3), np.uint8)
    summaries.draw_box(image, (2, 3, 7, 8), (255, 0, 0))
    drawn = image[..., 0] == 255
    expected = np.zeros((10, 12), bool)
    expected[3, 2:8] = expected[8, 2:8] = True
    expected[3:9, 2] = expected[3:9, 7] = True
    np.testing.assert_array_equal(drawn, expected)


def test_overlay_blends_the_map_and_draws_both_boxes():
    images = np.zeros((1, 32, 32, 3), np.float32)
    images[0, ..., 1] = np.linspace(-2, 2, 32)[None, :]  # any normalisation
    scoremaps = np.zeros((1, 32, 32))
    scoremaps[0, 10:20, 10:20] = 1.0
    out = summaries.overlay(
        images, scoremaps, [np.array([[4, 5, 25, 26]])], np.array([[8, 8, 21, 21]])
    )
    assert out.shape == (1, 32, 32, 3) and out.dtype == np.uint8
    assert tuple(out[0, 5, 4]) == summaries.GT_COLOUR
    assert tuple(out[0, 26, 25]) == summaries.GT_COLOUR
    assert tuple(out[0, 8, 8]) == summaries.PRED_COLOUR
    # Inside the hot region the jet colour map is red-ish; outside blue-ish.
    assert out[0, 15, 15, 0] > out[0, 15, 15, 2]
    assert out[0, 2, 2, 2] > out[0, 2, 2, 0]


def test_curve_image_is_an_rgb_plot():
    taus = np.arange(0, 1, 0.01)
    plot = summaries.curve_image(taus, {50: 100 * (1 - taus), 70: 50 * (1 - taus)}, "val")
    assert plot.ndim == 3 and plot.shape[2] == 3 and plot.dtype == np.uint8
    assert plot.shape[0] > 100 and plot.shape[1] > 100
    assert len(np.unique(plot.reshape(-1, 3), axis=0)) > 10


def hand_made_evaluation() -> evaluation.SplitEvaluation:
    taus = np.arange(0, 1, 0.01)
    bump = np.clip(100 - 400 * (taus - 0.3) ** 2, 0, 100)
    metrics = {
        "top1": 80.0,
        "max_box_acc_v2": {
            "max_box_acc": {"30": 90.0, "50": 70.0, "70": 40.0},
            "best_tau": {"30": 0.2, "50": 0.3, "70": 0.4},
            "mean": 200.0 / 3,
        },
        "max_box_acc": {
            "max_box_acc": {str(i): 100.0 - i for i in (50, 60, 70, 80, 90)},
            "best_tau": {str(i): 0.3 for i in (50, 60, 70, 80, 90)},
            "mean": 30.0,
            "miou": 0.61,
            "miou_tau": 0.3,
        },
        "top1_loc_max": 44.0,
        "pxap": 55.5,
    }
    size = 24
    scoremaps = np.zeros((2, size, size))
    scoremaps[:, 6:14, 8:18] = 1.0
    return evaluation.SplitEvaluation(
        split="val",
        num_images=2,
        metrics=metrics,
        taus=taus,
        curves={
            "max_box_acc_v2": {30: bump, 50: bump * 0.7, 70: bump * 0.4},
            "max_box_acc": {i: bump * (100 - i) / 100 for i in (50, 60, 70, 80, 90)},
            "top1_loc": {50: bump * 0.44},
        },
        examples={
            "image": np.random.default_rng(0).normal(size=(2, size, size, 3)),
            "scoremap": scoremaps,
            "gt_boxes": [np.array([[8, 6, 17, 13]]), np.array([[0, 0, 5, 5]])],
            "label": np.array([0, 1]),
        },
    )


def read_events(log_dir: str) -> event_accumulator.EventAccumulator:
    (path,) = glob.glob(f"{log_dir}/events.out.tfevents.*")
    accumulator = event_accumulator.EventAccumulator(
        path, size_guidance={"tensors": 0, "images": 0}
    )
    accumulator.Reload()
    return accumulator


def test_write_evaluation_writes_scalars_curves_and_maps(tmp_path):
    found = hand_made_evaluation()
    writer = tf.summary.create_file_writer(str(tmp_path))
    summaries.write_evaluation(writer, 123, found, tau=0.3, max_images=2)
    writer.close()
    events = read_events(str(tmp_path))
    tags = events.Tags()["tensors"]
    values = {
        tag: float(tf.make_ndarray(events.Tensors(tag)[0].tensor_proto))
        for tag in tags
        if events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"
    }
    assert values["localization/max_box_acc_v2"] == pytest.approx(200.0 / 3)
    assert values["localization/max_box_acc_iou90"] == pytest.approx(10.0)
    assert values["localization/pxap"] == pytest.approx(55.5)
    assert values["at_tau/gt_known_loc"] == pytest.approx(found.curves["max_box_acc"][50][30])
    assert values["at_tau/top1_loc"] == pytest.approx(found.curves["top1_loc"][50][30])
    assert all(events.Tensors(tag)[0].step == 123 for tag in values)
    images = [t for t in tags if events.SummaryMetadata(t).plugin_data.plugin_name == "images"]
    assert set(images) == {
        "curves/max_box_acc_v2_vs_tau",
        "curves/max_box_acc_vs_tau",
        "maps/examples",
    }
    maps = tf.make_ndarray(events.Tensors("maps/examples")[0].tensor_proto)
    # Width, height, then one encoded PNG per image.
    assert len(maps) == 2 + 2
    decoded = tf.io.decode_png(maps[2]).numpy()
    assert decoded.shape == (24, 24, 3)
    # The first image: its ground-truth box (8, 6, 17, 13) in green, the box
    # at tau (the hot region widened by one pixel: (8, 6, 18, 14)) in red.
    assert tuple(decoded[13, 12]) == summaries.GT_COLOUR
    assert tuple(decoded[14, 12]) == summaries.PRED_COLOUR


def test_predicted_boxes_are_the_exports_boxes():
    maps = np.zeros((1, 20, 20))
    maps[0, 4:9, 5:12] = 1.0
    np.testing.assert_array_equal(summaries.predicted_pixel_boxes(maps, 0.5), [[5, 4, 12, 9]])
