"""The backbones and methods `wsolkeras.models` knows by name, as data.

Each backbone is a :class:`BackboneSpec`: the keras-hub class and the
constructor arguments that build it with random weights, its ImageNet preset,
the input normalisation that preset was trained with, and the layer names
(keras-hub's own) where the methods hook in. Any other keras-hub backbone
preset name (or local preset directory) is accepted generically by
:func:`wsolkeras.models.build`; see :mod:`wsolkeras.models.presets`.

Layer names of keras-hub's ResNet: ``stack{i}`` is torchvision's
``layer{i+1}``; ``stack{i}_block{j}_out`` is the output (after the residual add
and ReLU) of block j of that stage. VGG: ``block{i}_conv{j}`` is
``conv{i}_{j}`` (ReLU included) and ``block{i}_pool`` is ``pool{i}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

METHODS: tuple[str, ...] = ("cam", "adl", "rfga", "vitol", "recurrent")
"""The WSOL methods, by name (``WSOL_PROTOCOL.md`` section 2)."""

CNN_METHODS: tuple[str, ...] = ("cam", "adl", "rfga", "recurrent")
"""Methods that need a convolutional backbone (a 4-D feature map)."""

ATTENTION_LOSSES: tuple[str, ...] = ("none", "sharpen_focus")
"""Extra training objectives, applicable to the CNN methods."""


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one named backbone and where the methods attach to it.

    Attributes:
      name: the name `build(backbone=...)` takes.
      family: ``"small_cnn"`` (built here), ``"resnet"``, ``"vgg"``, ``"vit"``
        or ``"deit"`` (keras-hub).
      keras_hub_class: the keras-hub backbone class name (``None`` for
        small_cnn).
      config: constructor arguments for a random-weight backbone; the model
        adds ``image_shape`` and, for ResNet, the protocol's strides.
      imagenet_preset: the keras-hub preset `weights="imagenet"` loads, or
        ``None`` when keras-hub has none.
      normalization: the `wsolkeras.data` normalisation the preset's weights
        were trained with (one of imagenet, unit, symmetric, raw).
      adl_positions: default ADL positions (layer names, ADL goes after each).
      inner_features: the layer whose output is the inner feature map
        ("Sharpen Focus" inner-layer losses), or ``None``.
      skip_layers: layers of the keras-hub backbone left out (VGG's pool5).
      extra_conv: channels of the 3x3 conv + ReLU added after the backbone
        (the protocol's VGG16 conv6), or 0.
    """

    name: str
    family: str
    keras_hub_class: str | None
    config: Mapping[str, object]
    imagenet_preset: str | None
    normalization: str
    adl_positions: tuple[str, ...] = ()
    inner_features: str | None = None
    skip_layers: tuple[str, ...] = ()
    extra_conv: int = 0

    @property
    def is_transformer(self) -> bool:
        return self.family in ("vit", "deit")


_RESNET_STEM = {"input_conv_filters": [64], "input_conv_kernel_sizes": [7]}
_RESNET_FILTERS = [64, 128, 256, 512]


