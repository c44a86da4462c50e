"""Export a trained WSOL model for TF Serving: image bytes in; class, box and heat map out.

:func:`export_model` writes ``<export_dir>/<model_name>/<version>/`` (TF
Serving's layout, an integer version; written under a temporary name and
renamed when complete) with three signatures:

- ``serving_default``: ``image_bytes``, a batch of encoded JPEG/PNG strings
  (any size; grayscale, RGB or RGBA: alpha is dropped), decoded, resized to
  the model's input size and normalised in the graph; bytes that are not a
  JPEG/PNG image fail with an ``InvalidArgumentError`` saying so;
- ``serving_images``: ``images``, decoded float32 RGB ``[B, H, W, 3]`` in
  [0, 255] of any size (resized in the graph).

Both return ``class_ids`` and ``scores`` (softmax, top-k), ``class_names``,
``boxes`` (normalised ``[ymin, xmin, ymax, xmax]`` for the top-1 class at the
chosen threshold tau) and ``heatmaps`` ``[B, S, S]`` in [0, 1] at the input
size ``S``.

- ``localize_class``: ``images`` as above and ``class_ids`` ``[B]`` int32
  (the class to localise in each image) -> ``logits`` ``[B, C]``,
  ``raw_maps`` (the extractor's maps before upsampling), ``heatmaps`` and
  ``boxes`` for those classes. ``apps.evaluate`` uses it to evaluate a
  SavedModel with ground-truth classes, as the protocol does.

The class names ship as an asset, ``assets/class_names.txt`` (one name per
line, a ``tf.saved_model.Asset`` read by a lookup table), so the SavedModel
needs nothing beside it. :class:`Localizer` is that computation outside a
SavedModel (``apps.extract`` on a ``--model_dir``): one implementation.

What the graph computes, against the protocol (``WSOL_PROTOCOL.md`` §1):

- heat map: the extractor's raw map upsampled with OpenCV's bicubic kernel
  (Keys, a = -0.75; done as two constant matrix products that equal
  ``cv2.resize(..., INTER_CUBIC)``), then min-max normalised per image
  (constant or NaN maps give zeros) -- the protocol's score map, in float32;
- foreground at tau: ``q = floor(255 * s)``, a pixel is foreground when
  ``q > floor(tau * max(q))`` -- the protocol's rule;
- box: the bounding box of the LARGEST 8-CONNECTED FOREGROUND COMPONENT by
  pixel count, widened by one pixel right and down as the reference's
  ``boundingRect`` box is: ``(x0, y0, min(x1 + 1, S - 1), min(y1 + 1, S - 1))``.
  The protocol's MaxBoxAcc (v1) picks the contour with the largest polygon
  area instead; the two agree unless two components are nearly the same
  size, or one is a one-pixel-wide line (polygon area 0). No foreground
  gives ``(0, 0, 0, 0)``. Normalised: pixel / S, as the TFRecord convention
  (``docs/INTERFACES.md``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import cv2
import keras
import numpy as np
import tensorflow as tf

from wsolkeras import atomic

log = logging.getLogger(__name__)

BOX_RULE = "largest 8-connected component above tau (pixel count), protocol box rule"
SIGNATURE_IMAGE_BYTES = "serving_default"
SIGNATURE_IMAGES = "serving_images"
SIGNATURE_CLASS = "localize_class"
INFO_FILE = "wsolkeras.json"


# --- in-graph score maps and boxes -------------------------------------------


def cubic_resize_matrices(height: int, width: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows [size, h]``, ``cols [w, size]``: ``rows @ m @ cols`` is OpenCV's bicubic resize.

    OpenCV's resize is separable, so resizing the identity gives its matrix.
    """
    rows = cv2.resize(np.eye(height), (height, size), interpolation=cv2.INTER_CUBIC)
    cols = cv2.resize(np.eye(width), (size, width), interpolation=cv2.INTER_CUBIC)
    return rows.astype(np.float32), cols.astype(np.float32)


