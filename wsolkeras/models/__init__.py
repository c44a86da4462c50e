"""WSOL models: a backbone by name plus a WSOL method, as one Keras model.

    from wsolkeras import models
    model = models.build(backbone="resnet50", method="adl", num_classes=200,
                         image_size=224, weights="imagenet")
    model.compile(optimizer="sgd", metrics=["accuracy"])   # no loss: the model has its own
    model.fit(dataset_of_images_and_int_labels)

Backbones (:data:`BACKBONES`, configs in :mod:`wsolkeras.models.registry`):

- ``small_cnn``: four conv blocks, output stride 8; for tests and the
  embedded default (:mod:`wsolkeras.models.small_cnn`);
- ``resnet18``, ``resnet50``: keras-hub ResNet (v1), with the protocol's
  strides: layer4 at stride 1 (output stride 16), and with
  ``large_feature_map=True`` layer3 too (output stride 8);
- ``vgg16``: keras-hub VGG16 without pool5, plus the protocol's conv6
  (3x3, 1024 channels, ReLU); output stride 16;
- ``vit_tiny``, ``vit_small``, ``vit_base``, ``deit_tiny``, ``deit_small``,
  ``deit_base``: patch 16, 12 blocks, width 192 / 384 / 768 (method vitol);
- any other keras-hub backbone preset name, or a local preset directory:
  CAM on its last 4-D feature map, no ADL defaults, no inner layer.

Methods (:data:`METHODS`): ``cam``, ``adl``, ``rfga``, ``vitol``,
``recurrent`` (see :mod:`~wsolkeras.models.cnn`,
:mod:`~wsolkeras.models.vitol`, :mod:`~wsolkeras.models.recurrent`); and
``attention_loss="sharpen_focus"`` for cam, adl and rfga.
"""

from __future__ import annotations

from collections.abc import Sequence

from wsolkeras.models.model import WSOLModel, check_backbone
from wsolkeras.models.presets import WeightsUnavailableError
from wsolkeras.models.registry import (
    ATTENTION_LOSSES,
    BACKBONE_SPECS,
    BACKBONES,
    METHODS,
    BackboneSpec,
    default_extractor,
    normalization,
)

__all__ = [
    "ATTENTION_LOSSES",
    "BACKBONES",
    "BACKBONE_SPECS",
    "METHODS",
    "BackboneSpec",
    "WSOLModel",
    "WeightsUnavailableError",
    "build",
    "check_backbone",
    "default_extractor",
    "normalization",
]


def build(
    backbone: str = "small_cnn",
    method: str = "cam",
    num_classes: int = 2,
    image_size: int = 224,
    *,
    weights: str = "none",
    large_feature_map: bool = False,
    adl_positions: Sequence[str] | None = None,
    adl_drop_rate: float = 0.75,
    adl_drop_threshold: float = 0.9,
    rfga_kernel_size: int = 3,
    rfga_residual: bool = True,
    rfga_expand_activation: str | None = "sigmoid",
    attention_loss: str = "none",
    recurrent_timesteps: int = 4,
    recurrent_units: int = 512,
    recurrent_crop_threshold: float = 0.5,
    recurrent_fusion_weights: Sequence[float] = (1.0, 1.0),
    recurrent_local_weight: float = 1.0,
    recurrent_rank_weight: float = 0.5,
    recurrent_margin: float = 0.5,
    seed: int | None = None,
    name: str | None = None,
) -> WSOLModel:
    """Builds a WSOL model.

    Args:
      backbone: a name in :data:`BACKBONES`, a keras-hub backbone preset
        name, or a local keras-hub preset directory.
      method: one of :data:`METHODS`. ``vitol`` needs a ViT/DeiT backbone;
        the others a convolutional one.
      num_classes: number of logits.
      image_size: input height = width (ViT/DeiT: a multiple of 16).
      weights: ``"none"`` (random), ``"imagenet"`` (the backbone's keras-hub
        ImageNet preset), a keras-hub preset name, or a local preset
        directory. Offline, a preset that must be downloaded raises
        :class:`WeightsUnavailableError` within about a second.
      large_feature_map: ResNet: layer3 at stride 1 too (28x28 at 224).
      adl_positions: method adl: layer names to put ADL after (keras-hub's
        names; ``None``: the protocol's, see ``registry.BACKBONE_SPECS``).
      adl_drop_rate, adl_drop_threshold: ADL / p-ADL drop rate and gamma.
      rfga_kernel_size, rfga_residual, rfga_expand_activation: RFGA's.
      attention_loss: ``"none"`` or ``"sharpen_focus"`` (cam, adl, rfga).
      recurrent_timesteps, recurrent_units: the LSTM head's T and width.
      recurrent_crop_threshold: the local crop is the box of the predicted
        class's normalised CAM >= this.
      recurrent_fusion_weights: (global, local) weights of the logits' sum
        the model returns.
      recurrent_local_weight, recurrent_rank_weight, recurrent_margin:
        lambda', lambda and the margin of the thesis' loss.
      seed: seeds ADL's / p-ADL's random draws (each layer seed + its index).
      name: the model's name (default ``"{backbone}_{method}"``).

    Returns:
      A :class:`WSOLModel` returning logits ``[B, num_classes]``.

    Raises:
      ValueError: an unknown backbone or method (the message lists the valid
        ones), or arguments that do not fit together.
      WeightsUnavailableError: a preset could not be downloaded.
    """
    check_backbone(backbone)
    if name is None:
        stem = backbone if backbone in BACKBONE_SPECS else "keras_hub"
        name = f"{stem}_{method}"
    return WSOLModel(
        backbone=backbone,
        method=method,
        num_classes=num_classes,
        image_size=image_size,
        weights=weights,
        large_feature_map=large_feature_map,
        adl_positions=adl_positions,
        adl_drop_rate=adl_drop_rate,
        adl_drop_threshold=adl_drop_threshold,
        rfga_kernel_size=rfga_kernel_size,
        rfga_residual=rfga_residual,
        rfga_expand_activation=rfga_expand_activation,
        attention_loss=attention_loss,
        recurrent_timesteps=recurrent_timesteps,
        recurrent_units=recurrent_units,
        recurrent_crop_threshold=recurrent_crop_threshold,
        recurrent_fusion_weights=recurrent_fusion_weights,
        recurrent_local_weight=recurrent_local_weight,
        recurrent_rank_weight=recurrent_rank_weight,
        recurrent_margin=recurrent_margin,
        seed=seed,
        name=name,
    )