_SPECS: list[BackboneSpec] = [
    BackboneSpec(
        name="small_cnn",
        family="small_cnn",
        keras_hub_class=None,
        config={"filters": (16, 32, 64, 64)},
        imagenet_preset=None,
        normalization="unit",
        # As VGG16's pool3 / conv4_3 / conv5_3: after the stride-8 pooling and
        # after each of the two convolutions at that resolution.
        adl_positions=("block2_pool", "block3_relu", "block4_relu"),
        inner_features="block3_relu",
    ),
    BackboneSpec(
        name="resnet18",
        family="resnet",
        keras_hub_class="ResNetBackbone",
        config={
            **_RESNET_STEM,
            "stackwise_num_filters": _RESNET_FILTERS,
            "stackwise_num_blocks": [2, 2, 2, 2],
            "stackwise_num_strides": [1, 2, 2, 2],
            "block_type": "basic_block",
            "use_pre_activation": False,
        },
        imagenet_preset="resnet_18_imagenet",
        normalization="imagenet",
        # ResNet50's layer3 block 0 / layer4 blocks 0 and 2, where layer4 has
        # two blocks: layer3 block 0, layer4 block 0 and its last block 1.
        adl_positions=("stack2_block0_out", "stack3_block0_out", "stack3_block1_out"),
        # "Sharpen Focus": the last conv of the penultimate stage (layer3).
        inner_features="stack2_block1_out",
    ),
    BackboneSpec(
        name="resnet50",
        family="resnet",
        keras_hub_class="ResNetBackbone",
        config={
            **_RESNET_STEM,
            "stackwise_num_filters": _RESNET_FILTERS,
            "stackwise_num_blocks": [3, 4, 6, 3],
            "stackwise_num_strides": [1, 2, 2, 2],
            "block_type": "bottleneck_block",
            "use_pre_activation": False,
        },
        imagenet_preset="resnet_50_imagenet",
        normalization="imagenet",
        # The protocol's: after layer3 block 0 and after layer4 blocks 0 and 2.
        adl_positions=("stack2_block0_out", "stack3_block0_out", "stack3_block2_out"),
        inner_features="stack2_block5_out",
    ),
    BackboneSpec(
        name="vgg16",
        family="vgg",
        keras_hub_class="VGGBackbone",
        config={
            "stackwise_num_repeats": [2, 2, 3, 3, 3],
            "stackwise_num_filters": [64, 128, 256, 512, 512],
        },
        imagenet_preset="vgg_16_imagenet",
        normalization="imagenet",
        # The protocol's: after pool3, conv4_3 and conv5_3.
        adl_positions=("block3_pool", "block4_conv3", "block5_conv3"),
        # "Sharpen Focus" used conv4_4 of VGG19; VGG16's counterpart is conv4_3.
        inner_features="block4_conv3",
        skip_layers=("block5_pool",),
        extra_conv=1024,
    ),
]


def _transformer(family: str, size: str, preset: str | None) -> BackboneSpec:
    """ViT / DeiT of Dosovitskiy et al. and Touvron et al.: patch 16, 12 blocks, MLP 4x."""
    hidden_dim, num_heads = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}[size]
    return BackboneSpec(
        name=f"{family}_{size}",
        family=family,
        keras_hub_class="ViTBackbone" if family == "vit" else "DeiTBackbone",
        config={
            "patch_size": 16,
            "num_layers": 12,
            "num_heads": num_heads,
            "hidden_dim": hidden_dim,
            ("mlp_dim" if family == "vit" else "intermediate_dim"): 4 * hidden_dim,
        },
        imagenet_preset=preset,
        # Google's ViT checkpoints take [-1, 1]; Facebook's DeiT the ImageNet mean/std.
        normalization="symmetric" if family == "vit" else "imagenet",
    )


_SPECS += [
    # keras-hub has ImageNet ViTs from base up only.
    _transformer("vit", "tiny", None),
    _transformer("vit", "small", None),
    _transformer("vit", "base", "vit_base_patch16_224_imagenet"),
    _transformer("deit", "tiny", "deit_tiny_distilled_patch16_224_imagenet"),
    _transformer("deit", "small", "deit_small_distilled_patch16_224_imagenet"),
    _transformer("deit", "base", "deit_base_distilled_patch16_224_imagenet"),
]

BACKBONE_SPECS: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}
BACKBONES: tuple[str, ...] = tuple(BACKBONE_SPECS)
"""The backbones known by name; any keras-hub backbone preset is accepted too."""

RESNET_STRIDES = {False: [1, 2, 2, 1], True: [1, 2, 1, 1]}
"""The protocol's ResNet stage strides (layer4 at stride 1: output stride 16;
``large_feature_map=True``: layer3 at stride 1 too, output stride 8)."""


def normalization(backbone: str) -> str:
    """The `wsolkeras.data` normalisation a backbone's ImageNet weights expect.

    Generic keras-hub presets are not known here: they get ``"imagenet"``,
    which is what keras-hub's image classifiers of ImageNet-trained CNNs use;
    check the preset's ``preprocessor.json`` when it matters.
    """
    spec = BACKBONE_SPECS.get(backbone)
    return spec.normalization if spec is not None else "imagenet"


def default_extractor(method: str) -> str:
    """The map extractor a method's localisation is evaluated with."""
    check_method(method)
    return "gar" if method == "vitol" else "cam"


def check_method(method: str) -> str:
    """Returns `method`, or raises a ValueError listing the valid ones."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    return method
