"""Localization maps from a trained classifier: CAM, the Grad-CAM family, rollouts.

    extractor = wsolkeras.extractors.get("gradcam", model)   # or layer="..."
    maps = extractor(images)             # [B, h, w] float32, raw (not normalised)
    maps = extractor(images, classes)    # one class id per image

Names: ``cam``, ``gradcam``, ``gradcam++``, ``layercam``, ``ach``, ``apx``
(CNN feature maps) and ``rollout``, ``gar`` (ViT/DeiT attention).

- Maps are raw: the gradient maps are >= 0 as their papers define them;
  ``cam`` keeps negative values (the protocol min-max normalises raw maps,
  see ``wsolkeras.metrics.cam_to_scoremap``); ``rollout``/``gar`` are
  rows of a row-stochastic matrix product, so > 0.
- Y, the class score differentiated, is the model's pre-softmax output
  (a final softmax layer or softmax activation of the last Dense is skipped).
- The feature layer is ``layer=...``, else ``roles.FEATURES``
  (``wsol_features``), else the last layer of the outer model with a 4-D
  output (a keras-hub ``ImageClassifier``'s backbone). Layers inside nested
  functional models can be named too.
- One forward (and one backward) pass per batch, in inference mode, inside a
  ``tf.function`` traced once per extractor. ``differentiable=True`` gives
  maps a training loss can backpropagate through (second order included):
  call them inside your own ``GradientTape``, optionally with ``training=True``.
"""

from __future__ import annotations

from typing import Any

import keras

from wsolkeras.extractors.base import Extractor, Probe
from wsolkeras.extractors.gradient import (
    CAM,
    ChannelAttention,
    GradCAM,
    GradCAMPlusPlus,
    GradientExtractor,
    LayerCAM,
    PixelAttention,
    channel_attention_map,
    gradcam_map,
    gradcam_plus_plus_map,
    layercam_map,
    pixel_attention_map,
)
from wsolkeras.extractors.rollout import AttentionRollout, GradAttentionRollout

EXTRACTORS: dict[str, type[Extractor]] = {
    cls.name: cls
    for cls in (
        CAM,
        GradCAM,
        GradCAMPlusPlus,
        LayerCAM,
        ChannelAttention,
        PixelAttention,
        AttentionRollout,
        GradAttentionRollout,
    )
}


def names() -> list[str]:
    """The extractor names :func:`get` accepts."""
    return list(EXTRACTORS)


def get(name: str, model: keras.Model, **kwargs: Any) -> Extractor:
    """The extractor ``name`` for ``model``.

    Args:
        name: one of :func:`names`.
        model: a functional Keras model with one output (class scores).
        **kwargs: ``layer`` (feature layer / encoder name), ``classifier``
            (``cam`` only: the Dense layer), ``differentiable`` (bool).

    Returns:
        A callable ``(images, classes=None) -> maps [B, h, w]``.
    """
    if name not in EXTRACTORS:
        raise ValueError(f"Unknown extractor {name!r}; valid names: {', '.join(EXTRACTORS)}.")
    cls = EXTRACTORS[name]
    return cls(model, **kwargs)


__all__ = [
    "CAM",
    "EXTRACTORS",
    "AttentionRollout",
    "ChannelAttention",
    "Extractor",
    "GradAttentionRollout",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientExtractor",
    "LayerCAM",
    "PixelAttention",
    "Probe",
    "channel_attention_map",
    "get",
    "gradcam_map",
    "gradcam_plus_plus_map",
    "layercam_map",
    "names",
    "pixel_attention_map",
]
