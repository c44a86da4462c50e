"""Attention-guided training losses.

"Sharpen Focus" (Wang et al. 2019; papers/sharpen-focus-attention-separability.txt):

- soft IoU separability (Eq. 6):
  ``sIoU = 2 * sum(min(A_t, A_conf) * Mask) / sum(A_t + A_conf)``, A_t the
  target class's map, A_conf the map of the most confusing class (the
  highest-scoring class other than the target);
- the mask (Eq. 7): ``Mask = sigmoid(omega * (A_last - sigma))``,
  ``omega = 100``, ``sigma = 0.55 * max(A_last)`` per image, from the
  target class's map at the last feature layer;
- cross-layer attention consistency (Eq. 8):
  ``L_ac = alpha - sum(A_in * Mask) / sum(A_in)``, A_in the target class's
  map at the inner layer;
- total (Eq. 9): ``L = CE + sIoU_inner + sIoU_last + L_ac``.

What the paper leaves open, and what is done here:

- alpha's value is not given: default 1.0, which makes L_ac the fraction
  of inner-layer attention outside the mask (>= 0, 0 when all inside).
- Maps of different layers have different sizes and the paper does not say
  how they are matched: the last layer's target map is resized to the inner
  layer's size (bilinear, half-pixel centres, as ``tf.image.resize``) before its
  mask is taken for sIoU_inner and L_ac.
- The maps are the paper's A_ch (default) or A_px (``attention="apx"``),
  raw (not normalised: the mask's sigma is relative to the max, omega is
  absolute). ``normalize_last_map=True`` divides A_last by its per-image max
  before the mask, so that omega acts on a [0, 1] map whatever the features'
  scale.
- The mask is differentiable (nothing in the paper detaches it);
  ``stop_mask_gradient=True`` detaches it.
- Each term is computed per image and averaged over the batch; an image
  whose denominator is 0 (all-zero maps) contributes 0 to that ratio.
- The maps are made of gradients, so the loss's gradient w.r.t. the weights
  has second-order terms: :class:`SharpenFocusObjective` gets dY/dF from an
  inner tape while the caller's outer tape records it (the only public port
  detaches the gradients and reports no gain).

"Focus Longer to See Better" (the thesis, Eq. 3.11): the two-stream ranking
loss ``max(0, p_global - p_local + margin)``, p the softmax probability of the
true class, margin 0.5.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from wsolkeras import roles
from wsolkeras.extractors.base import Probe, class_scores, watch_input
from wsolkeras.extractors.gradient import (
    channel_attention_map,
    pixel_attention_map,
    resolve_feature_layer,
)

ATTENTION_MAPS = {"ach": channel_attention_map, "apx": pixel_attention_map}


def _loss_dtype(x: tf.Tensor) -> tf.Tensor:
    """Half-precision maps and logits are promoted to float32; float64 stays."""
    return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


def _interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` weights of 1-D linear interpolation with half-pixel centres."""
    position = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
    low = np.floor(position)
    frac = position - low
    rows = np.arange(out_size)
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (rows, np.clip(low, 0, in_size - 1).astype(int)), 1.0 - frac)
    np.add.at(matrix, (rows, np.clip(low + 1, 0, in_size - 1).astype(int)), frac)
    return matrix


