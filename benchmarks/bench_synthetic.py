"""Generation rate of the synthetic set (images/s on one core), render and encode.

python -m benchmarks.bench_synthetic [--image_size=128] [--num_images=1000]
"""

from __future__ import annotations

import argparse
import time

import cv2

from tfrecords.converters import synthetic


def _rate(function, num_images: int, repeats: int) -> float:
    """Best of ``repeats`` runs (the machine is shared: the best run is the least disturbed)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for index in range(num_images):
            function(index)
        best = max(best, num_images / (time.perf_counter() - start))
    return best


def measure(
    image_size: int, num_images: int, num_classes: int = 20, repeats: int = 3
) -> dict[str, float]:
    """Images per second of ``render`` alone and of ``load`` (render + JPEG/PNG encoding)."""
    cv2.setNumThreads(1)  # a rate per core, as the writer's workers run
    synthetic.load((0, "train", 0, num_classes, image_size))  # warm caches

    def render(index):
        rng = synthetic.image_rng(0, "train", index)
        synthetic.render(rng, index % num_classes, image_size, num_classes)

    def load(index):
        synthetic.load((0, "train", index, num_classes, image_size))

    return {
        "render": _rate(render, num_images, repeats),
        "load": _rate(load, num_images, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--num_images", type=int, default=500)
    args = parser.parse_args()
    rates = measure(args.image_size, args.num_images)
    print(
        f"synthetic @ {args.image_size}px, one core, best of 3: "
        f"render {rates['render']:.0f} img/s, "
        f"render + encode (a converter record) {rates['load']:.0f} img/s"
    )


if __name__ == "__main__":
    main()
