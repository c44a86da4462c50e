"""The input pipeline: TFRecord shards (``tfrecords/``) -> batches for training and evaluation.

``make_dataset(data_dir, split, training=..., batch_size=...)`` yields dicts
(docs/INTERFACES.md, "Pipeline element"):

| key | dtype, shape | meaning |
| --- | --- | --- |
| ``image`` | float32 ``[B, S, S, 3]`` | normalised by ``normalize_images`` |
| ``label`` | int32 ``[B]`` | class id |
| ``boxes`` | float32 ``[B, max_boxes, 4]`` | ``(ymin, xmin, ymax, xmax)``, zero-padded |
| ``num_boxes`` | int32 ``[B]`` | valid rows of ``boxes`` |
| ``mask`` | uint8 ``[B, S, S]`` | only when the split has masks: 1 = foreground |
| ``ignore_mask`` | uint8 ``[B, S, S]`` | only when the split has ignore masks |
| ``id`` | string ``[B]`` | ``image/source_id`` |

Box meaning (``tfrecords/schema.py``): a value ``v`` is the inclusive pixel
coordinate at any size ``S`` as ``v * S``; ``tfrecords.schema.boxes_to_pixels``
gives the metrics' inclusive pixel boxes.

Augmentation follows the RFGA recipe: training resizes to ``resize_size``
squared, takes a random ``crop_size`` crop and flips horizontally with
probability 0.5; evaluation resizes to ``crop_size`` squared (aspect ratio
not kept, as the WSOL protocol does). Boxes and masks go through the same
transform: a crop clips the boxes it cuts and drops those it leaves
entirely. Masks are resized with OpenCV's nearest-neighbour rule
(source index ``floor(x * W / S)``), which the protocol uses for masks.

Distribution: pass ``input_context`` from
``strategy.distribute_datasets_from_function(lambda ctx: make_dataset(...,
batch_size=GLOBAL, input_context=ctx))``; the dataset is then sharded per
input pipeline and batched per replica. Without ``input_context``, batch
with the global batch size and use ``strategy.experimental_distribute_dataset``.

A shard that is truncated or corrupted raises ``tf.errors.InvalidArgumentError``
whose message names the shard (checked against the record count in
``manifest.json`` when the shard ends); ``verify_checksums=True`` checks every
shard's sha256 when the dataset is made (``CorruptShard``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tensorflow as tf

from tfrecords import schema, writer
from tfrecords.errors import CorruptShard, ManifestError

NORMALIZATIONS = ("imagenet", "unit", "symmetric", "raw")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_BOXES = 16


def normalize_images(images_0_255: Any, mode: str = "imagenet") -> tf.Tensor:
    """Maps ``[0, 255]`` pixels to the model's input range; the one place that does it.

    Args:
      images_0_255: ``[..., 3]`` RGB, any real or integer dtype.
      mode: ``imagenet`` ((x / 255 - mean) / std with ImageNet's statistics),
        ``unit`` ([0, 1]), ``symmetric`` ([-1, 1]) or ``raw`` ([0, 255]).

    Returns:
      float32 tensor of the same shape.
    """
    images = tf.cast(images_0_255, tf.float32)
    if mode == "imagenet":
        mean = tf.constant(IMAGENET_MEAN, tf.float32) * 255.0
        std = tf.constant(IMAGENET_STD, tf.float32) * 255.0
        return (images - mean) / std
    if mode == "unit":
        return images / 255.0
    if mode == "symmetric":
        return images / 127.5 - 1.0
    if mode == "raw":
        return images
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the apps need from a converted directory's manifest."""

    data_dir: str
    dataset: str
    class_names: list[str]
    split_sizes: dict[str, int]
    has_masks: dict[str, bool]
    has_ignore_masks: dict[str, bool]
    max_boxes: dict[str, int]
    manifest: dict

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_info(data_dir: str) -> DatasetInfo:
    """Reads ``<data_dir>/manifest.json``: class names, split sizes, masks.

    Raises:
      ManifestError: no manifest (the message says how to convert a data set).
    """
    manifest = writer.read_manifest(data_dir)
    splits = manifest["splits"]
    return DatasetInfo(
        data_dir=data_dir,
        dataset=manifest.get("dataset", ""),
        class_names=list(manifest["class_names"]),
        split_sizes={name: int(split["num_records"]) for name, split in splits.items()},
        has_masks={name: bool(split["has_masks"]) for name, split in splits.items()},
        has_ignore_masks={name: bool(split["has_ignore_masks"]) for name, split in splits.items()},
        max_boxes={name: int(split["max_boxes"]) for name, split in splits.items()},
        manifest=manifest,
    )


def read_manifest(data_dir: str) -> dict:
    """The raw ``manifest.json`` of a converted directory."""
    return writer.read_manifest(data_dir)


# --- reading shards -----------------------------------------------------------


def _read_shard(path: tf.Tensor, expected: tf.Tensor, data_dir: str) -> tf.data.Dataset:
    """Records of one shard; fails, naming the shard, when fewer than the manifest says.

    tf.data's own DataLossError does not name the file; ``ignore_errors``
    ends the shard at a corrupt or truncated record instead, and the count
    check at the end of the shard raises an error that names it.
    """
    records = tf.data.TFRecordDataset(path).ignore_errors(log_warning=True)
    flagged = records.map(lambda record: (record, False))
    end = tf.data.Dataset.from_tensors((tf.constant(b""), True))

    def count(seen, element):
        record, is_end = element
        return seen + tf.cast(tf.logical_not(is_end), tf.int64), (record, is_end, seen)

    def check(record, is_end, seen):
        message = tf.strings.join(
            [
                "wsolkeras.data: shard ",
                path,
                " is truncated or corrupted: read ",
                tf.strings.as_string(seen),
                " of ",
                tf.strings.as_string(expected),
                " records (manifest.json). Check it with: python -m apps.convert --verify "
                f"--output_dir={data_dir}; then reconvert with --overwrite.",
            ]
        )
        ok = tf.logical_or(tf.logical_not(is_end), tf.equal(seen, expected))
        with tf.control_dependencies([tf.debugging.Assert(ok, [message], summarize=1)]):
            return tf.identity(record), is_end

    return (
        flagged.concatenate(end)
        .scan(tf.constant(0, tf.int64), count)
        .map(check)
        .filter(lambda record, is_end: tf.logical_not(is_end))
        .map(lambda record, is_end: record)
    )


def _check_sha256(shards: list[dict], data_dir: str) -> None:
    for shard in shards:
        path = os.path.join(data_dir, shard["file"])
        if not os.path.isfile(path):
            raise CorruptShard(f"{path} is missing (listed in manifest.json): reconvert")
        if writer.file_sha256(path) != shard["sha256"]:
            raise CorruptShard(
                f"{path}: sha256 does not match manifest.json (corrupted or changed); "
                "reconvert with python -m apps.convert ... --overwrite"
            )


# --- decoding and augmentation ------------------------------------------------


def _nearest_indices(source: tf.Tensor, size: int) -> tf.Tensor:
    """OpenCV INTER_NEAREST's source indices: floor(x * (1 / (size / source)))."""
    inverse_scale = 1.0 / (size / tf.cast(source, tf.float64))
    indices = tf.floor(tf.range(size, dtype=tf.float64) * inverse_scale)
    return tf.minimum(tf.cast(indices, tf.int32), tf.cast(source, tf.int32) - 1)


def _resize_mask(mask: tf.Tensor, height: int, width: int) -> tf.Tensor:
    rows = _nearest_indices(tf.shape(mask)[0], height)
    cols = _nearest_indices(tf.shape(mask)[1], width)
    return tf.gather(tf.gather(mask, rows, axis=0), cols, axis=1)


def _decode_mask(png: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.io.decode_png(png, channels=1)[..., 0] > 0, tf.uint8)


def _decode(serialized: tf.Tensor, with_mask: bool, with_ignore: bool) -> dict:
    example = schema.parse_example(serialized)
    image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    element = {
        "image": image,
        "label": example["label"],
        "boxes": example["boxes"],
        "id": example["id"],
    }
    if with_mask:
        element["mask"] = _decode_mask(example["mask_png"])
    if with_ignore:
        element["ignore_mask"] = _decode_mask(example["ignore_png"])
    return element


def _pad_boxes(boxes: tf.Tensor, max_boxes: int) -> tuple[tf.Tensor, tf.Tensor]:
    boxes = boxes[:max_boxes]
    count = tf.shape(boxes)[0]
    padded = tf.pad(boxes, [[0, max_boxes - count], [0, 0]])
    padded.set_shape([max_boxes, 4])
    return padded, count


def _augment(
    element: dict,
    seed: tf.Tensor | None,
    *,
    training: bool,
    crop_size: int,
    resize_size: int,
    flip: bool,
    max_boxes: int,
    normalization: str,
    antialias: bool,
) -> dict:
    image = element["image"]
    boxes = tf.reshape(tf.cast(element["boxes"], tf.float32), [-1, 4])
    masks = {key: element[key] for key in ("mask", "ignore_mask") if key in element}
    if not training:
        image = tf.image.resize(image, [crop_size, crop_size], antialias=antialias)
        masks = {key: _resize_mask(mask, crop_size, crop_size) for key, mask in masks.items()}
    else:
        size, crop = resize_size, crop_size
        image = tf.image.resize(image, [size, size], antialias=antialias)
        masks = {key: _resize_mask(mask, size, size) for key, mask in masks.items()}
        draws = tf.random.stateless_uniform([3], seed=seed)
        offset = tf.cast(tf.floor(draws[:2] * (size - crop + 1)), tf.int32)
        offset = tf.minimum(offset, size - crop)
        image = image[offset[0] : offset[0] + crop, offset[1] : offset[1] + crop]
        masks = {
            key: mask[offset[0] : offset[0] + crop, offset[1] : offset[1] + crop]
            for key, mask in masks.items()
        }
        # Boxes: pixel p = v * size; in the crop p - offset, clipped to the crop
        # (a box that leaves the crop entirely is dropped), normalised by crop.
        # The 1e-3 px tolerance absorbs float32 rounding of v * size (70 / 100 * 100
        # is 69.99999), which would otherwise drop a box whose edge is the crop's.
        pixels = boxes * float(size) - tf.cast(tf.tile(offset, [2]), tf.float32)
        inside = (
            (pixels[:, 2] >= -1e-3)
            & (pixels[:, 3] >= -1e-3)
            & (pixels[:, 0] <= crop - 1 + 1e-3)
            & (pixels[:, 1] <= crop - 1 + 1e-3)
        )
        pixels = tf.clip_by_value(tf.boolean_mask(pixels, inside), 0.0, float(crop - 1))
        boxes = pixels / float(crop)
        if flip:
            flipped = draws[2] < 0.5
            image = tf.cond(flipped, lambda: tf.reverse(image, [1]), lambda: image)
            masks = {
                key: tf.cond(flipped, lambda m=mask: tf.reverse(m, [1]), lambda m=mask: m)
                for key, mask in masks.items()
            }
            # Inclusive pixel x maps to crop - 1 - x; min and max swap.
            last = (crop - 1) / crop
            mirrored = tf.stack(
                [boxes[:, 0], last - boxes[:, 3], boxes[:, 2], last - boxes[:, 1]], -1
            )
            boxes = tf.cond(flipped, lambda: mirrored, lambda: boxes)
    image.set_shape([crop_size, crop_size, 3])
    padded, count = _pad_boxes(boxes, max_boxes)
    result = {
        "image": normalize_images(image, normalization),
        "label": element["label"],
        "boxes": padded,
        "num_boxes": count,
        "id": element["id"],
    }
    for key, mask in masks.items():
        mask.set_shape([crop_size, crop_size])
        result[key] = mask
    return result


def make_dataset(
    data_dir: str,
    split: str,
    *,
    training: bool,
    batch_size: int,
    crop_size: int = 224,
    resize_size: int = 256,
    normalization: str = "imagenet",
    max_boxes: int = DEFAULT_MAX_BOXES,
    flip: bool = True,
    shuffle: bool | None = None,
    shuffle_buffer: int = 1024,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    cache: bool | str = False,
    with_masks: bool | None = None,
    deterministic: bool | None = None,
    seed: int | None = None,
    antialias: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    verify_checksums: bool = False,
    cycle_length: int = 8,
) -> tf.data.Dataset:
    """The tf.data pipeline of one split of a converted directory.

    Args:
      data_dir: a folder written by ``python -m apps.convert`` (with
        ``manifest.json``).
      split: e.g. ``train``, ``val``, ``test``.
      training: random crop and flip (and, by default, shuffle and drop the
        last partial batch); otherwise resize to ``crop_size`` squared.
      batch_size: the GLOBAL batch size; with ``input_context`` each replica
        gets its share.
      crop_size: output side ``S``.
      resize_size: side the image is resized to before the random crop
        (training only); must be >= ``crop_size``.
      normalization: see ``normalize_images``.
      max_boxes: boxes kept per image (extra ones are dropped).
      flip: horizontal flip with probability 0.5 when training.
      shuffle: shuffle shards and records (default: ``training``).
      shuffle_buffer: records in the shuffle buffer.
      repeat: repeat forever.
      drop_remainder: default ``training``.
      cache: cache decoded images (and masks) in memory (True) or in a file
        (a path); augmentation runs after the cache.
      with_masks: yield ``mask``/``ignore_mask`` (default: when the split has
        them for every record).
      deterministic: same elements in the same order for the same ``seed``
        (default: ``not training``, so evaluation keeps the shards' order;
        training allows reordering, which is faster).
      seed: seeds shuffling and augmentation (default 0 when deterministic).
      antialias: antialiased resize (closer to PIL; slower).
      input_context: from ``distribute_datasets_from_function``.
      verify_checksums: check every shard's sha256 first.
      cycle_length: shards read at once.

    Returns:
      A ``tf.data.Dataset`` of dicts (module docstring).

    Raises:
      ManifestError: no manifest, or no such split (the message lists them).
      CorruptShard: ``verify_checksums`` found a changed shard.
      ValueError: a bad argument.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if training and resize_size < crop_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= crop_size ({crop_size})")
    if batch_size < 1 or crop_size < 1 or max_boxes < 1:
        raise ValueError("batch_size, crop_size and max_boxes must be >= 1")
    manifest = writer.read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise ManifestError(
            f"{data_dir} has no split {split!r}; it has {sorted(manifest['splits'])}"
        )
    info = manifest["splits"][split]
    shards = [shard for shard in info["shards"] if shard["num_records"] > 0]
    if not shards:
        raise ManifestError(f"{data_dir}: split {split!r} has no records")
    if verify_checksums:
        _check_sha256(shards, data_dir)
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    deterministic = not training if deterministic is None else deterministic
    if deterministic and seed is None:
        seed = 0
    with_mask = info["has_masks"] if with_masks is None else with_masks and info["has_masks"]
    with_ignore = (
        info["has_ignore_masks"]
        if with_masks is None
        else (with_masks and info["has_ignore_masks"])
    )

    paths = [os.path.join(data_dir, shard["file"]) for shard in shards]
    counts = [int(shard["num_records"]) for shard in shards]
    files = tf.data.Dataset.from_tensor_slices((paths, tf.constant(counts, tf.int64)))
    per_replica_batch = batch_size
    shard_records = None
    if input_context is not None:
        per_replica_batch = input_context.get_per_replica_batch_size(batch_size)
        pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
        if pipelines > 1 and len(paths) >= pipelines:
            files = files.shard(pipelines, pipeline)
        elif pipelines > 1:
            shard_records = (pipelines, pipeline)
    if shuffle:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(
        lambda path, count: _read_shard(path, count, data_dir),
        cycle_length=min(cycle_length, len(paths)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True if deterministic else None,
    )
    if shard_records is not None:
        records = records.shard(*shard_records)

    def decode(serialized):
        return _decode(serialized, with_mask, with_ignore)

    augment_args = dict(
        training=training,
        crop_size=crop_size,
        resize_size=resize_size,
        flip=flip,
        max_boxes=max_boxes,
        normalization=normalization,
        antialias=antialias,
    )
    # Per-element seeds for the stateless random ops: a seeded stream that
    # is drawn anew each epoch, so runs repeat and epochs differ.
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    if cache:
        elements = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        elements = elements.cache(cache if isinstance(cache, str) else "")
        if shuffle:
            elements = elements.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            elements = elements.repeat()
        elements = tf.data.Dataset.zip((elements, randoms)).map(
            lambda element, draw: _augment(element, draw, **augment_args),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        if shuffle:
            records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            records = records.repeat()
        elements = tf.data.Dataset.zip((records, randoms)).map(
            lambda serialized, draw: _augment(decode(serialized), draw, **augment_args),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = elements.batch(
        per_replica_batch, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    if input_context is None:
        # Records are already split per pipeline by input_context; without it,
        # let a strategy shard by data (shards are not balanced per worker).
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
    return dataset.with_options(options)
