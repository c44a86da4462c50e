"""Helpers for the evaluate / export / extract app tests (fixtures are in conftest.py).

``sample_images`` are the images every
kind of client may send; ``Reference`` computes what a served model must
answer with the run's Keras model, numpy and OpenCV, independently of
``wsolkeras.export``; ``largest_component_boxes`` is the export's box rule
written with scipy.
"""

import io

import cv2
import numpy as np

# --- images of every kind a client may send ---------------------------------------


def encode(image: np.ndarray, kind: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=kind)
    return buffer.getvalue()


def sample_images() -> list[tuple[str, bytes]]:
    """``(name, encoded bytes)``: JPEG and PNG, grayscale, RGB and RGBA, of different sizes."""
    rng = np.random.default_rng(7)

    def smooth(shape):
        # Smooth content, so maps differ between images and JPEG stays close.
        small = rng.integers(0, 256, (6, 6, *shape[2:]), dtype=np.uint8)
        return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)

    return [
        ("rgb.jpg", encode(smooth((60, 90, 3)), "JPEG")),
        ("gray.png", encode(smooth((50, 41)), "PNG")),
        ("rgba.png", encode(smooth((30, 30, 4)), "PNG")),
        ("gray.jpg", encode(smooth((77, 64)), "JPEG")),
        ("rgb.png", encode(smooth((24, 100, 3)), "PNG")),
    ]


def decode_rgb(data: bytes) -> np.ndarray:
    """uint8 RGB: PNG with Pillow (lossless; grey repeated, alpha dropped), JPEG with TF.

    JPEG decoders differ by a few levels (Pillow's and TensorFlow's libjpeg
    builds); the served model decodes with TensorFlow's, so the reference does.
    """
    from PIL import Image

    if data.startswith(b"\x89PNG"):
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    import tensorflow as tf

    return tf.io.decode_jpeg(data, channels=3).numpy()


class Reference:
    """What the served model must answer, from the run's Keras model, numpy and OpenCV."""

    def __init__(self, model_dir: str):
        from wsolkeras import runs

        self.run = runs.load_run(model_dir)
        assert self.run.normalization == "unit", "the reference normalises as 'unit'"
        self.size = self.run.image_size
        self.class_names = np.array(self.run.class_names)

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Bilinear, half-pixel centres, no antialiasing: what tf.image.resize does."""
        return cv2.resize(
            image.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_LINEAR
        )

    def predict(self, images: list[np.ndarray], top_k: int, tau: float) -> dict:
        """Top-k ids and softmax scores, the min-max normalised bicubic CAM, the box at tau."""
        from wsolkeras import extractors

        pixels = np.stack([self.resize(image) for image in images])
        normalised = pixels / 255.0
        logits = np.asarray(self.run.model(normalised, training=False), np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        ids = np.argsort(-probabilities, axis=1)[:, :top_k]
        raw = np.asarray(
            extractors.get(self.run.extractor, self.run.model)(normalised, ids[:, 0]), np.float64
        )
        heatmaps = []
        for m in raw:
            up = cv2.resize(m, (self.size, self.size), interpolation=cv2.INTER_CUBIC)
            span = up.max() - up.min()
            heatmaps.append((up - up.min()) / span if span > 0 else np.zeros_like(up))
        heatmaps = np.stack(heatmaps)
        return {
            "class_ids": ids,
            "scores": np.take_along_axis(probabilities, ids, 1),
            "class_names": self.class_names[ids],
            "heatmaps": heatmaps,
            "logits": logits,
        }


def largest_component_boxes(heatmap: np.ndarray, tau: float) -> list[np.ndarray]:
    """The export's documented box rule, with scipy: normalised [ymin, xmin, ymax, xmax].

    Foreground ``floor(255 s) > floor(tau * max)``; the largest 8-connected
    component; its box widened one pixel right and down (clipped); / side.
    One candidate per component of the largest size (ties: any is right).
    """
    import scipy.ndimage

    q = np.floor(heatmap.astype(np.float64) * 255.0)
    mask = q > np.floor(tau * q.max())
    labels, count = scipy.ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return [np.zeros(4)]
    sizes = np.bincount(labels.ravel())[1:]
    height, width = heatmap.shape
    boxes = []
    for label in np.flatnonzero(sizes == sizes.max()) + 1:
        ys, xs = np.nonzero(labels == label)
        x0, y0 = xs.min(), ys.min()
        x1, y1 = min(xs.max() + 1, width - 1), min(ys.max() + 1, height - 1)
        boxes.append(np.array([y0 / height, x0 / width, y1 / height, x1 / width]))
    return boxes


def assert_box_is_one_of(box: np.ndarray, candidates: list[np.ndarray]) -> None:
    assert any(np.allclose(box, c, atol=1e-6) for c in candidates), (box, candidates)
