"""Method `recurrent`: the two streams of "Focus Longer to See Better" (Shroff et al.).

Thesis section 3 (``papers/focus-longer-recurrent-attention-thesis.txt``) and
``WSOL_PROTOCOL.md`` section 2:

- global stream: CNN on the whole image -> GAP -> linear classifier (the CAM
  head of :mod:`wsolkeras.models.cnn`; the model's roles point at it);
- patch: the thesis takes patches from a separate weakly supervised detector
  (ProtoPNet-style prototypes); here the patch is found in-graph from the
  global stream's CAM, as the protocol allows ("e.g. the box of the global
  stream's CAM"): the CAM of the global stream's PREDICTED class (no label is
  needed, so training and test crop alike), min-max normalised per image,
  thresholded at ``crop_threshold``; the box spans every above-threshold cell
  (not only the largest blob); the image is cropped to it and resized
  (bilinear) to the input size. No gradient flows through the box;
- local stream: the crop through a SEPARATE CNN of the same architecture (the
  thesis: "the CNN in global stream and local stream does not share
  weights") -> GAP -> ``layers.RecurrentAttentionHead`` (stacked LSTM fed the
  same vector at each step, soft attention over steps, linear) -> logits;
- loss (Eqs. 3.8-3.11): CE(global) + lambda' CE(local)
  + lambda max(0, p_g - p_l + margin), with p the softmax probability of the
  true class; lambda' = 1.0, lambda = 0.5, margin = 0.5;
- test: the thesis merges the two streams "weighted in the same way as the
  losses" (1 and lambda'); the model returns w_g z_g + w_l z_l, the weighted
  sum of the two streams' logits, with ``fusion_weights = (w_g, w_l)``
  defaulting to (1.0, 1.0).

Deviations, all forced by working without the thesis' external patch
detector: one CAM crop per image instead of a random one of N prototype
patches; the local crop is resized to the model's input size (the thesis:
global 448, local 224).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops


def cam_boxes(class_maps: Any, threshold: float) -> Any:
    """Boxes of the predicted class's normalised CAM above `threshold`.

    Args:
      class_maps: ``[B, h, w, C]`` per-position class scores (the classifier
        applied at every position; its bias does not change the normalised
        CAM). The predicted class is the argmax of their spatial mean, which
        equals the GAP classifier's logits.
      threshold: in [0, 1), on the min-max normalised CAM; a cell is inside
        when its value is >= threshold (the maximum always is).

    Returns:
      ``[B, 4]`` float boxes ``(y0, x0, y1, x1)`` as fractions of the image,
      cell edges included: cells r0..r1 give ``y0 = r0 / h``, ``y1 = (r1 + 1) / h``.
      A constant CAM gives the whole image.
    """
    class_maps = ops.stop_gradient(class_maps)
    height, width = ops.shape(class_maps)[1], ops.shape(class_maps)[2]
    predicted = ops.argmax(ops.mean(class_maps, axis=(1, 2)), axis=-1)
    one_hot = ops.one_hot(predicted, ops.shape(class_maps)[-1], dtype=class_maps.dtype)
    cam = ops.sum(class_maps * one_hot[:, None, None, :], axis=-1)  # [B, h, w]
    low = ops.min(cam, axis=(1, 2), keepdims=True)
    span = ops.max(cam, axis=(1, 2), keepdims=True) - low
    normalized = ops.where(span > 0, (cam - low) / ops.where(span > 0, span, 1.0), 1.0)
    inside = normalized >= threshold
    rows = ops.any(inside, axis=2)  # [B, h]
    cols = ops.any(inside, axis=1)  # [B, w]

    def first_last(mask: Any, size: Any) -> tuple[Any, Any]:
        index = ops.arange(size, dtype="int32")[None, :]
        first = ops.min(ops.where(mask, index, size), axis=1)
        last = ops.max(ops.where(mask, index, -1), axis=1)
        return first, last

    r0, r1 = first_last(rows, height)
    c0, c1 = first_last(cols, width)
    h = ops.cast(height, "float32")
    w = ops.cast(width, "float32")
    return ops.stack(
        [
            ops.cast(r0, "float32") / h,
            ops.cast(c0, "float32") / w,
            ops.cast(r1 + 1, "float32") / h,
            ops.cast(c1 + 1, "float32") / w,
        ],
        axis=-1,
    )


def _sample_positions(start: Any, stop: Any, size: Any, out_size: int) -> tuple[Any, Any, Any]:
    """Bilinear taps along one axis: (low index, high index, high weight), each ``[B, out]``.

    Output pixel u samples the input at pixel-edge coordinate
    ``start * size + (u + 0.5) * (stop - start) * size / out_size``; minus 0.5
    gives the coordinate whose integers are pixel centres, clamped to the
    image (the edge pixels repeat beyond the border).
    """
    size_f = ops.cast(size, "float32")
    u = ops.arange(out_size, dtype="float32")[None, :] + 0.5
    step = (stop - start)[:, None] * size_f / out_size
    coord = start[:, None] * size_f + u * step - 0.5
    coord = ops.clip(coord, 0.0, size_f - 1.0)
    low = ops.floor(coord)
    frac = coord - low
    low = ops.cast(low, "int32")
    high = ops.minimum(low + 1, ops.cast(size, "int32") - 1)
    return low, high, frac


def crop_resize(images: Any, boxes: Any, size: tuple[int, int] | None = None) -> Any:
    """Crops each image to its box and resizes the crop (bilinear) to `size`.

    Args:
      images: ``[B, H, W, C]`` with H and W known.
      boxes: ``[B, 4]`` ``(y0, x0, y1, x1)`` as fractions of the image (edges).
      size: output ``(height, width)``; default the input's.

    Written with gathers (no image-transform op) so that it runs under XLA.
    """
    height, width = images.shape[1], images.shape[2]
    out_h, out_w = size if size is not None else (height, width)
    boxes = ops.cast(boxes, "float32")
    batch, channels = ops.shape(images)[0], ops.shape(images)[3]
    y_low, y_high, y_frac = _sample_positions(boxes[:, 0], boxes[:, 2], height, out_h)
    x_low, x_high, x_frac = _sample_positions(boxes[:, 1], boxes[:, 3], width, out_w)

    def rows(index: Any) -> Any:  # [B, out_h] -> [B, out_h, W, C]
        index = ops.broadcast_to(index[:, :, None, None], (batch, out_h, width, channels))
        return ops.take_along_axis(images, index, axis=1)

    y_frac = ops.cast(y_frac, images.dtype)[:, :, None, None]
    x_frac = ops.cast(x_frac, images.dtype)[:, None, :, None]
    resized_rows = rows(y_low) * (1 - y_frac) + rows(y_high) * y_frac

    def cols(index: Any) -> Any:  # [B, out_w] -> [B, out_h, out_w, C]
        index = ops.broadcast_to(index[:, None, :, None], (batch, out_h, out_w, channels))
        return ops.take_along_axis(resized_rows, index, axis=2)

    return cols(x_low) * (1 - x_frac) + cols(x_high) * x_frac


@keras.saving.register_keras_serializable(package="wsolkeras")
class CamCrop(keras.layers.Layer):
    """``(images [B, H, W, 3], class_maps [B, h, w, C]) -> crops [B, H, W, 3]``.

    The crop of each image to the box of its predicted class's CAM
    (:func:`cam_boxes`), resized to the image size (:func:`crop_resize`).
    """

    def __init__(self, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= threshold < 1:
            raise ValueError(f"CamCrop: threshold must be in [0, 1), got {threshold!r}.")
        self.threshold = float(threshold)

    def call(self, images: Any, class_maps: Any) -> Any:
        boxes = cam_boxes(class_maps, self.threshold)
        return crop_resize(ops.stop_gradient(images), boxes)

    def compute_output_shape(self, images_shape: Any, class_maps_shape: Any) -> Any:
        return tuple(images_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="wsolkeras")
class StreamFusion(keras.layers.Layer):
    """``[z_1, ..., z_n] -> sum_i w_i z_i``: the test-time fusion of the streams' logits."""

    def __init__(self, stream_weights: Sequence[float] = (1.0, 1.0), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fusion_weights = tuple(float(w) for w in stream_weights)

    def call(self, inputs: Sequence[Any]) -> Any:
        if len(inputs) != len(self.fusion_weights):
            raise ValueError(
                f"StreamFusion has {len(self.fusion_weights)} weights for {len(inputs)} inputs."
            )
        return sum(w * z for w, z in zip(self.fusion_weights, inputs, strict=True))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape[0])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "stream_weights": list(self.fusion_weights)}
