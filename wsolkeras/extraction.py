"""Heat maps, classes and boxes for a folder of images (the library part of ``apps.extract``).

Each image is decoded (JPEG and PNG by TensorFlow's decoders, as the served
model decodes them; other formats with Pillow), resized to the model's input
size as the SavedModel resizes, and run through the serving computation --
:class:`wsolkeras.export.Localizer` for a train run, the SavedModel's
``serving_images`` signature for an export -- so the answers are the served
model's. For each image it writes ``<stem>.png`` (the heat map over the image
and the predicted box), optionally ``<stem>.npy`` (the heat map itself) and,
for all, one ``predictions.json``.

Boxes: ``normalized`` is ``[ymin, xmin, ymax, xmax]``, inclusive pixel /
side (``docs/INTERFACES.md``); ``pixels`` is the inclusive ``[x0, y0, x1, y1]``
in the original image, ``floor(v * side + 1e-4)`` per coordinate
(``tfrecords.schema.boxes_to_pixels``).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from wsolkeras import atomic, export

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PREDICTIONS_FILE = "predictions.json"
BOX_FORMAT = {
    "normalized": "[ymin, xmin, ymax, xmax]: inclusive pixel / side, at the model's input size",
    "pixels": "[x0, y0, x1, y1]: inclusive pixels of the original image",
}


class UnreadableImage(ValueError):
    """A file that is not an image this tool can decode."""


def find_images(pattern: str) -> list[str]:
    """The files ``pattern`` names: a folder's images (by extension), or a glob's matches.

    Globs are recursive with ``**``; the result is sorted. A glob may match
    files that are not images: they are reported as unreadable later.
    """
    if os.path.isdir(pattern):
        found = [
            os.path.join(pattern, name)
            for name in os.listdir(pattern)
            if name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    else:
        found = glob.glob(pattern, recursive=True)
    return sorted(path for path in found if os.path.isfile(path))


def read_image(path: str) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]``; :class:`UnreadableImage` with the reason when it cannot be."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise UnreadableImage(f"{path}: cannot be read ({error.strerror})") from None
    if data.startswith((export.PNG_SIGNATURE, export.JPEG_SIGNATURE)):
        try:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError as error:
            reason = error.message.splitlines()[0]
            raise UnreadableImage(f"{path}: a damaged JPEG/PNG image ({reason})") from None
        return image.numpy()
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path}: not an image (no image format recognised)") from None
    except (OSError, ValueError) as error:
        raise UnreadableImage(f"{path}: a damaged image ({error})") from None


@dataclasses.dataclass
class Predictor:
    """The serving computation on images already resized to ``image_size``."""

    predict: Callable[[np.ndarray], dict]
    image_size: int
    tau: float | None
    top_k: int
    extractor: str
    source: str
    path: str


def from_run(
    model_dir: str, *, extractor: str | None = None, tau: float | None = None, top_k: int = 0
) -> Predictor:
    """A train run's model through :class:`wsolkeras.export.Localizer` (one tf.function)."""
    from wsolkeras import runs

    run = runs.load_run(model_dir)
    name = extractor or run.extractor
    chosen_tau = run.choose_tau(name, tau)
    try:
        localizer = export.Localizer(
            run.model,
            image_size=run.image_size,
            normalization=run.normalization,
            tau=chosen_tau,
            extractor=name,
            class_names=run.class_names,
            top_k=top_k or int(run.config.get("top_k", 5)),
        )
    except ValueError as error:
        raise ValueError(f"--extractor={name}: {error}") from None
    size = run.image_size
    function = tf.function(
        localizer.__call__,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
    )

    def predict(pixels):
        return {key: value.numpy() for key, value in function(tf.constant(pixels)).items()}

    return Predictor(predict, size, chosen_tau, localizer.top_k, name, "model_dir", model_dir)


def from_saved_model(path: str) -> Predictor:
    """An exported SavedModel through its ``serving_images`` signature."""
    from wsolkeras import serving

    exported = serving.ExportedModel(path)
    outputs = exported.signature(serving.SIGNATURE_IMAGES).structured_outputs
    top_k = int(outputs["class_ids"].shape[-1] or exported.info.get("top_k", 0))
    return Predictor(
        exported.localize,
        exported.image_size,
        None if exported.tau is None else float(exported.tau),
        top_k,
        exported.extractor or "exported",
        "saved_model",
        exported.path,
    )


