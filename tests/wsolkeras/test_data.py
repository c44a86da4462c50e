"""The tf.data pipeline: element format, augmentation geometry, determinism, corrupt shards."""

import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfrecords import schema, writer
from tfrecords.converters import synthetic
from tfrecords.errors import CorruptShard, ManifestError
from tfrecords.source import Source
from wsolkeras import data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 64


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    output = tmp_path_factory.mktemp("synthetic")
    source = synthetic.make_source(
        num_classes=5, image_size=SIZE, train_size=40, val_size=12, test_size=0, seed=5
    )
    writer.write_dataset(source, str(output), records_per_shard=16, workers=0, progress=False)
    return str(output)


def _originals(data_dir, split):
    """id -> (image RGB uint8, mask {0,1}, pixel boxes) decoded independently with OpenCV."""
    manifest = writer.read_manifest(data_dir)
    paths = [os.path.join(data_dir, s["file"]) for s in manifest["splits"][split]["shards"]]
    result = {}
    for serialized in tf.data.TFRecordDataset(paths):
        example = tf.train.Example.FromString(serialized.numpy())
        feature = example.features.feature
        # TensorFlow's decoder: OpenCV's JPEG decoding differs by about a level.
        image = tf.io.decode_image(feature["image/encoded"].bytes_list.value[0]).numpy()
        mask_png = feature["image/segmentation/mask"].bytes_list.value
        mask = (
            (cv2.imdecode(np.frombuffer(mask_png[0], np.uint8), cv2.IMREAD_UNCHANGED) > 0).astype(
                np.uint8
            )
            if mask_png
            else None
        )
        height, width = image.shape[:2]
        boxes = np.stack(
            [
                np.array(feature[f"image/object/bbox/{key}"].float_list.value) * scale
                for key, scale in (
                    ("xmin", width),
                    ("ymin", height),
                    ("xmax", width),
                    ("ymax", height),
                )
            ],
            -1,
        )
        result[feature["image/source_id"].bytes_list.value[0].decode()] = (image, mask, boxes)
    return result


def _elements(dataset):
    for batch in dataset:
        batch = {key: value.numpy() for key, value in batch.items()}
        for i in range(len(batch["id"])):
            yield {key: value[i] for key, value in batch.items()}


def test_normalize_images_modes():
    pixels = np.array([[0.0, 127.5, 255.0]], np.float32)
    mean, std = np.array(data.IMAGENET_MEAN), np.array(data.IMAGENET_STD)
    np.testing.assert_allclose(
        data.normalize_images(pixels, "imagenet"), (pixels / 255 - mean) / std, rtol=1e-6
    )
    np.testing.assert_allclose(data.normalize_images(pixels, "unit"), [[0, 0.5, 1]])
    np.testing.assert_allclose(data.normalize_images(pixels, "symmetric"), [[-1, 0, 1]])
    np.testing.assert_allclose(data.normalize_images(pixels, "raw"), pixels)
    with pytest.raises(ValueError, match="normalization must be one of"):
        data.normalize_images(pixels, "caffe")