def resize_maps(maps: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Bilinear resize of maps ``[B, h, w]`` to ``size``, as ``tf.image.resize``
    (half-pixel centres, no antialiasing) computes it, but in the maps' dtype
    (``tf.image.resize`` returns float32, which float64 gradient checks cannot use)."""
    in_h, in_w = maps.shape[1], maps.shape[2]
    if (in_h, in_w) == tuple(size):
        return maps
    rows = tf.constant(_interpolation_matrix(in_h, size[0]), maps.dtype)
    cols = tf.constant(_interpolation_matrix(in_w, size[1]), maps.dtype)
    return tf.einsum("yh,bhw,xw->byx", rows, maps, cols)


def attention_mask(
    last_map: tf.Tensor,
    size: tuple[int, int] | None = None,
    *,
    omega: float = 100.0,
    sigma_ratio: float = 0.55,
    normalize: bool = False,
) -> tf.Tensor:
    """Eq. 7: ``sigmoid(omega * (A - sigma_ratio * max(A)))`` per image, ``[B, h, w]``.

    ``size``: resize ``last_map`` (bilinear) to it first. ``normalize``: divide
    A by its per-image max first (an all-zero map stays zero).
    """
    if size is not None:
        last_map = resize_maps(last_map, size)
    peak = tf.reduce_max(last_map, axis=(1, 2), keepdims=True)
    if normalize:
        last_map = tf.math.divide_no_nan(last_map, peak)
        peak = tf.reduce_max(last_map, axis=(1, 2), keepdims=True)
    return tf.sigmoid(omega * (last_map - sigma_ratio * peak))


def soft_iou(target_map: tf.Tensor, confusing_map: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Eq. 6 per image ``[B]``: ``2 sum(min(A_t, A_conf) Mask) / sum(A_t + A_conf)``."""
    overlap = tf.reduce_sum(tf.minimum(target_map, confusing_map) * mask, axis=(1, 2))
    total = tf.reduce_sum(target_map + confusing_map, axis=(1, 2))
    return tf.math.divide_no_nan(2.0 * overlap, total)


def attention_consistency(inner_map: tf.Tensor, mask: tf.Tensor, alpha: float = 1.0) -> tf.Tensor:
    """Eq. 8 per image ``[B]``: ``alpha - sum(A_in Mask) / sum(A_in)``."""
    inside = tf.reduce_sum(inner_map * mask, axis=(1, 2))
    return alpha - tf.math.divide_no_nan(inside, tf.reduce_sum(inner_map, axis=(1, 2)))


def most_confusing_class(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """The highest-scoring class other than ``labels``, per image ``[B]``."""
    is_target = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    others = tf.where(is_target, tf.constant(logits.dtype.min, logits.dtype), logits)
    return tf.argmax(others, axis=-1, output_type=tf.int32)


def ranking_loss(
    global_scores: tf.Tensor,
    local_scores: tf.Tensor,
    labels: tf.Tensor,
    *,
    margin: float = 0.5,
    from_logits: bool = True,
) -> tf.Tensor:
    """Two-stream ranking loss per image ``[B]``: ``max(0, p_global - p_local + margin)``.

    p is the probability of the true class: softmax of the scores when
    ``from_logits``, else the scores themselves.
    """
    labels = tf.cast(labels, tf.int32)
    if from_logits:
        global_scores = tf.nn.softmax(global_scores, axis=-1)
        local_scores = tf.nn.softmax(local_scores, axis=-1)
    p_global = class_scores(global_scores, labels)
    p_local = class_scores(local_scores, labels)
    return tf.nn.relu(p_global - p_local + margin)


class SharpenFocusObjective:
    """Cross-entropy plus "Sharpen Focus"' attention losses, for a train step.

    Call it inside the train step's ``GradientTape``:

        objective = SharpenFocusObjective(model)
        with tf.GradientTape() as tape:
            loss, logits, terms = objective(images, labels, training=True)
        grads = tape.gradient(loss, model.trainable_variables)

    One forward pass gives the logits (for CE) and the two feature maps; an
    inner persistent tape gives dY/dF at both layers for the target class
    and for the most confusing class; the outer tape differentiates the
    maps, second-order terms included. Model regularisation losses
    (``model.losses``) are not included.

    Args:
        model: a functional model with an inner and a last feature layer.
        attention: ``"ach"`` (channel-wise, default) or ``"apx"`` (pixel-wise).
        inner_layer, last_layer: layer names (default the roles
            ``wsol_inner_features`` and ``wsol_features``).
        siou_inner_weight, siou_last_weight, ac_weight: term weights (1 in Eq. 9).
        alpha, omega, sigma_ratio: Eq. 7-8 (alpha: 1.0 here, see module doc).
        normalize_last_map, stop_mask_gradient: see the module doc.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        attention: str = "ach",
        inner_layer: str = roles.INNER_FEATURES,
        last_layer: str | None = None,
        siou_inner_weight: float = 1.0,
        siou_last_weight: float = 1.0,
        ac_weight: float = 1.0,
        alpha: float = 1.0,
        omega: float = 100.0,
        sigma_ratio: float = 0.55,
        normalize_last_map: bool = False,
        stop_mask_gradient: bool = False,
    ) -> None:
        if attention not in ATTENTION_MAPS:
            raise ValueError(
                f"attention must be one of {', '.join(ATTENTION_MAPS)}; got {attention!r}."
            )
        self.model = model
        self.attention = attention
        self.inner_layer = resolve_feature_layer(model, inner_layer)
        self.last_layer = resolve_feature_layer(model, last_layer)
        if self.inner_layer == self.last_layer:
            raise ValueError(f"inner and last feature layer are the same ({self.last_layer!r}).")
        self.weights = {
            "siou_inner": siou_inner_weight,
            "siou_last": siou_last_weight,
            "ac": ac_weight,
        }
        self.alpha = alpha
        self.omega = omega
        self.sigma_ratio = sigma_ratio
        self.normalize_last_map = normalize_last_map
        self.stop_mask_gradient = stop_mask_gradient
        self.probe = Probe(model, [self.inner_layer, self.last_layer])

    def maps(
        self, images: tf.Tensor, labels: tf.Tensor, training: bool = True
    ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """Target and confusing-class maps at both layers, and the logits."""
        weigh = ATTENTION_MAPS[self.attention]
        labels = tf.cast(labels, tf.int32)
        with tf.GradientTape(persistent=True) as tape:
            watch_input(tape, images)
            features, logits = self.probe(images, training=training)
            confusing = most_confusing_class(logits, labels)
            target_score = tf.reduce_sum(class_scores(logits, labels))
            confusing_score = tf.reduce_sum(class_scores(logits, confusing))
        target_grads = tape.gradient(target_score, features)
        confusing_grads = tape.gradient(confusing_score, features)
        del tape
        maps = {}
        for key, feats, g_t, g_c in zip(
            ("inner", "last"), features, target_grads, confusing_grads, strict=True
        ):
            maps[f"{key}_target"] = _loss_dtype(weigh(feats, g_t))
            maps[f"{key}_confusing"] = _loss_dtype(weigh(feats, g_c))
        return maps, logits

    def __call__(
        self, images: Any, labels: Any, training: bool = True
    ) -> tuple[tf.Tensor, tf.Tensor, dict[str, tf.Tensor]]:
        """``(total loss, logits, {"ce", "siou_inner", "siou_last", "ac"})``, batch means."""
        images = tf.convert_to_tensor(images)
        labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
        maps, logits = self.maps(images, labels, training=training)
        inner_size = tuple(maps["inner_target"].shape[1:3])
        last_size = tuple(maps["last_target"].shape[1:3])
        mask_args = {
            "omega": self.omega,
            "sigma_ratio": self.sigma_ratio,
            "normalize": self.normalize_last_map,
        }
        mask_last = attention_mask(maps["last_target"], last_size, **mask_args)
        mask_inner = attention_mask(maps["last_target"], inner_size, **mask_args)
        if self.stop_mask_gradient:
            mask_last = tf.stop_gradient(mask_last)
            mask_inner = tf.stop_gradient(mask_inner)
        terms = {
            "ce": tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(
                    labels, _loss_dtype(logits), from_logits=True
                )
            ),
            "siou_inner": tf.reduce_mean(
                soft_iou(maps["inner_target"], maps["inner_confusing"], mask_inner)
            ),
            "siou_last": tf.reduce_mean(
                soft_iou(maps["last_target"], maps["last_confusing"], mask_last)
            ),
            "ac": tf.reduce_mean(
                attention_consistency(maps["inner_target"], mask_inner, self.alpha)
            ),
        }
        total = terms["ce"] + sum(self.weights[key] * terms[key] for key in self.weights)
        return total, logits, terms
