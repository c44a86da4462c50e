"""Speed and memory of wsolkeras.metrics.BoxEvaluator against the protocol's own loop.

The protocol's reference checks each map (a 2-D float array, no NaN, values in
[0, 1]), quantises it, and at every tau takes the quantised map's maximum again
and thresholds with OpenCV (``cv2.threshold`` + ``cv2.findContours`` +
``contourArea``/``boundingRect``); ``protocol_loop`` below is that loop
(``--lean_loop``: without the check, with the map's maximum and the per-box
maxima over ground truths taken once per map, about 10% faster than the
reference). Both run on the same CAM-like maps (14x14
normal noise upsampled to 224x224 with the protocol's bicubic and min-max
normalised), single process, OpenCV single-threaded, and their results are
checked to agree. Speed is maps per CPU second of this process (the 2 cores are
shared; wall-clock ratios swing with the other load, which is printed), in the
steady state: the first evaluation compiles the numba sweep (or loads it from
``__pycache__``) and is timed and printed on its own.

Usage (from the repository root):
    python benchmarks/bench_metrics.py                # full: 10,000 maps for memory
    python benchmarks/bench_metrics.py --memory_maps 2000 --maps 300
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wsolkeras.metrics import BoxEvaluator, cam_to_scoremap  # noqa: E402


def cam_like(rng: np.random.Generator, n: int, size: int = 224) -> np.ndarray:
    return cam_to_scoremap(rng.normal(size=(n, 14, 14)).astype(np.float32), size)


def object_boxes(rng: np.random.Generator, n: int, size: int = 224) -> list[np.ndarray]:
    boxes = []
    for _ in range(n):
        w, h = rng.integers(size // 5, size, 2)
        x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
        boxes.append(np.array([[x0, y0, x0 + w - 1, y0 + h - 1]]))
    return boxes


def check_map(scoremap: np.ndarray) -> None:
    """The reference's check of every map before its loop."""
    if not isinstance(scoremap, np.ndarray) or scoremap.ndim != 2:
        raise ValueError("a score map must be a 2-D array")
    if scoremap.dtype != float:
        raise ValueError(f"a score map must be float64, not {scoremap.dtype}")
    if np.isnan(scoremap).any():
        raise ValueError("a score map must not hold NaN")
    if (scoremap > 1).any() or (scoremap < 0).any():
        raise ValueError("a score map must be in [0, 1]")


