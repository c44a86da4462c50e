"""CNN backbones in a WSOL graph, and the CAM head (methods cam, adl, rfga).

The backbone's layers are traced into the model's own functional graph (the
same layer objects, so preset weights carry over) with the method's edits:
ADL after named layers, an identity layer named ``wsol_inner_features`` after
the inner feature layer, VGG16's pool5 left out. Then, per
``WSOL_PROTOCOL.md`` section 2:

    backbone -> [VGG16: conv6, 3x3 to 1024 + ReLU] -> [RFGA] -> wsol_features
             -> global average pooling -> wsol_classifier (Dense, logits)

CAM = the classifier's weights of a class applied to ``wsol_features``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from layers import ADL, RFGA
from wsolkeras import roles
from wsolkeras.models import registry


def feature_layer_names(network: keras.Model) -> list[str]:
    """Names of the network's layers whose output is a 4-D feature map."""
    names = []
    for layer in network.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # shared layers: several outputs
            continue
        if len(shape) == 4:
            names.append(layer.name)
    return names


def last_feature_network(network: keras.Model, source: str) -> keras.Model:
    """`network` cut at its last 4-D feature map (the whole network when its output is one).

    Raises:
      ValueError: the network has no 4-D feature map (e.g. a transformer).
    """
    if len(network.output.shape) == 4:
        return network
    candidates = feature_layer_names(network)
    if not candidates:
        raise ValueError(
            f"The backbone {source!r} has no 4-D feature map to compute a CAM from "
            f"(its output has shape {tuple(network.output.shape)}). Use a convolutional "
            f"backbone, or one of {', '.join(registry.BACKBONES)}."
        )
    return keras.Model(network.inputs, network.get_layer(candidates[-1]).output, name=network.name)


def trace(
    network: keras.Model,
    inputs: keras.KerasTensor,
    *,
    after: Mapping[str, Sequence[keras.layers.Layer]] | None = None,
    skip: Sequence[str] = (),
    capture: Sequence[str] = (),
    what: str = "positions",
) -> tuple[keras.KerasTensor, dict[str, keras.KerasTensor]]:
    """Calls `network`'s layers on `inputs`, layer by layer, with edits.

    Args:
      network: a functional model with one image input and one output.
      inputs: the tensor to feed it.
      after: layer name -> layers applied, in order, to that layer's output
        (every later consumer of the layer sees the edited tensor).
      skip: names of single-input layers replaced by their input.
      capture: names of layers (of `network` or of `after`) whose outputs to return.
      what: how the caller's argument is named in the unknown-name error.

    Returns:
      The network's output on `inputs` (its layers, weights included, are
      shared with `network`, not copied) and a dict name -> captured output.
    """
    after = dict(after or {})
    names = {layer.name for layer in network.layers}
    unknown = sorted((set(after) | set(skip)) - names)
    if unknown:
        raise ValueError(
            f"Unknown {what} {unknown} for backbone {network.name!r}: valid names are its "
            f"layers with a 4-D output: {', '.join(feature_layer_names(network))}."
        )

    captured: dict[str, keras.KerasTensor] = {}

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        if layer.name in skip:
            return args[0]
        outputs = layer(*args, **kwargs)
        if layer.name in capture:
            captured[layer.name] = outputs
        for extra in after.get(layer.name, ()):
            outputs = extra(outputs)
            if extra.name in capture:
                captured[extra.name] = outputs
        return outputs

    traced = keras.models.clone_model(
        network, input_tensors=inputs, clone_function=lambda layer: layer, call_function=call
    )
    return traced.outputs[0], captured


def cnn_features(
    network: keras.Model,
    inputs: keras.KerasTensor,
    spec: registry.BackboneSpec | None,
    *,
    adl_positions: Sequence[str] = (),
    adl_drop_rate: float = 0.75,
    adl_drop_threshold: float = 0.9,
    seed: int | None = None,
) -> tuple[keras.KerasTensor, keras.KerasTensor | None]:
    """The backbone's last feature map on `inputs`, with ADL and the inner-feature role.

    `spec` is ``None`` for a generic keras-hub backbone (no inner features,
    no VGG edits). Returns the map before the method's head (RFGA, CAM) and
    the inner feature map (the ``wsol_inner_features`` layer's output, or
    ``None`` when the backbone has none).
    """
    after: dict[str, list[keras.layers.Layer]] = {}
    hooks = [spec.inner_features, *spec.skip_layers] if spec is not None else []
    names = {layer.name for layer in network.layers}
    missing = [name for name in hooks if name and name not in names]
    if missing:
        raise ValueError(
            f"The backbone network {network.name!r} has no layers {missing}, which the "
            f"{spec.name!r} backbone uses: is the preset given in weights a {spec.name}? "
            "(Use an architecture of its own as backbone=<preset> instead.)"
        )
    if spec is not None and spec.inner_features:
        after[spec.inner_features] = [keras.layers.Identity(name=roles.INNER_FEATURES)]
    for index, position in enumerate(adl_positions):
        adl = ADL(
            drop_rate=adl_drop_rate,
            drop_threshold=adl_drop_threshold,
            seed=None if seed is None else seed + index,
            name=f"adl_{index}",
        )
        after.setdefault(position, []).append(adl)
    skip = spec.skip_layers if spec is not None else ()
    x, captured = trace(
        network,
        inputs,
        after=after,
        skip=skip,
        capture=[roles.INNER_FEATURES],
        what="adl_positions",
    )
    if spec is not None and spec.extra_conv:
        # The protocol's VGG16 conv6 (wsolevaluation: Conv2d(512, 1024, 3, padding=1) + ReLU).
        x = keras.layers.Conv2D(
            spec.extra_conv, 3, padding="same", activation="relu", name="conv6"
        )(x)
    return x, captured.get(roles.INNER_FEATURES)


def cam_head(
    features: keras.KerasTensor,
    num_classes: int,
    *,
    rfga: Mapping[str, Any] | None = None,
) -> tuple[keras.KerasTensor, keras.KerasTensor, keras.layers.Dense]:
    """``[RFGA] -> wsol_features -> GAP -> wsol_classifier``.

    Returns the feature map (the ``wsol_features`` output), the logits and
    the classifier layer.
    """
    x = features
    if rfga is not None:
        x = RFGA(**rfga, name="rfga")(x)
    x = keras.layers.Identity(name=roles.FEATURES)(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    classifier = keras.layers.Dense(num_classes, name=roles.CLASSIFIER)
    return x, classifier(pooled), classifier