def scoremaps(raw_maps: tf.Tensor, size: int) -> tf.Tensor:
    """Raw maps ``[B, h, w]`` -> score maps ``[B, size, size]`` in [0, 1], in the graph.

    Bicubic (OpenCV's kernel) upsampling, then per-image min-max; a constant
    map or one with NaN becomes zeros (``WSOL_PROTOCOL.md`` §1).
    """
    raw_maps = tf.cast(raw_maps, tf.float32)
    height, width = raw_maps.shape[1], raw_maps.shape[2]
    if height is None or width is None:
        raise ValueError("scoremaps needs maps of a static size [B, h, w]")
    rows, cols = cubic_resize_matrices(height, width, size)
    up = tf.einsum("sh,bhw,wt->bst", rows, raw_maps, cols)
    low = tf.reduce_min(up, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(up, axis=[1, 2], keepdims=True)
    span = high - low
    valid = tf.logical_and(span > 0, tf.math.is_finite(span))
    normalised = tf.math.divide_no_nan(up - low, tf.where(valid, span, tf.ones_like(span)))
    return tf.where(valid, normalised, tf.zeros_like(up))


def foreground(scoremaps: tf.Tensor, tau: float | tf.Tensor) -> tf.Tensor:
    """The protocol's binarisation: ``floor(255 s) > floor(tau * max(floor(255 s)))``."""
    q = tf.floor(tf.cast(scoremaps, tf.float64) * 255.0)
    cut = tf.floor(tf.cast(tau, tf.float64) * tf.reduce_max(q, axis=[1, 2], keepdims=True))
    return q > cut


def _run_max(labels: tf.Tensor, inside: tf.Tensor) -> tf.Tensor:
    """Gives every pixel of each horizontal foreground run the run's largest label."""
    batch, height, width = tf.shape(labels)[0], tf.shape(labels)[1], tf.shape(labels)[2]
    before = tf.pad(inside[:, :, :-1], [[0, 0], [0, 0], [1, 0]])
    starts = tf.logical_and(inside, tf.logical_not(before))
    run = tf.cumsum(tf.cast(starts, tf.int32), axis=2) * tf.cast(inside, tf.int32)
    row = tf.reshape(tf.range(batch * height), [batch, height, 1])
    ids = row * (width + 1) + run
    best = tf.math.unsorted_segment_max(labels, ids, num_segments=batch * height * (width + 1))
    return tf.gather(best, ids) * tf.cast(inside, labels.dtype)


def _component_labels(mask: tf.Tensor) -> tf.Tensor:
    """8-connected component labels of ``mask`` ``[B, H, W]`` (0 = background).

    Every foreground pixel starts with its own raster index + 1; each pass
    spreads the largest label along whole horizontal runs, then vertical
    runs, then to the 8 neighbours (a 3x3 max filter kept inside the
    foreground), until nothing changes. A pass crosses a whole straight run,
    so blob-like components settle in a few passes.
    """
    mask = tf.cast(mask, tf.bool)
    height, width = tf.shape(mask)[1], tf.shape(mask)[2]
    inside_t = tf.transpose(mask, [0, 2, 1])
    inside4 = tf.cast(mask, tf.float32)[..., None]
    index = tf.reshape(tf.range(1, height * width + 1, dtype=tf.float32), [1, height, width])
    labels = tf.cast(mask, tf.float32) * index

    def spread(labels, _):
        grown = _run_max(labels, mask)
        grown = tf.transpose(_run_max(tf.transpose(grown, [0, 2, 1]), inside_t), [0, 2, 1])
        grown = tf.nn.max_pool2d(grown[..., None], ksize=3, strides=1, padding="SAME")
        grown = (grown * inside4)[..., 0]
        return grown, tf.reduce_any(tf.not_equal(grown, labels))

    labels, _ = tf.while_loop(
        lambda labels, changed: changed,
        spread,
        (labels, tf.constant(True)),
        maximum_iterations=height * width,
    )
    return tf.cast(labels, tf.int32)


def largest_component_boxes(mask: tf.Tensor) -> tf.Tensor:
    """Inclusive pixel boxes ``[B, 4]`` ``(x0, y0, x1, y1)`` of each image's largest component.

    The box is widened by one pixel right and down (clipped to the image) as
    the protocol's reference does; no foreground gives ``(0, 0, 0, 0)``.
    """
    mask = tf.convert_to_tensor(mask)
    batch, height, width = tf.shape(mask)[0], tf.shape(mask)[1], tf.shape(mask)[2]
    labels = _component_labels(mask)
    pixels = height * width
    flat = tf.reshape(labels, [batch, pixels])
    offsets = tf.range(batch)[:, None] * (pixels + 1)
    counts = tf.math.unsorted_segment_sum(
        tf.ones_like(flat), flat + offsets, num_segments=batch * (pixels + 1)
    )
    counts = tf.reshape(counts, [batch, pixels + 1])[:, 1:]
    best = tf.cast(tf.argmax(counts, axis=1, output_type=tf.int32) + 1, tf.int32)
    chosen = tf.equal(labels, best[:, None, None])
    chosen = tf.logical_and(chosen, tf.reduce_any(counts > 0, axis=1)[:, None, None])
    rows = tf.reduce_any(chosen, axis=2)
    cols = tf.reduce_any(chosen, axis=1)
    y0 = tf.argmax(tf.cast(rows, tf.int32), axis=1, output_type=tf.int32)
    x0 = tf.argmax(tf.cast(cols, tf.int32), axis=1, output_type=tf.int32)
    y1 = height - 1 - tf.argmax(tf.cast(rows[:, ::-1], tf.int32), axis=1, output_type=tf.int32)
    x1 = width - 1 - tf.argmax(tf.cast(cols[:, ::-1], tf.int32), axis=1, output_type=tf.int32)
    x1 = tf.minimum(x1 + 1, width - 1)
    y1 = tf.minimum(y1 + 1, height - 1)
    boxes = tf.stack([x0, y0, x1, y1], axis=1)
    found = tf.reduce_any(rows, axis=1)[:, None]
    return tf.where(found, boxes, tf.zeros_like(boxes))


def boxes_at_tau(scoremaps: tf.Tensor, tau: float | tf.Tensor) -> tf.Tensor:
    """Normalised ``[ymin, xmin, ymax, xmax]`` boxes ``[B, 4]`` (pixel / size) at threshold tau."""
    pixel = largest_component_boxes(foreground(scoremaps, tau))
    height = tf.cast(tf.shape(scoremaps)[1], tf.float32)
    width = tf.cast(tf.shape(scoremaps)[2], tf.float32)
    x0, y0, x1, y1 = tf.unstack(tf.cast(pixel, tf.float32), axis=1)
    return tf.stack([y0 / height, x0 / width, y1 / height, x1 / width], axis=1)


# --- the serving model -------------------------------------------------------


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


def check_image_bytes(image_bytes: tf.Tensor) -> tf.Tensor:
    """``image_bytes`` unchanged, failing (``InvalidArgumentError``) unless all are JPEG/PNG.

    The message names the input and the indices of the strings that do not
    start with a JPEG or PNG signature; a truncated image with a valid
    signature fails in the decoder instead ("Invalid JPEG data" / "PNG").
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    is_png = tf.equal(tf.strings.substr(image_bytes, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, len(JPEG_SIGNATURE)), JPEG_SIGNATURE)
    valid = tf.logical_or(is_png, is_jpeg)
    check = tf.debugging.Assert(
        tf.reduce_all(valid),
        ["image_bytes: the bytes are not a JPEG/PNG image at indices", tf.where(~valid)[:, 0]],
        summarize=16,
    )
    with tf.control_dependencies([check]):
        return tf.identity(image_bytes)


def decode_images(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded JPEG/PNG strings ``[B]`` -> float32 RGB ``[B, size, size, 3]``, 0..255.

    Grayscale is repeated to RGB and alpha is dropped (``decode_image`` with
    3 channels); anything else fails (:func:`check_image_bytes`).
    """
    image_bytes = check_image_bytes(image_bytes)

    def decode_one(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return resize_images(tf.cast(image, tf.float32)[None], size)[0]

    return tf.map_fn(
        decode_one, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32)
    )


def resize_images(images: tf.Tensor, size: int) -> tf.Tensor:
    """The evaluation resize: straight to ``size x size`` (aspect not kept), as test images are."""
    return tf.image.resize(images, [size, size], method="bilinear")


CLASS_NAMES_ASSET = "class_names.txt"


def class_name_table(path: str | tf.saved_model.Asset) -> tf.lookup.StaticHashTable:
    """A table from class id (int64) to name, read from a text file of one name per line."""
    initializer = tf.lookup.TextFileInitializer(
        path,
        key_dtype=tf.int64,
        key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        value_dtype=tf.string,
        value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
    )
    return tf.lookup.StaticHashTable(initializer, default_value="")


def check_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The class names (default ``"0"``, ``"1"``, ...), checked to fit one name per line."""
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model with {num_classes} classes")
    for index, name in enumerate(names):
        if "\n" in name or "\r" in name:
            raise ValueError(f"class name {index} ({name!r}) holds a line break")
    return names


class Localizer:
    """What the SavedModel computes, callable in Python: one implementation for both.

    ``localizer(pixels)`` takes float32 RGB ``[B, S, S, 3]`` in [0, 255] (already
    resized to the input size ``S``) and returns the serving outputs;
    :meth:`for_classes` returns the outputs for given classes.

    Args:
        model: a WSOL model returning logits.
        image_size: its input size ``S``.
        normalization: the ``wsolkeras.data`` normalisation it was trained with.
        tau: the threshold for ``boxes``.
        extractor: a ``wsolkeras.extractors`` name.
        extractor_kwargs: passed to ``wsolkeras.extractors.get``.
        class_names: label names (index = class id).
        top_k: how many classes the outputs hold (at most the number of classes).
        names_table: a class id -> name table to use instead of ``class_names``
            (the export's, read from its asset).
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        image_size: int,
        normalization: str,
        tau: float,
        extractor: str = "cam",
        extractor_kwargs: dict | None = None,
        class_names: Sequence[str] | None = None,
        top_k: int = 5,
        names_table: tf.lookup.StaticHashTable | None = None,
    ):
        from wsolkeras import extractors

        if not 0.0 <= float(tau) < 1.0:
            raise ValueError(f"tau must be in [0, 1), got {tau}")
        self.model = model
        self.num_classes = int(model.output_shape[-1])
        self.class_names = check_class_names(class_names, self.num_classes)
        self.image_size = int(image_size)
        self.normalization = normalization
        self.tau = float(tau)
        self.top_k = max(1, min(int(top_k), self.num_classes))
        self.extractor = extractor
        self.extract = extractors.get(extractor, model, **(extractor_kwargs or {}))
        if names_table is None:
            names_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.range(self.num_classes, dtype=tf.int64), tf.constant(self.class_names)
                ),
                default_value="",
            )
        self.names_table = names_table

    def _normalise(self, pixels: tf.Tensor) -> tf.Tensor:
        from wsolkeras import data

        return data.normalize_images(pixels, self.normalization)

    def _maps(self, images: tf.Tensor, class_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = tf.cast(self.extract(images, class_ids), tf.float32)
        maps = scoremaps(raw, self.image_size)
        return {"raw_maps": raw, "heatmaps": maps, "boxes": boxes_at_tau(maps, self.tau)}

    def __call__(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        images = self._normalise(pixels)
        logits = tf.cast(self.model(images, training=False), tf.float32)
        scores, class_ids = tf.math.top_k(tf.nn.softmax(logits, axis=-1), k=self.top_k)
        found = self._maps(images, class_ids[:, 0])
        return {
            "class_ids": class_ids,
            "scores": scores,
            "class_names": self.names_table.lookup(tf.cast(class_ids, tf.int64)),
            "boxes": found["boxes"],
            "heatmaps": found["heatmaps"],
        }

    def for_classes(self, pixels: tf.Tensor, class_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        """``logits``, ``raw_maps``, ``heatmaps`` and ``boxes`` for one given class per image."""
        images = self._normalise(pixels)
        logits = tf.cast(self.model(images, training=False), tf.float32)
        return {"logits": logits, **self._maps(images, tf.cast(class_ids, tf.int32))}


def _next_version(model_dir: str) -> int:
    versions = [int(name) for name in _listdir(model_dir) if re.fullmatch(r"\d+", name)]
    return max(versions, default=0) + 1


def next_version(export_dir: str, model_name: str) -> int:
    """One more than the highest integer version in ``<export_dir>/<model_name>`` (1 if none)."""
    return _next_version(os.path.join(export_dir, model_name))


def _listdir(path: str) -> list[str]:
    return os.listdir(path) if os.path.isdir(path) else []


def export_model(
    model: keras.Model,
    export_dir: str,
    *,
    model_name: str,
    image_size: int,
    normalization: str,
    tau: float,
    extractor: str = "cam",
    extractor_kwargs: dict | None = None,
    class_names: Sequence[str] | None = None,
    top_k: int = 5,
    version: int | None = None,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> str:
    """Writes the SavedModel of ``model`` to ``<export_dir>/<model_name>/<version>/``; returns it.

    Args:
        model: a trained WSOL model (``wsolkeras.models``) returning logits.
        export_dir: the TF Serving model base directory's parent.
        model_name: the served model's name.
        image_size: the model's input size ``S`` (images are resized to S x S).
        normalization: the ``wsolkeras.data`` normalisation the model was trained with.
        tau: the threshold for ``boxes`` (chosen on the validation split).
        extractor: a ``wsolkeras.extractors`` name (``cam``, ``gar``, ...).
        extractor_kwargs: passed to ``wsolkeras.extractors.get``.
        class_names: label names (index = class id); default ``"0"``, ``"1"``, ...
        top_k: how many classes ``class_ids`` and ``scores`` hold.
        version: the integer version; default one more than the highest there.
        overwrite: replace an existing version (else ``FileExistsError``).
        metadata: more JSON-ready facts for ``assets.extra/wsolkeras.json``.
    """
    import tempfile

    if not 0.0 <= float(tau) < 1.0:
        raise ValueError(f"tau must be in [0, 1), got {tau}")
    class_names = check_class_names(class_names, int(model.output_shape[-1]))
    base = os.path.join(export_dir, model_name)
    version = _next_version(base) if version is None else int(version)
    if version < 1:
        raise ValueError(f"a TF Serving version is a positive integer, got {version}")
    target = os.path.join(base, str(version))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"{target} exists; pass another version, or overwrite=True to replace it"
        )

    with tempfile.TemporaryDirectory() as scratch:
        names_path = os.path.join(scratch, CLASS_NAMES_ASSET)
        with open(names_path, "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in class_names))
        # The asset is copied into assets/ and its path re-pointed there on load.
        resources = tf.Module()
        resources.class_names_file = tf.saved_model.Asset(names_path)
        resources.class_names_table = class_name_table(resources.class_names_file)
        localizer = Localizer(
            model,
            image_size=image_size,
            normalization=normalization,
            tau=tau,
            extractor=extractor,
            extractor_kwargs=extractor_kwargs,
            class_names=class_names,
            top_k=top_k,
            names_table=resources.class_names_table,
        )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(image_bytes):
            return localizer(decode_images(image_bytes, image_size))

        @tf.function(
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")]
        )
        def serve_images(images):
            return localizer(resize_images(images, image_size))

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
                tf.TensorSpec([None], tf.int32, name="class_ids"),
            ]
        )
        def localize_class(images, class_ids):
            return localizer.for_classes(resize_images(images, image_size), class_ids)

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(resources)
        archive.add_endpoint(SIGNATURE_IMAGE_BYTES, serve_bytes)
        archive.add_endpoint(SIGNATURE_IMAGES, serve_images)
        archive.add_endpoint(SIGNATURE_CLASS, localize_class)
        info = {
            **(metadata or {}),
            "model_name": model_name,
            "version": version,
            "image_size": int(image_size),
            "normalization": normalization,
            "extractor": extractor,
            "tau": float(tau),
            "top_k": localizer.top_k,
            "num_classes": localizer.num_classes,
            "class_names": list(class_names),
            "class_names_asset": f"assets/{CLASS_NAMES_ASSET}",
            "box_rule": BOX_RULE,
            "signatures": {
                SIGNATURE_IMAGE_BYTES: "image_bytes: [B] encoded JPEG/PNG strings",
                SIGNATURE_IMAGES: "images: [B, H, W, 3] float32 RGB in [0, 255]",
                SIGNATURE_CLASS: "images: [B, H, W, 3] float32 RGB in [0, 255], class_ids: [B]",
            },
        }
        with atomic.atomic_path(target) as tmp:
            archive.write_out(tmp, verbose=False)
            # TF Serving ignores assets.extra/; tools read what the export holds from it.
            atomic.write_json(os.path.join(tmp, "assets.extra", INFO_FILE), info)
    log.info("exported %s (version %d) to %s", model_name, version, target)
    return target


def export_if_new(
    model: keras.Model, export_dir: str, *, model_name: str, version: int, **kwargs
) -> str:
    """:func:`export_model` unless ``<export_dir>/<model_name>/<version>`` is already there.

    The train app uses the training step as the version: started again after
    finishing, it finds its export done.
    """
    target = os.path.join(export_dir, model_name, str(version))
    if os.path.isdir(target):
        log.info("%s is already exported", target)
        return target
    return export_model(model, export_dir, model_name=model_name, version=version, **kwargs)
