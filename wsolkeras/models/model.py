"""`WSOLModel`: a backbone plus a WSOL method, as one functional Keras model.

The constructor's arguments are the model's config (``get_config`` returns
them), so a saved ``.keras`` file rebuilds the same graph and loads its
weights. Two arguments differ in a saved config: ``weights`` is ``"none"``
(the file holds the weights, nothing is downloaded) and ``backbone_config``
holds the keras-hub backbone's own config as it was resolved, so a model
built from a preset rebuilds offline.

Training: ``compile(optimizer=..., metrics=[...])`` with no loss; the model
computes its own objective and reports its parts as metrics:

- cam, adl, rfga, vitol: ``ce`` (sparse softmax cross-entropy on the logits);
- ``attention_loss="sharpen_focus"``: ``ce`` and the parts of
  ``wsolkeras.losses.SharpenFocusObjective``;
- recurrent: ``ce_global``, ``ce_local``, ``rank`` (see
  :mod:`wsolkeras.models.recurrent`).

``loss`` is their weighted sum (plus any layer regularisation losses).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from layers import RecurrentAttentionHead
from wsolkeras.models import cnn, presets, registry
from wsolkeras.models.recurrent import CamCrop, StreamFusion


def _check_number(name: str, value: Any, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value!r}.")
    return float(value)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def check_backbone(backbone: Any) -> str:
    """Returns `backbone`, or raises a ValueError listing the valid names."""
    if isinstance(backbone, str) and (
        backbone in registry.BACKBONE_SPECS or presets.is_known_preset(backbone)
    ):
        return backbone
    raise ValueError(
        f"Unknown backbone {backbone!r}: choose one of {', '.join(registry.BACKBONES)}, a "
        "keras-hub backbone preset name (keras_hub.models.Backbone.presets), or a local "
        "keras-hub preset directory."
    )


@keras.saving.register_keras_serializable(package="wsolkeras")
class WSOLModel(keras.Model):
    """A WSOL classifier whose layers carry the roles of :mod:`wsolkeras.roles`.

    Calling it on images ``[B, S, S, 3]`` (normalised as
    ``registry.normalization(backbone)`` says) returns logits
    ``[B, num_classes]``; for ``recurrent`` the fused logits of both streams.
    See :func:`wsolkeras.models.build` for the arguments; ``backbone_config``
    is set by ``get_config`` only (see the module docstring).

    Attributes:
      backbone_name, method, attention_loss: as given.
      part_trackers: the ``keras.metrics.Mean`` of each reported loss part.
    """

    def __init__(
        self,
        backbone: str = "small_cnn",
        method: str = "cam",
        num_classes: int = 2,
        image_size: int = 224,
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
        backbone_config: dict | None = None,
        **kwargs: Any,
    ) -> None:
        # --- arguments ---------------------------------------------------------
        check_backbone(backbone)
        registry.check_method(method)
        if attention_loss not in registry.ATTENTION_LOSSES:
            raise ValueError(
                f"Unknown attention_loss {attention_loss!r}: choose one of "
                f"{', '.join(registry.ATTENTION_LOSSES)}."
            )
        num_classes = _check_int("num_classes", num_classes, 1)
        image_size = _check_int("image_size", image_size, 8)
        if not isinstance(weights, str) or not weights:
            raise ValueError(
                f"weights must be 'none', 'imagenet', a keras-hub preset name or a local "
                f"preset directory, got {weights!r}."
            )
        if backbone_config is not None and weights != "none":
            raise ValueError(
                "backbone_config rebuilds a saved model's backbone; its weights come from the "
                f"saved file, so weights must be 'none', got {weights!r}."
            )
        spec = registry.BACKBONE_SPECS.get(backbone)
        transformer = spec is not None and spec.is_transformer
        if transformer and method != "vitol":
            raise ValueError(
                f"Backbone {backbone!r} is a transformer: use method='vitol' (methods "
                f"{', '.join(registry.CNN_METHODS)} need a convolutional backbone)."
            )
        if transformer and image_size % spec.config["patch_size"]:
            raise ValueError(
                f"image_size must be a multiple of the patch size {spec.config['patch_size']} "
                f"for {backbone!r}, got {image_size}."
            )
        if method == "vitol" and not transformer:
            vits = [name for name, s in registry.BACKBONE_SPECS.items() if s.is_transformer]
            raise ValueError(
                f"method='vitol' needs a ViT/DeiT backbone ({', '.join(vits)}), got {backbone!r}."
            )
        if attention_loss == "sharpen_focus" and method not in ("cam", "adl", "rfga"):
            raise ValueError(
                "attention_loss='sharpen_focus' applies to the CNN methods cam, adl and rfga, "
                f"not {method!r}."
            )
        if attention_loss == "sharpen_focus" and (spec is None or not spec.inner_features):
            raise ValueError(
                f"attention_loss='sharpen_focus' needs an inner feature layer; backbone "
                f"{backbone!r} has none registered (use one of "
                f"{', '.join(n for n, s in registry.BACKBONE_SPECS.items() if s.inner_features)})."
            )
        if method in ("recurrent",) or attention_loss != "none":
            if keras.backend.backend() != "tensorflow":
                raise ValueError(
                    f"method={method!r} with attention_loss={attention_loss!r} trains with a "
                    "TensorFlow GradientTape: use the TensorFlow backend."
                )
        adl_drop_rate = _check_number("adl_drop_rate", adl_drop_rate, 0.0, 1.0)
        adl_drop_threshold = _check_number("adl_drop_threshold", adl_drop_threshold, 0.0, 1.0)
        if isinstance(adl_positions, str):
            adl_positions = [p.strip() for p in adl_positions.split(",") if p.strip()]
        if adl_positions is not None:
            adl_positions = [str(p) for p in adl_positions]
        if method == "adl":
            if adl_positions is None:
                adl_positions = list(spec.adl_positions) if spec is not None else []
            if not adl_positions:
                raise ValueError(
                    f"method='adl' needs adl_positions (layer names to put ADL after); "
                    f"backbone {backbone!r} has no default positions."
                )
        fusion = tuple(
            _check_number("recurrent_fusion_weights", w, 0.0) for w in recurrent_fusion_weights
        )
        if len(fusion) != 2:
            raise ValueError(
                f"recurrent_fusion_weights needs 2 weights (global, local), got {fusion!r}."
            )
        recurrent_crop_threshold = _check_number(
            "recurrent_crop_threshold", recurrent_crop_threshold, 0.0, 0.999
        )
        recurrent_local_weight = _check_number("recurrent_local_weight", recurrent_local_weight, 0)
        recurrent_rank_weight = _check_number("recurrent_rank_weight", recurrent_rank_weight, 0)
        recurrent_margin = _check_number("recurrent_margin", recurrent_margin, 0)

        # --- backbone ----------------------------------------------------------
        def make_network(name: str | None = None) -> keras.Model:
            if backbone_config is not None:
                config = dict(backbone_config)
                if name is not None:
                    config["config"] = {**config["config"], "name": name}
                return keras.saving.deserialize_keras_object(config)
            return presets.make_backbone(
                backbone,
                weights,
                image_size=image_size,
                large_feature_map=large_feature_map,
                name=name,
            )

        network = make_network()
        resolved_config = None
        if spec is None or spec.family != "small_cnn":
            resolved_config = keras.saving.serialize_keras_object(network)

        # --- graph -------------------------------------------------------------
        inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
        streams: list[Any] = []  # recurrent: [global logits, local logits]
        if method == "vitol":
            from wsolkeras.models.vitol import vitol_logits

            outputs = vitol_logits(
                network,
                inputs,
                num_classes,
                drop_rate=adl_drop_rate,
                drop_threshold=adl_drop_threshold,
                seed=seed,
            )
        else:
            if spec is None:
                network = cnn.last_feature_network(network, backbone)
            x, _ = cnn.cnn_features(
                network,
                inputs,
                spec,
                adl_positions=adl_positions if method == "adl" else (),
                adl_drop_rate=adl_drop_rate,
                adl_drop_threshold=adl_drop_threshold,
                seed=seed,
            )
            rfga = None
            if method == "rfga":
                rfga = {
                    "kernel_size": rfga_kernel_size,
                    "residual": rfga_residual,
                    "expand_activation": rfga_expand_activation,
                }
            features, outputs, classifier = cnn.cam_head(x, num_classes, rfga=rfga)
            if method == "recurrent":
                # The global classifier at every position gives the class maps (CAM + bias).
                class_maps = classifier(features)
                crops = CamCrop(recurrent_crop_threshold, name="cam_crop")(inputs, class_maps)
                local_network = make_network("local_backbone")
                if spec is None:
                    local_network = cnn.last_feature_network(local_network, backbone)
                local = local_network(crops)
                local = keras.layers.GlobalAveragePooling2D(name="local_gap")(local)
                local_logits = RecurrentAttentionHead(
                    num_classes,
                    timesteps=recurrent_timesteps,
                    units=recurrent_units,
                    name="recurrent_head",
                )(local)
                streams = [outputs, local_logits]
                outputs = StreamFusion(fusion, name="fusion")(streams)

        super().__init__(inputs, outputs, **kwargs)

        # --- config and training parts -----------------------------------------
        self.backbone_name = backbone
        self.method = method
        self.attention_loss = attention_loss
        self._wsol_config = {
            "backbone": backbone,
            "method": method,
            "num_classes": num_classes,
            "image_size": image_size,
            "weights": weights,
            "large_feature_map": bool(large_feature_map),
            "adl_positions": adl_positions,
            "adl_drop_rate": adl_drop_rate,
            "adl_drop_threshold": adl_drop_threshold,
            "rfga_kernel_size": rfga_kernel_size,
            "rfga_residual": rfga_residual,
            "rfga_expand_activation": rfga_expand_activation,
            "attention_loss": attention_loss,
            "recurrent_timesteps": recurrent_timesteps,
            "recurrent_units": recurrent_units,
            "recurrent_crop_threshold": recurrent_crop_threshold,
            "recurrent_fusion_weights": list(fusion),
            "recurrent_local_weight": recurrent_local_weight,
            "recurrent_rank_weight": recurrent_rank_weight,
            "recurrent_margin": recurrent_margin,
            "seed": seed,
            "backbone_config": resolved_config,
        }
        # Views of the same layers for the objectives that need more than the
        # logits, kept off Keras' tracking so that the shared variables are
        # saved once, under the model's own layers.
        objective = None
        if method == "recurrent":
            objective = keras.Model(inputs, streams, name="streams")
            parts = ["ce_global", "ce_local", "rank"]
        elif attention_loss == "sharpen_focus":
            from wsolkeras.losses import SharpenFocusObjective

            objective = SharpenFocusObjective(self)
            parts = ["ce", "siou_inner", "siou_last", "ac"]
        else:
            parts = ["ce"]
        object.__setattr__(self, "_objective", objective)
        self.part_trackers = [keras.metrics.Mean(name=part) for part in parts]

    # --- config -------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        config = {"name": self.name, "trainable": self.trainable, **self._wsol_config}
        config["weights"] = "none"
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> WSOLModel:
        return cls(**config)

    # --- training -----------------------------------------------------------------

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, **kwargs: Any) -> None:
        """``keras.Model.compile`` without a loss: the model computes its own objective."""
        if loss is not None:
            raise ValueError(
                "WSOLModel computes its own loss (cross-entropy plus the method's terms); "
                f"call compile(optimizer=..., metrics=[...]) without loss, got loss={loss!r}."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Recompiles a loaded model (optimizer and metrics) as ``keras.Model`` does."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def _custom_objective(self) -> bool:
        return self._objective is not None

    def _parts(self, x: Any, y: Any, training: bool) -> tuple[Any, dict[str, Any], Any]:
        """(objective, {part name: value}, logits) for one batch (per replica)."""
        y = ops.cast(ops.reshape(y, (-1,)), "int32")
        if self.method == "recurrent":
            from wsolkeras.losses import ranking_loss

            global_logits, local_logits = self._objective(x, training=training)
            cfg = self._wsol_config
            fused = self.get_layer("fusion")([global_logits, local_logits])
            ce_global = _cross_entropy(y, global_logits)
            ce_local = _cross_entropy(y, local_logits)
            rank = ops.mean(
                ranking_loss(global_logits, local_logits, y, margin=cfg["recurrent_margin"])
            )
            total = (
                ce_global
                + cfg["recurrent_local_weight"] * ce_local
                + cfg["recurrent_rank_weight"] * rank
            )
            return total, {"ce_global": ce_global, "ce_local": ce_local, "rank": rank}, fused
        if self.attention_loss == "sharpen_focus":
            total, logits, terms = self._objective(x, y, training=training)
            return total, terms, logits
        logits = self(x, training=training)
        ce = _cross_entropy(y, logits)
        return ce, {"ce": ce}, logits

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        """Sparse softmax cross-entropy on the logits (methods without a custom step)."""
        _no_sample_weight(sample_weight)
        ce = _cross_entropy(ops.cast(ops.reshape(y, (-1,)), "int32"), y_pred)
        self.part_trackers[0].update_state(ce)
        total = ce
        if self.losses:
            total = total + ops.sum(self.losses)
        return _scale_for_replicas(total)

    def train_step(self, data: Any) -> dict[str, Any]:
        if not self._custom_objective:
            return super().train_step(data)
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _no_sample_weight(sample_weight)
        with tf.GradientTape() as tape:
            total, parts, logits = self._parts(x, y, training=True)
            if self.losses:
                total = total + ops.sum(self.losses)
            scaled = _scale_for_replicas(total)
            if self.optimizer is not None:
                scaled = self.optimizer.scale_loss(scaled)
        gradients = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights, strict=True))
        return self._update_metrics(x, y, total, parts, logits)

    def test_step(self, data: Any) -> dict[str, Any]:
        if not self._custom_objective:
            return super().test_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _no_sample_weight(sample_weight)
        total, parts, logits = self._parts(x, y, training=False)
        return self._update_metrics(x, y, total, parts, logits)

    def _update_metrics(
        self, x: Any, y: Any, total: Any, parts: dict[str, Any], logits: Any
    ) -> dict[str, Any]:
        batch = ops.shape(logits)[0]
        self._loss_tracker.update_state(total, sample_weight=batch)
        for tracker in self.part_trackers:
            tracker.update_state(parts[tracker.name], sample_weight=batch)
        return self.compute_metrics(x, y, logits, sample_weight=None)


def _cross_entropy(labels: Any, logits: Any) -> Any:
    """Mean sparse softmax cross-entropy, in float32."""
    return ops.mean(
        keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(logits, "float32"), from_logits=True
        )
    )


def _scale_for_replicas(loss: Any) -> Any:
    """A replica's share of the loss: tf.distribute sums the replicas' gradients."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
    return loss


def _no_sample_weight(sample_weight: Any) -> None:
    if sample_weight is not None:
        raise ValueError(
            "WSOLModel computes its own objective and does not take sample weights; "
            "pass (images, labels) batches."
        )
