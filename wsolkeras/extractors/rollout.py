"""Attention rollout (AR) and grad attention rollout (GAR) for ViT / DeiT models.

WSOL_PROTOCOL.md section 2 (ViTOL): per block b, with A_b the attention
probabilities ``[B, heads, N, N]``,

- AR:  Abar_b = mean over heads of A_b;
- GAR: Abar_b = mean over heads of max(A_b * G_b, 0), G_b = dY_c / dA_b;

then Abar_b + I, each row divided by its sum, R = Abar_L ... Abar_1, and the
map is row 0 (the class token's) of R, columns of the patch tokens, reshaped
to the patch grid.

Token layout: ViT has one prefix token (class), DeiT two (class,
distillation): the map is ``R[0, P:]`` with ``P = encoder.num_prefix_tokens``
(columns 1: for ViT, 2: for DeiT), so the distillation token's column is
dropped and only the class token's row is read.

The model must contain a :class:`wsolkeras.vit.AttentionEncoder` (named
``roles.ENCODER`` by :func:`wsolkeras.vit.build_classifier`, or given by
``layer="..."``), which returns the per-block probabilities.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from wsolkeras import roles
from wsolkeras.extractors.base import (
    Extractor,
    Probe,
    class_scores,
    find_layer,
    iter_layers,
    target_classes,
    watch_input,
)
from wsolkeras.vit import AttentionEncoder


def rollout_map(
    blocks: list[tf.Tensor], num_prefix_tokens: int, grid: tuple[int, int]
) -> tf.Tensor:
    """Rolls per-block token mixing ``[B, N, N]`` (first block first) into patch maps."""
    n = blocks[0].shape[-1] or tf.shape(blocks[0])[-1]
    eye = tf.eye(n, dtype=blocks[0].dtype)
    rolled = None
    for abar in blocks:
        a = abar + eye
        a = a / tf.reduce_sum(a, axis=-1, keepdims=True)
        rolled = a if rolled is None else tf.matmul(a, rolled)  # R = Abar_b R
    cls_row = rolled[:, 0, num_prefix_tokens:]
    return tf.reshape(cls_row, [-1, grid[0], grid[1]])


class _Rollout(Extractor):
    def __init__(
        self, model: keras.Model, *, layer: str | None = None, differentiable: bool = False
    ) -> None:
        super().__init__(model, differentiable=differentiable)
        name = layer or roles.ENCODER
        encoder = find_layer(model, name)
        if not isinstance(encoder, AttentionEncoder):
            found = [path for path, sub in iter_layers(model) if isinstance(sub, AttentionEncoder)]
            what = "has no layer" if encoder is None else f"has a {type(encoder).__name__}"
            raise ValueError(
                f"{self.name} needs attention probabilities, but {model.name!r} {what} named "
                f"{name!r} that returns them (a wsolkeras.vit.AttentionEncoder). "
                + (
                    f"AttentionEncoder layers in it: {', '.join(found)}."
                    if found
                    else "Build ViT/DeiT models with wsolkeras.vit.build_classifier; for CNNs "
                    "use cam, gradcam, gradcam++, layercam, ach or apx."
                )
            )
        if encoder.num_prefix_tokens < 1:
            raise ValueError(f"{self.name} reads the class token's row; the encoder has none.")
        self.encoder = encoder
        self.layer = encoder.name
        self.probe = Probe(model, [encoder.name])


class AttentionRollout(_Rollout):
    """Attention rollout (Abnar & Zuidema 2020): class-agnostic, ``classes`` is ignored."""

    name = "rollout"

    def compute_maps(self, images: tf.Tensor, classes: tf.Tensor, training: bool) -> tf.Tensor:
        ((_, attentions),), _ = self.probe(images, training=training)
        blocks = [tf.reduce_mean(a, axis=1) for a in attentions]
        return rollout_map(blocks, self.encoder.num_prefix_tokens, self.encoder.grid_size)


class GradAttentionRollout(_Rollout):
    """Grad attention rollout (ViTOL, Gupta et al. 2022)."""

    name = "gar"

    def compute_maps(self, images: tf.Tensor, classes: tf.Tensor, training: bool) -> tf.Tensor:
        with tf.GradientTape() as tape:
            watch_input(tape, images)
            ((_, attentions),), logits = self.probe(images, training=training)
            target = tf.reduce_sum(class_scores(logits, target_classes(classes, logits)))
        gradients = tape.gradient(target, attentions)
        # ViTOL: the product A * G is clamped, then averaged over heads.
        blocks = [
            tf.reduce_mean(tf.nn.relu(a * g), axis=1)
            for a, g in zip(attentions, gradients, strict=True)
        ]
        return rollout_map(blocks, self.encoder.num_prefix_tokens, self.encoder.grid_size)