def protocol_loop(maps, gt_boxes, taus, thresholds, multi_contour, lean=False):
    """The protocol's per-tau loop, structured as its reference is (the map
    checked, OpenCV boxes at every tau with the quantised map's maximum taken
    there, then one vectorised IoU per map and, per tau, the best box, with the
    maximum over ground truths taken again each time; ``lean``: no check, each
    maximum taken once); returns (BoxAcc curves in %, mean-IoU curve)."""
    correct = {t: np.zeros(len(taus)) for t in thresholds}
    iou_sum = np.zeros(len(taus))
    for scoremap, gt in zip(maps, gt_boxes, strict=True):
        if not lean:
            check_map(scoremap)
        height, width = scoremap.shape
        q = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
        q_max = np.max(q)
        boxes, counts = [], []
        for tau in taus:
            if not lean:
                q_max = np.max(q)
            _, binary = cv2.threshold(q, int(tau * q_max), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            if len(contours) == 0:
                boxes.append([0, 0, 0, 0])
                counts.append(1)
                continue
            if not multi_contour:
                contours = [max(contours, key=cv2.contourArea)]
            for contour in contours:
                x, y, w, h = cv2.boundingRect(contour)
                boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
            counts.append(len(contours))
        a, b = np.asarray(boxes)[:, None, :], gt[None, :, :]
        iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1
        ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
        inter = np.maximum(iw, 0) * np.maximum(ih, 0)
        area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
        area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
        iou = inter / (area_a + area_b - inter)  # boxes x ground truths
        if lean:
            per_box = iou.max(axis=1)
            ends = np.cumsum(counts)
            best = np.array([per_box[e - n : e].max() for e, n in zip(ends, counts, strict=True)])
        else:  # as the reference: the maximum over ground truths taken again per tau
            best, start = [], 0
            for n in counts:
                best.append(max(iou.max(1)[start : start + n]))
                start += n
            best = np.asarray(best)
        for t in thresholds:
            correct[t] += best >= t / 100
        iou_sum += best
    n = len(maps)
    return {t: c * 100.0 / n for t, c in correct.items()}, iou_sum / n


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=1000, help="maps timed per configuration")
    parser.add_argument(
        "--ref_maps",
        type=int,
        default=100,
        help="maps for the protocol loop at step 0.01 (a tenth at 0.001)",
    )
    parser.add_argument(
        "--memory_maps",
        type=int,
        default=10000,
        help="maps streamed through one evaluator for the peak-RSS figure",
    )
    parser.add_argument("--batch", type=int, default=64, help="maps per update() call")
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternations of loop and ours per configuration"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lean_loop",
        action="store_true",
        help="time a leaner protocol loop: no map check, maxima taken once per map",
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)
    thresholds = (30, 50, 70)
    print(f"load average at start: {os.getloadavg()}")
    print(
        "protocol loop: "
        + ("lean (no map check, maxima once per map)" if args.lean_loop else "as the reference")
    )
    # the first call compiles the sweep (or loads it from numba's cache)
    rng = np.random.default_rng(args.seed + 2)
    t0 = time.perf_counter()
    for multi in (True, False):
        BoxEvaluator(thresholds, 0.01, multi).update(cam_like(rng, 1), object_boxes(rng, 1))
    print(f"first calls (numba compile or cache load): {time.perf_counter() - t0:.1f} s wall")
    # memory first (ru_maxrss is a high-water mark): stream --memory_maps maps through
    # one evaluator
    rng = np.random.default_rng(args.seed + 1)
    ev = BoxEvaluator(thresholds, 0.01, True)
    before = peak_rss_mb()
    t0 = time.perf_counter()
    for start in range(0, args.memory_maps, args.batch):
        n = min(args.batch, args.memory_maps - start)
        ev.update(cam_like(rng, n), object_boxes(rng, n))
    r = ev.result()
    print(
        f"memory: {r['count']} maps of 224x224 (V2, tau 0.01) in {time.perf_counter() - t0:.0f} s"
        f" wall incl. map generation; peak RSS {peak_rss_mb():.0f} MB "
        f"(before the stream {before:.0f} MB); MaxBoxAccV2 {r['mean']:.2f}"
    )
    print(f"{'configuration':26s} {'ours maps/s':>12s} {'loop maps/s':>12s} {'speed-up':>9s}")
    for interval in (0.01, 0.001):
        taus = np.arange(0, 1, interval)
        for multi in (True, False):
            name = f"{'V2 all contours' if multi else 'V1 largest':16s} tau {interval}"
            rng = np.random.default_rng(args.seed)
            n_ref = max(1, args.ref_maps if interval == 0.01 else args.ref_maps // 10)
            ev = BoxEvaluator(thresholds, interval, multi)
            ref_spent = spent = 0.0
            ref_done = done = 0
            # Rounds alternate the two sides, so that a change in the machine's load
            # hits both: the protocol loop on a few maps (and ours on the same
            # maps, untimed: the numbers must agree), then ours on a batch.
            for r in range(args.rounds):
                n = n_ref * (r + 1) // args.rounds - n_ref * r // args.rounds
                if n:
                    maps, boxes = cam_like(rng, n), object_boxes(rng, n)
                    t0 = time.process_time()
                    ref_curves, ref_miou = protocol_loop(
                        maps, boxes, taus, thresholds, multi, args.lean_loop
                    )
                    ref_spent += time.process_time() - t0
                    ref_done += n
                    check = BoxEvaluator(thresholds, interval, multi)
                    check.update(maps, boxes)
                    got = check.result()
                    assert np.abs(got["miou_curve"] - ref_miou).max() < 1e-9, name
                    for t in thresholds:
                        assert np.abs(got["box_acc_curve"][t] - ref_curves[t]).max() < 1e-9, name
                goal = args.maps * (r + 1) // args.rounds
                while done < goal:  # map generation not timed
                    n = min(args.batch, goal - done)
                    maps, boxes = cam_like(rng, n), object_boxes(rng, n)
                    t0 = time.process_time()
                    ev.update(maps, boxes)
                    spent += time.process_time() - t0
                    done += n
            t0 = time.process_time()
            ev.result()
            spent += time.process_time() - t0
            ours, ref_rate = done / spent, ref_done / ref_spent
            print(f"{name:26s} {ours:12.0f} {ref_rate:12.1f} {ours / ref_rate:8.1f}x")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
