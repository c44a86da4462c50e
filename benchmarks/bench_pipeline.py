"""Training-input throughput: wsolkeras.data vs a straightforward Python loader, same run.

Both read the same JPEG shards and do the same work per image: decode,
resize to ``resize`` squared, random ``crop`` crop, random horizontal flip,
ImageNet normalisation, batch. The straightforward loader is what one writes
first: PIL decode and resize, numpy crop/flip/normalise, one process.

    python -m benchmarks.bench_pipeline [--data_dir=DIR] [--crop=448 --resize=512]

Without ``--data_dir`` it first converts a synthetic set of 500x500 JPEGs
(the size of CUB's images) into a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from tfrecords import schema, writer
from tfrecords.converters import synthetic
from wsolkeras import data


def python_loader(data_dir: str, split: str, batch_size: int, crop: int, resize: int, seed: int):
    """Batches the straightforward way: PIL decode + resize, numpy augment, one process."""
    rng = np.random.default_rng(seed)
    mean = np.array(data.IMAGENET_MEAN, np.float32) * 255
    std = np.array(data.IMAGENET_STD, np.float32) * 255
    batch = []
    for path, _ in writer.shard_paths(data_dir, split):
        for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
            feature = tf.train.Example.FromString(serialized).features.feature
            encoded = feature[schema.IMAGE_ENCODED].bytes_list.value[0]
            image = Image.open(io.BytesIO(encoded)).convert("RGB")
            image = np.asarray(image.resize((resize, resize), Image.BILINEAR), np.float32)
            y, x = rng.integers(0, resize - crop + 1, 2)
            image = image[y : y + crop, x : x + crop]
            if rng.random() < 0.5:
                image = image[:, ::-1]
            batch.append((image - mean) / std)
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []


def _throughput(batches, num_batches: int, warmup: int = 2) -> tuple[float, float]:
    """(images per second of wall time, CPU milliseconds per image over all threads)."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    start, start_cpu = time.perf_counter(), time.process_time()
    images = 0
    for _ in range(num_batches):
        batch = next(iterator)
        images += int((batch["image"] if isinstance(batch, dict) else batch).shape[0])
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return images / wall, 1000 * cpu / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", help="converted folder (default: make a synthetic one)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--crop", type=int, default=448)
    parser.add_argument("--resize", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_batches", type=int, default=12)
    parser.add_argument("--source_size", type=int, default=500)
    parser.add_argument("--num_images", type=int, default=320)
    args = parser.parse_args()

    data_dir = args.data_dir
    if data_dir is None:
        data_dir = os.path.join(tempfile.mkdtemp(prefix="bench_pipeline_"), "synthetic")
        source = synthetic.make_source(
            image_size=args.source_size, train_size=args.num_images, val_size=0, test_size=0
        )
        writer.write_dataset(source, data_dir, records_per_shard=64, progress=False)
        print(f"converted {args.num_images} synthetic {args.source_size}px JPEGs to {data_dir}")

    load = os.getloadavg()[0]  # other processes take the cores tf.data would use
    dataset = data.make_dataset(
        data_dir,
        args.split,
        training=True,
        batch_size=args.batch_size,
        crop_size=args.crop,
        resize_size=args.resize,
        repeat=True,
        with_masks=False,
    )
    pipeline = _throughput(dataset, args.num_batches)
    simple = _throughput(
        python_loader(data_dir, args.split, args.batch_size, args.crop, args.resize, seed=0),
        min(args.num_batches, args.num_images // args.batch_size - 2),
    )
    print(
        f"training input, {args.crop}px crops of {args.resize}px, batch {args.batch_size}, "
        f"{os.cpu_count()} CPU cores, load average before the run {load:.1f}:"
    )
    print(
        f"  wsolkeras.data (tf.data)          {pipeline[0]:7.1f} images/s  "
        f"{pipeline[1]:6.1f} CPU ms/image"
    )
    print(
        f"  PIL + numpy loader, one process   {simple[0]:7.1f} images/s  "
        f"{simple[1]:6.1f} CPU ms/image"
    )
    print(f"  speed-up                          {pipeline[0] / simple[0]:7.2f}x")


if __name__ == "__main__":
    main()