def test_evaluation_elements_follow_the_protocol(synthetic_dir):
    crop = 48
    dataset = data.make_dataset(
        synthetic_dir,
        "val",
        training=False,
        batch_size=5,
        crop_size=crop,
        normalization="raw",
        max_boxes=4,
    )
    spec = dataset.element_spec
    assert set(spec) == {"image", "label", "boxes", "num_boxes", "mask", "id"}
    assert spec["image"].shape.as_list() == [None, crop, crop, 3]
    assert spec["image"].dtype == tf.float32 and spec["label"].dtype == tf.int32
    assert spec["boxes"].shape.as_list() == [None, 4, 4] and spec["mask"].dtype == tf.uint8
    assert spec["num_boxes"].dtype == tf.int32 and spec["id"].dtype == tf.string
    originals = _originals(synthetic_dir, "val")
    seen = []
    for element in _elements(dataset):
        image, mask, boxes = originals[element["id"].decode()]
        seen.append(element["id"].decode())
        # Boxes at the evaluation size: the protocol's floor(x * S / W).
        expected = np.floor(boxes * crop / SIZE + 1e-9).astype(int)
        pixels = schema.boxes_to_pixels(element["boxes"][None], [element["num_boxes"]], crop)
        assert pixels[0].tolist() == expected.tolist()
        assert element["boxes"][element["num_boxes"] :].sum() == 0
        # Masks: OpenCV's nearest-neighbour resize, as the protocol.
        cv_mask = cv2.resize(mask, (crop, crop), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(element["mask"], cv_mask)
        # Image: the whole image resized (aspect not kept), 0..255 in "raw" mode. (The
        # JPEG decoders of TF and OpenCV differ by about a level; a shifted or cropped
        # image would differ by tens.)
        reference = cv2.resize(
            image.astype(np.float32), (crop, crop), interpolation=cv2.INTER_LINEAR
        )
        assert np.abs(element["image"] - reference).mean() < 3.0
    assert sorted(seen) == sorted(originals)  # every record once, in order of the shards
    assert seen == [f"val/{i:06d}" for i in range(12)]


@pytest.mark.parametrize("source_size,crop", [(50, 37), (300, 224), (64, 48), (17, 100)])
def test_mask_resize_equals_opencv_nearest(source_size, crop):
    rng = np.random.default_rng(source_size)
    mask = rng.integers(0, 2, (source_size, source_size + 7)).astype(np.uint8)
    ours = data._resize_mask(tf.constant(mask), crop, crop + 3).numpy()
    assert np.array_equal(ours, cv2.resize(mask, (crop + 3, crop), interpolation=cv2.INTER_NEAREST))


def _find_transform(original_mask, output_mask, resize, crop):
    """(offset_y, offset_x, flipped) that carries the resized mask to the output, by search."""
    resized = cv2.resize(original_mask, (resize, resize), interpolation=cv2.INTER_NEAREST)
    found = []
    for oy in range(resize - crop + 1):
        for ox in range(resize - crop + 1):
            window = resized[oy : oy + crop, ox : ox + crop]
            for flipped in (False, True):
                candidate = window[:, ::-1] if flipped else window
                if np.array_equal(candidate, output_mask):
                    found.append((oy, ox, flipped))
    return found


def test_augmentation_moves_image_mask_and_boxes_together(synthetic_dir):
    resize, crop = 80, 64  # upscaling: nearest-neighbour keeps every mask pixel
    dataset = data.make_dataset(
        synthetic_dir,
        "train",
        training=True,
        batch_size=8,
        crop_size=crop,
        resize_size=resize,
        normalization="raw",
        deterministic=True,
        seed=1,
    )
    originals = _originals(synthetic_dir, "train")
    flips, dropped, exact = set(), 0, 0
    for element in _elements(dataset):
        image, mask, _ = originals[element["id"].decode()]
        out_mask = element["mask"]
        pixels = schema.boxes_to_pixels(element["boxes"][None], [element["num_boxes"]], crop)[0]
        if not out_mask.any():
            assert element["num_boxes"] == 0  # the crop left the object: its box is dropped
            dropped += 1
            continue
        ys, xs = np.nonzero(out_mask)
        mask_box = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
        assert element["num_boxes"] == 1
        box = pixels[0]
        if box.min() > 0 and box.max() < crop - 1:
            # The box computed from the transformed mask equals the transformed box.
            np.testing.assert_allclose(box, mask_box, atol=1)
            exact += 1
        else:
            # The crop cut the object: its clipped box holds the visible part of the mask
            # (which can be narrower: the object's widest part may lie outside the crop).
            assert np.all(mask_box[:2] >= box[:2] - 1) and np.all(mask_box[2:] <= box[2:] + 1)
        # The image went through the same crop and flip as the mask.
        candidates = _find_transform(mask, out_mask, resize, crop)
        assert candidates
        resized = tf.image.resize(image, [resize, resize]).numpy()
        matches = []
        for oy, ox, flipped in candidates:
            window = resized[oy : oy + crop, ox : ox + crop]
            window = window[:, ::-1] if flipped else window
            matches.append(np.abs(window - element["image"]).max() < 1e-3)
            if matches[-1]:
                flips.add(flipped)
        assert any(matches)
    assert flips == {False, True}
    assert exact >= 10


def _grid_load(item):
    """A 100x100 image whose pixels encode their coordinates (R = x, G = y), with boxes."""
    index, boxes = item
    y, x = np.mgrid[0:100, 0:100]
    image = np.stack([x, y, np.full_like(x, index)], -1).astype(np.uint8)
    masks = []
    for region in (np.s_[3:31, 2:21], np.s_[80:, :10]):  # foreground: the first box
        mask = np.zeros((100, 100), np.uint8)
        mask[region] = 255
        masks.append(cv2.imencode(".png", mask)[1].tobytes())
    ok, png = cv2.imencode(".png", image[..., ::-1])
    assert ok
    return schema.Record(
        png.tobytes(),
        "png",
        100,
        100,
        f"grid{index}.png",
        f"grid{index}",
        0,
        "grid",
        np.array(boxes, np.float64),
        mask_png=masks[0],
        ignore_png=masks[1],
    )


BOXES = [[2, 3, 20, 30], [60, 55, 98, 97], [40, 10, 70, 45]]


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    output = tmp_path_factory.mktemp("grid")
    source = Source("grid", ["grid"], {"train": [(i, BOXES) for i in range(24)]}, _grid_load, {})
    writer.write_dataset(source, str(output), records_per_shard=8, workers=0, progress=False)
    return str(output)


def test_crop_clips_and_drops_boxes_as_the_equations_say(grid_dir):
    crop = 50
    dataset = data.make_dataset(
        grid_dir,
        "train",
        training=True,
        batch_size=6,
        crop_size=crop,
        resize_size=100,
        normalization="raw",
        max_boxes=3,
        seed=7,
    )
    seen_drop = seen_flip = False
    for _ in range(3):
        for element in _elements(dataset):
            image = element["image"]
            flipped = image[0, 0, 0] > image[0, -1, 0]
            ox = int(round(image[0, -1 if flipped else 0, 0]))
            oy = int(round(image[0, 0, 1]))
            expected = []
            for x0, y0, x1, y1 in BOXES:
                x0, x1, y0, y1 = x0 - ox, x1 - ox, y0 - oy, y1 - oy
                if x1 < 0 or y1 < 0 or x0 > crop - 1 or y0 > crop - 1:
                    continue
                x0, x1 = np.clip([x0, x1], 0, crop - 1)
                y0, y1 = np.clip([y0, y1], 0, crop - 1)
                if flipped:
                    x0, x1 = crop - 1 - x1, crop - 1 - x0
                expected.append([y0 / crop, x0 / crop, y1 / crop, x1 / crop])
            seen_drop |= len(expected) < 3
            seen_flip |= bool(flipped)
            assert element["num_boxes"] == len(expected)
            got = element["boxes"][: len(expected)]
            np.testing.assert_allclose(got, np.reshape(expected, (-1, 4)), atol=1e-5)
            assert not element["boxes"][len(expected) :].any()
    assert seen_drop and seen_flip


def test_max_boxes_keeps_the_first_ones(grid_dir):
    dataset = data.make_dataset(
        grid_dir, "train", training=False, batch_size=4, crop_size=20, max_boxes=2
    )
    element = next(_elements(dataset))
    assert element["num_boxes"] == 2 and element["boxes"].shape == (2, 4)
    np.testing.assert_allclose(element["boxes"][1], [0.55, 0.6, 0.97, 0.98], rtol=1e-6)
    # Ignore masks travel with the masks.
    ignore = np.zeros((100, 100), np.uint8)
    ignore[80:, :10] = 1
    expected = cv2.resize(ignore, (20, 20), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(element["ignore_mask"], expected)
    assert element["mask"].sum() > 0 and not (element["mask"] & element["ignore_mask"]).any()


def _ids_and_first_image(dataset):
    ids, images = [], []
    for batch in dataset:
        ids.extend(batch["id"].numpy().tolist())
        images.append(batch["image"].numpy()[0])
    return ids, np.stack(images)


def test_deterministic_mode_repeats_and_epochs_differ(synthetic_dir):
    def make(seed):
        return data.make_dataset(
            synthetic_dir,
            "train",
            training=True,
            batch_size=8,
            crop_size=48,
            resize_size=56,
            deterministic=True,
            seed=seed,
        )

    first = make(3)
    ids_a, images_a = _ids_and_first_image(first)
    ids_b, images_b = _ids_and_first_image(make(3))
    assert ids_a == ids_b and np.array_equal(images_a, images_b)
    assert len(ids_a) == 40 and len(set(ids_a)) == 40  # shuffled, each once
    assert ids_a != sorted(ids_a)
    ids_c, _ = _ids_and_first_image(make(4))
    assert ids_c != ids_a
    ids_epoch2, images_epoch2 = _ids_and_first_image(first)  # the same dataset, again
    assert ids_epoch2 != ids_a or not np.array_equal(images_epoch2, images_a)


def test_cache_gives_the_same_elements(synthetic_dir):
    plain = data.make_dataset(synthetic_dir, "val", training=False, batch_size=4, crop_size=32)
    cached = data.make_dataset(
        synthetic_dir, "val", training=False, batch_size=4, crop_size=32, cache=True
    )
    for _ in range(2):  # the second pass reads the cache
        for a, b in zip(_elements(plain), _elements(cached), strict=True):
            assert a["id"] == b["id"] and np.array_equal(a["image"], b["image"])
            assert np.array_equal(a["mask"], b["mask"])


def test_input_context_splits_the_data_and_the_batch(synthetic_dir):
    ids = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2
        )
        dataset = data.make_dataset(
            synthetic_dir,
            "train",
            training=True,
            batch_size=8,
            crop_size=32,
            resize_size=40,
            input_context=context,
        )
        batches = [batch["id"].numpy().tolist() for batch in dataset]
        assert all(len(batch) == 4 for batch in batches)
        ids.append({i for batch in batches for i in batch})
    assert not ids[0] & ids[1]
    assert len(ids[0] | ids[1]) >= 40 - 2 * 3  # only partial last batches are dropped


def test_mirrored_strategy_over_two_logical_cpus(synthetic_dir):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from wsolkeras import data
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        for mode in ("function", "dataset"):
            if mode == "function":
                dist = strategy.distribute_datasets_from_function(
                    lambda ctx: data.make_dataset({synthetic_dir!r}, "train", training=True,
                        batch_size=8, crop_size=32, resize_size=40, input_context=ctx))
            else:
                dist = strategy.experimental_distribute_dataset(
                    data.make_dataset({synthetic_dir!r}, "train", training=True,
                        batch_size=8, crop_size=32, resize_size=40))

            @tf.function
            def step(batch):
                def per_replica(b):
                    return tf.shape(b["image"])[0], tf.reduce_sum(b["num_boxes"])
                return strategy.run(per_replica, args=(batch,))

            ids = []
            for batch in dist:
                sizes, _ = step(batch)
                assert [int(s) for s in strategy.experimental_local_results(sizes)] == [4, 4]
                for local in strategy.experimental_local_results(batch["id"]):
                    ids.extend(local.numpy().tolist())
            assert len(ids) == 40 and len(set(ids)) == 40, (mode, len(ids))
        print("OK")
    """)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_a_corrupt_shard_is_named_by_the_pipeline(synthetic_dir, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_dir, copy)
    shard = copy / "train-00001-of-00003.tfrecord"
    content = bytearray(shard.read_bytes())
    if damage == "flip_byte":
        content[len(content) // 2] ^= 0x10
    else:
        content = content[: len(content) * 2 // 3]
    shard.write_bytes(bytes(content))
    dataset = data.make_dataset(
        str(copy), "train", training=True, batch_size=4, crop_size=32, resize_size=40
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="train-00001-of-00003.tfrecord"):
        for _ in dataset:
            pass
    with pytest.raises(CorruptShard, match="train-00001-of-00003.tfrecord: sha256"):
        data.make_dataset(
            str(copy),
            "train",
            training=True,
            batch_size=4,
            crop_size=32,
            resize_size=40,
            verify_checksums=True,
        )
    assert any("train-00001-of-00003.tfrecord" in p for p in writer.verify(str(copy)))


def test_clear_errors_for_bad_arguments(synthetic_dir, tmp_path):
    with pytest.raises(ManifestError, match=r"no split 'test2'.*\['test', 'train', 'val'\]"):
        data.make_dataset(synthetic_dir, "test2", training=False, batch_size=2)
    with pytest.raises(ManifestError, match="split 'test' has no records"):
        data.make_dataset(synthetic_dir, "test", training=False, batch_size=2)
    with pytest.raises(ManifestError, match="python -m apps.convert"):
        data.make_dataset(str(tmp_path), "train", training=False, batch_size=2)
    with pytest.raises(ValueError, match="resize_size"):
        data.make_dataset(
            synthetic_dir, "train", training=True, batch_size=2, crop_size=64, resize_size=32
        )


def test_read_info(synthetic_dir):
    info = data.read_info(synthetic_dir)
    assert info.num_classes == 5 and info.class_names == synthetic.class_names(5)
    assert info.split_sizes == {"train": 40, "val": 12, "test": 0}
    assert info.has_masks["train"] and not info.has_ignore_masks["train"]
    assert info.dataset == "synthetic"