def pixel_box(normalized: Sequence[float], width: int, height: int) -> list[int]:
    """Normalised ``[ymin, xmin, ymax, xmax]`` -> inclusive ``[x0, y0, x1, y1]`` at ``W x H``."""
    from tfrecords import schema

    boxes = np.asarray(normalized, np.float64).reshape(1, 1, 4)
    (pixels,) = schema.boxes_to_pixels(boxes, np.array([1]), (height, width))
    x0, y0, x1, y1 = (int(v) for v in pixels[0])
    return [min(x0, width - 1), min(y0, height - 1), min(x1, width - 1), min(y1, height - 1)]


def _unique_stem(path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, count = stem, 1
    while name in used:
        count += 1
        name = f"{stem}-{count}"
    used.add(name)
    return name


def _write_png(path: str, image: np.ndarray) -> None:
    png = tf.io.encode_png(tf.constant(image)).numpy()
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(png)


def extract(
    predictor: Predictor,
    paths: Sequence[str],
    output_dir: str,
    *,
    batch_size: int = 16,
    strict: bool = False,
    overlays: bool = True,
    save_maps: bool = False,
    show_progress: bool = False,
) -> dict:
    """Runs ``predictor`` on ``paths``; writes the overlays and ``predictions.json``.

    ``overlays``: ``<stem>.png``; ``save_maps``: ``<stem>.npy``, the heat map
    (float32 ``[S, S]`` in [0, 1], at the model's input size). Unreadable files
    are logged as warnings, counted and listed in the JSON (``unreadable``),
    or with ``strict`` raise :class:`UnreadableImage`.
    Returns what ``predictions.json`` holds.
    """
    from wsolkeras import evaluator, figures

    os.makedirs(output_dir, exist_ok=True)
    size = predictor.image_size
    records, unreadable, used = [], [], set()

    def flush(batch):
        if not batch:
            return
        pixels = np.stack([resized for _, _, resized in batch])
        out = predictor.predict(pixels)
        for i, (path, image, _) in enumerate(batch):
            height, width = image.shape[:2]
            names = [n.decode("utf-8") for n in out["class_names"][i]]
            ids = [int(c) for c in out["class_ids"][i]]
            scores = [float(s) for s in out["scores"][i]]
            normalized = [float(v) for v in out["boxes"][i]]
            pixel = pixel_box(normalized, width, height)
            record = {
                "file": path,
                "width": width,
                "height": height,
                "class_ids": ids,
                "class_names": names,
                "scores": scores,
                "box": {
                    "class_id": ids[0],
                    "class_name": names[0],
                    "normalized": normalized,
                    "pixels": pixel,
                },
            }
            stem = _unique_stem(path, used) if overlays or save_maps else None
            if overlays:
                label = f"{names[0]} {scores[0]:.2f}"
                picture = figures.overlay_prediction(image, out["heatmaps"][i], pixel, label=label)
                _write_png(os.path.join(output_dir, stem + ".png"), picture)
                record["overlay"] = stem + ".png"
            if save_maps:
                with atomic.atomic_path(os.path.join(output_dir, stem + ".npy")) as tmp:
                    np.save(tmp, np.asarray(out["heatmaps"][i], np.float32))
                record["heatmap"] = stem + ".npy"
            records.append(record)
        batch.clear()

    batch = []
    for path in evaluator.progress(paths, len(paths), "images", show_progress):
        try:
            image = read_image(path)
        except UnreadableImage as error:
            if strict:
                raise
            log.warning("%s; skipped", error)
            unreadable.append({"file": path, "error": str(error)})
            continue
        resized = export.resize_images(tf.constant(image[None], tf.float32), size)[0].numpy()
        batch.append((path, image, resized))
        if len(batch) >= batch_size:
            flush(batch)
    flush(batch)

    result = {
        "model": {
            "source": predictor.source,
            "path": os.path.abspath(predictor.path),
            "extractor": predictor.extractor,
            "tau": predictor.tau,
            "image_size": size,
            "top_k": predictor.top_k,
        },
        "box_format": BOX_FORMAT,
        "num_images": len(records),
        "num_unreadable": len(unreadable),
        "images": records,
        "unreadable": unreadable,
    }
    atomic.write_json(os.path.join(output_dir, PREDICTIONS_FILE), result)
    if unreadable:
        log.warning(
            "%d of %d files could not be read as images and were skipped: %s",
            len(unreadable),
            len(paths),
            ", ".join(item["file"] for item in unreadable[:10])
            + (" ..." if len(unreadable) > 10 else ""),
        )
    return result
