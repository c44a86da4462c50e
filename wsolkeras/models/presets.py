"""Making the backbone network: random weights, ImageNet, a preset, or a preset directory.

``weights`` is one of

- ``"none"``: random initialisation from the config in
  :mod:`wsolkeras.models.registry` (no network, no files);
- ``"imagenet"``: the backbone's keras-hub ImageNet preset (downloaded by
  keras-hub, so it needs network access the first time);
- a keras-hub preset name (``keras_hub.models.Backbone.presets``, or a
  ``kaggle://`` / ``hf://`` handle);
- a local preset directory, as written by ``Backbone.save_to_preset(dir)``.

Presets are loaded with the model's overrides (the protocol's ResNet strides):
keras-hub's ``from_preset(preset, stackwise_num_strides=[...])`` rebuilds the
network with the new strides and loads the same weights, since strides change
no weight shape.

Offline, keras-hub raises ``requests.exceptions.ConnectionError`` (an
``OSError``) within about a second; that becomes a
:class:`WeightsUnavailableError` that says what to pass instead.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import keras_hub

from wsolkeras.models import registry
from wsolkeras.models.small_cnn import small_cnn


class WeightsUnavailableError(RuntimeError):
    """A pretrained preset could not be fetched (usually: no network access)."""


def is_local_preset(value: str) -> bool:
    """True when `value` names a local directory (a saved keras-hub preset)."""
    return os.path.isdir(os.path.expanduser(value))


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or os.sep in value and "://" not in value


def is_known_preset(value: str) -> bool:
    """True for a keras-hub backbone preset name, a remote handle or a local directory."""
    return value in keras_hub.models.Backbone.presets or "://" in value or is_local_preset(value)


def _keras_hub_class(name: str | None) -> type:
    return getattr(keras_hub.models, name) if name else keras_hub.models.Backbone


def load_preset(
    preset: str,
    *,
    cls_name: str | None = None,
    load_weights: bool = True,
    what: str = "weights",
    **overrides: Any,
) -> keras.Model:
    """``Backbone.from_preset`` with errors that say what happened and what to do.

    Args:
      preset: a keras-hub preset name, handle, or local preset directory.
      cls_name: the keras-hub backbone class expected (``None``: any).
      load_weights: False builds the preset's architecture with random weights.
      what: how the caller names `preset` in messages (a flag, an argument).
      **overrides: constructor arguments replacing the preset's (strides).

    Raises:
      WeightsUnavailableError: a remote preset could not be downloaded.
      ValueError: a local path that is not a preset directory.
    """
    cls = _keras_hub_class(cls_name)
    local = is_local_preset(preset)
    if not local and _looks_like_path(preset):
        raise ValueError(
            f"{what}={preset!r} looks like a path but is not a directory. Pass a keras-hub "
            "preset directory (written by Backbone.save_to_preset), a keras-hub preset name, "
            "'imagenet' or 'none'."
        )
    try:
        return cls.from_preset(
            os.path.expanduser(preset) if local else preset, load_weights=load_weights, **overrides
        )
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError) and not local:
            raise
        if local:
            raise ValueError(
                f"{what}={preset!r} is a directory but not a readable keras-hub preset "
                f"(it needs config.json, metadata.json and model.weights.h5, as written by "
                f"Backbone.save_to_preset): {error}"
            ) from error
        if load_weights:
            instead = (
                "Pass --weights=none (weights='none') to start from random weights, or "
                "--weights=/path/to/preset_dir"
            )
        else:  # a generic backbone's config comes from its preset, weights or not
            instead = (
                "A generic keras-hub backbone needs its preset even with --weights=none: pass "
                f"one of {', '.join(registry.BACKBONES)}, or --backbone=/path/to/preset_dir"
            )
        raise WeightsUnavailableError(
            f"Could not download the keras-hub preset {preset!r} ({what}): "
            f"{type(error).__name__}: {str(error)[:200]}. This machine seems to have no "
            f"network access. {instead}: a local copy saved with "
            f"keras_hub.models.Backbone.from_preset({preset!r}).save_to_preset(dir) "
            "where the network is reachable."
        ) from error


def backbone_overrides(spec: registry.BackboneSpec | None, large_feature_map: bool) -> dict:
    """Constructor arguments the WSOL models change in a backbone (the protocol's strides)."""
    if spec is not None and spec.family == "resnet":
        return {"stackwise_num_strides": list(registry.RESNET_STRIDES[large_feature_map])}
    return {}


def make_backbone(
    backbone: str,
    weights: str,
    *,
    image_size: int,
    large_feature_map: bool = False,
    name: str | None = None,
) -> keras.Model:
    """The backbone network for `build`, with the requested weights.

    Args:
      backbone: a name in ``registry.BACKBONES``, a keras-hub preset name, or
        a local preset directory (used generically).
      weights: see the module docstring.
      image_size: input height and width (ViT/DeiT fix it at construction).
      large_feature_map: ResNet: layer3 at stride 1 too.
      name: name of the returned model (``None``: the class default).

    Returns:
      A functional `keras.Model` from images to its last feature map (or
      tokens for ViT/DeiT): a keras-hub ``Backbone`` or the small CNN.
    """
    spec = registry.BACKBONE_SPECS.get(backbone)
    named = {} if name is None else {"name": name}
    if spec is None:  # a keras-hub preset used generically
        if weights == "none":
            return load_preset(backbone, load_weights=False, what="backbone", **named)
        preset = backbone if weights == "imagenet" else weights
        return load_preset(preset, what="weights", **named)

    if spec.family == "small_cnn":
        if weights != "none":
            raise ValueError(
                f"small_cnn has no pretrained weights: pass weights='none', got {weights!r}."
            )
        return small_cnn(spec.config["filters"], (image_size, image_size, 3), **named)

    overrides = backbone_overrides(spec, large_feature_map)
    cls = _keras_hub_class(spec.keras_hub_class)
    if weights == "none":
        config = {**spec.config, **overrides, **named}
        return cls(image_shape=(image_size, image_size, 3), **config)

    if weights == "imagenet":
        if spec.imagenet_preset is None:
            raise ValueError(
                f"keras-hub has no ImageNet preset for {backbone!r}. Pass weights='none', a "
                "keras-hub preset name or a local preset directory."
            )
        preset = spec.imagenet_preset
    else:
        preset = weights
    if spec.is_transformer:
        model = load_preset(preset, cls_name=spec.keras_hub_class, **overrides, **named)
        if tuple(model.image_shape[:2]) != (image_size, image_size):
            raise ValueError(
                f"The preset {preset!r} is for {model.image_shape[0]}x{model.image_shape[1]} "
                f"images (its position embeddings fix the size); set image_size="
                f"{model.image_shape[0]}, got {image_size}."
            )
        return model
    return load_preset(preset, cls_name=spec.keras_hub_class, **overrides, **named)
