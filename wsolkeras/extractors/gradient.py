"""CAM and the gradient-weighted maps: one forward and one backward pass per batch.

Every gradient method runs the same mechanics (:class:`GradientExtractor`):
one forward pass of the whole batch under one ``GradientTape``, the target
``sum_i Y[i, c_i]`` (Y: pre-softmax class scores, c_i: image i's class), one
backward pass to the feature map F, giving G = dY/dF ``[B, h, w, K]``. In
inference mode the images of a batch are independent (BatchNorm uses its
moving statistics), so G[i] is image i's own gradient. The methods differ only
in :meth:`GradientExtractor.weigh`, a function of F and G.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from wsolkeras import roles
from wsolkeras.extractors.base import (
    Extractor,
    Probe,
    class_scores,
    describe_candidates,
    find_layer,
    four_d_layers,
    target_classes,
    watch_input,
)


def resolve_feature_layer(model: keras.Model, layer: str | None) -> str:
    """The feature layer's name: ``layer``, else ``roles.FEATURES``, else the
    last layer of the outer model whose output is 4-D (for a keras-hub
    ``ImageClassifier`` that is its backbone, whose output is the last stage)."""
    candidates = four_d_layers(model)
    if layer is None:
        if find_layer(model, roles.FEATURES) is not None:
            layer = roles.FEATURES
        else:
            outer = [name for name in candidates if "/" not in name]
            if not outer:
                raise ValueError(
                    f"Model {model.name!r} has no layer named {roles.FEATURES!r} and no "
                    "layer with a 4-D output in its outer graph; name the feature layer with "
                    f"layer='...'. 4-D-output layers inside it: {describe_candidates(candidates)}"
                )
            layer = outer[-1]
    found = find_layer(model, layer)
    if found is None:
        raise ValueError(
            f"Model {model.name!r} has no layer named {layer!r}. Layers with a 4-D output "
            f"[B, h, w, C] (nested ones as outer/inner): {describe_candidates(candidates)}"
        )
    if found.name not in {path.rsplit("/", 1)[-1] for path in candidates}:
        raise ValueError(
            f"Layer {layer!r} of {model.name!r} does not output one 4-D feature map "
            f"[B, h, w, C]. Candidates: {describe_candidates(candidates)}"
        )
    return found.name


def _check_features(features: Any, layer: str) -> None:
    if not isinstance(features, tf.Tensor) or features.shape.rank != 4:
        raise ValueError(f"Layer {layer!r} must output one tensor [B, h, w, C].")


def _channel_weighted(features: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """sum_k w_k F_k: ``[B, h, w, K] x [B, K] -> [B, h, w]``."""
    return tf.einsum("bhwk,bk->bhw", features, weights)


def gradcam_map(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """Grad-CAM: ReLU(sum_k w_k F_k), w_k = mean over pixels of dY/dF_k."""
    weights = tf.reduce_mean(gradients, axis=(1, 2))
    return tf.nn.relu(_channel_weighted(features, weights))


def gradcam_plus_plus_map(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, exponential-score closed form).

    With S = exp(Y) and a piecewise-linear network, the higher derivatives of
    S are S g^2 and S g^3 (g = dY/dF), so per pixel
    alpha = g^2 / (2 g^2 + sum_ab F_ab g^3) (S cancels), alpha = 0 where the
    denominator is 0; w_k = sum over pixels of alpha * ReLU(g). The paper's
    weight uses ReLU(dS/dF) = S ReLU(g): the factor S = exp(Y_c) is one
    positive number per image and is left out (it overflows for large logits
    and does not change the min-max normalised map).
    """
    g2 = tf.square(gradients)
    g3 = g2 * gradients
    sum_f = tf.reduce_sum(features, axis=(1, 2), keepdims=True)
    denominator = 2.0 * g2 + sum_f * g3
    nonzero = tf.not_equal(denominator, 0.0)
    alpha = tf.where(nonzero, g2 / tf.where(nonzero, denominator, tf.ones_like(denominator)), 0.0)
    weights = tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=(1, 2))
    return tf.nn.relu(_channel_weighted(features, weights))


def layercam_map(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """LayerCAM: ReLU(sum_k ReLU(dY/dF_k) * F_k), pixel by pixel."""
    return tf.nn.relu(tf.reduce_sum(tf.nn.relu(gradients) * features, axis=-1))


def channel_attention_map(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """A_ch, "Sharpen Focus" Eq. 3-4: ReLU(sum_k alpha_k F_k), alpha_k = mean of ReLU(dY/dF_k)."""
    weights = tf.reduce_mean(tf.nn.relu(gradients), axis=(1, 2))
    return tf.nn.relu(_channel_weighted(features, weights))


def pixel_attention_map(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """A_px, "Sharpen Focus" Eq. 5: ReLU(mean over k of dY/dF_k * F_k)."""
    return tf.nn.relu(tf.reduce_mean(gradients * features, axis=-1))


class GradientExtractor(Extractor):
    """One tape for the batch; subclasses only say how F and dY/dF make the map.

    Args:
        model: a functional Keras model (see :mod:`wsolkeras.extractors`).
        layer: name of the feature layer; default ``roles.FEATURES``, else
            the last 4-D-output layer of the outer model.
        differentiable: see :class:`~wsolkeras.extractors.base.Extractor`.
    """

    def __init__(
        self, model: keras.Model, *, layer: str | None = None, differentiable: bool = False
    ) -> None:
        super().__init__(model, differentiable=differentiable)
        self.layer = resolve_feature_layer(model, layer)
        self.probe = Probe(model, [self.layer])

    @staticmethod
    def weigh(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
        """The map ``[B, h, w]`` from F and dY/dF ``[B, h, w, K]``."""
        raise NotImplementedError

    def features_and_gradients(
        self, images: tf.Tensor, classes: tf.Tensor, training: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(F, dY/dF, logits)`` for the batch, from one forward and one backward pass."""
        with tf.GradientTape() as tape:
            watch_input(tape, images)
            (features,), logits = self.probe(images, training=training)
            _check_features(features, self.layer)
            target = tf.reduce_sum(class_scores(logits, target_classes(classes, logits)))
        gradients = tape.gradient(target, features)
        if gradients is None:
            raise ValueError(f"Layer {self.layer!r} does not feed the model's class scores.")
        return features, gradients, logits

    def compute_maps(self, images: tf.Tensor, classes: tf.Tensor, training: bool) -> tf.Tensor:
        features, gradients, _ = self.features_and_gradients(images, classes, training)
        return self.weigh(features, gradients)


class GradCAM(GradientExtractor):
    """Grad-CAM (Selvaraju et al. 2017)."""

    name = "gradcam"
    weigh = staticmethod(gradcam_map)


class GradCAMPlusPlus(GradientExtractor):
    """Grad-CAM++ (Chattopadhay et al. 2018)."""

    name = "gradcam++"
    weigh = staticmethod(gradcam_plus_plus_map)


class LayerCAM(GradientExtractor):
    """LayerCAM (Jiang et al. 2021)."""

    name = "layercam"
    weigh = staticmethod(layercam_map)


class ChannelAttention(GradientExtractor):
    """Positive-gradient channel-wise attention A_ch ("Sharpen Focus", Wang et al. 2019)."""

    name = "ach"
    weigh = staticmethod(channel_attention_map)


class PixelAttention(GradientExtractor):
    """Positive-gradient pixel-wise attention A_px ("Sharpen Focus", Wang et al. 2019)."""

    name = "apx"
    weigh = staticmethod(pixel_attention_map)


class CAM(Extractor):
    """Class activation map (Zhou et al. 2016): CAM_c = sum_k w_{k,c} F_k.

    Needs a head ``F -> global average pooling -> Dense``: the classifier is
    the ``Dense`` named ``classifier``, else ``roles.CLASSIFIER``, else the
    model's output layer if it is a ``Dense``. The bias is not added (it is
    one constant per class and the protocol min-max normalises the map), and
    no ReLU: negative values are kept. Then mean over pixels of CAM_c plus
    the bias equals the logit c.
    """

    name = "cam"

    def __init__(
        self,
        model: keras.Model,
        *,
        layer: str | None = None,
        classifier: str | None = None,
        differentiable: bool = False,
    ) -> None:
        super().__init__(model, differentiable=differentiable)
        self.layer = resolve_feature_layer(model, layer)
        dense = self._resolve_classifier(model, classifier)
        channels = find_layer(model, self.layer).output.shape[-1]
        kernel_shape = tuple(dense.kernel.shape)
        if len(kernel_shape) != 2 or kernel_shape[0] != channels:
            raise ValueError(
                f"CAM needs global average pooling + Dense on the feature layer: classifier "
                f"{dense.name!r} has kernel {kernel_shape}, but {self.layer!r} has {channels} "
                "channels. Use gradcam for other heads."
            )
        self.classifier = dense
        self.probe = Probe(model, [self.layer])

    @staticmethod
    def _resolve_classifier(model: keras.Model, classifier: str | None) -> keras.layers.Dense:
        if classifier is None:
            if find_layer(model, roles.CLASSIFIER) is not None:
                classifier = roles.CLASSIFIER
            else:
                last = model.outputs[0]._keras_history.operation
                if not isinstance(last, keras.layers.Dense):
                    raise ValueError(
                        f"CAM needs the classifier Dense layer: {model.name!r} has no layer "
                        f"named {roles.CLASSIFIER!r} and its output layer {last.name!r} is a "
                        f"{type(last).__name__}; pass classifier='...'."
                    )
                return last
        dense = find_layer(model, classifier)
        if not isinstance(dense, keras.layers.Dense):
            what = "no layer" if dense is None else f"a {type(dense).__name__}"
            denses = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)]
            raise ValueError(
                f"CAM classifier {classifier!r} of {model.name!r} is {what}, not a Dense layer. "
                f"Dense layers: {describe_candidates(denses)}"
            )
        return dense

    def compute_maps(self, images: tf.Tensor, classes: tf.Tensor, training: bool) -> tf.Tensor:
        (features,), logits = self.probe(images, training=training)
        _check_features(features, self.layer)
        kernel = tf.cast(tf.convert_to_tensor(self.classifier.kernel), features.dtype)  # [K, C]
        weights = tf.gather(tf.transpose(kernel), target_classes(classes, logits))  # [B, K]
        return _channel_weighted(features, weights)
