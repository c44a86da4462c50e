"""ViT / DeiT encoders that also return every block's attention probabilities.

keras-hub's ``ViTEncoder`` loops over its blocks inside one layer and each
``ViTEncoderBlock`` calls its attention without returning the scores;
``DeiTBackbone`` discards the scores its ``DeiTEncoder`` can return. Attention
rollouts (``wsolkeras.extractors`` ``rollout`` and ``gar``) need them, and
ViTOL needs p-ADL after every block, so :class:`AttentionEncoder` re-runs the
backbone's own sub-layers (same weights, same order) block by block:

    x = x + dropout(mha(ln_1(x)))          # A_b = softmax(Q K^T / sqrt(d))
    x = x + mlp(ln_2(x))                   # DeiT: output_layer adds the residual
    x = after_block[b](x)                  # optional, e.g. PatchADL (ViTOL)

and returns ``(tokens, [A_1, ..., A_L])``, each ``A_b`` of shape
``[B, heads, N, N]`` (softmax probabilities, before attention dropout).

Token layout: ViT puts a class token first (``num_prefix_tokens == 1``);
DeiT puts a class token then a distillation token (``num_prefix_tokens ==
2``); the patch tokens follow in row-major order of the patch grid.

Saving: :class:`AttentionEncoder` is registered as ``wsolkeras>AttentionEncoder``;
its config holds the serialised backbone and ``after_block`` layers, so a model
built with it saves to and loads from ``.keras`` files (import ``wsolkeras.vit``
before ``keras.saving.load_model``). ``after_block`` given as a callable is
called once at construction and stored as the list of layers it returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import keras_hub

from wsolkeras import roles

_FAMILIES = {
    # backbone class -> (embedding layer name, encoder layer name)
    "ViTBackbone": ("vit_patching_and_embedding", "vit_encoder"),
    "DeiTBackbone": ("deit_patching_and_embedding", "deit_encoder"),
}


def _as_backbone(backbone: Any) -> keras.Model:
    if isinstance(backbone, dict):
        backbone = keras.saving.deserialize_keras_object(backbone)
    if not isinstance(backbone, (keras_hub.models.ViTBackbone, keras_hub.models.DeiTBackbone)):
        raise TypeError(
            "AttentionEncoder needs a keras_hub.models.ViTBackbone or DeiTBackbone "
            "(or its keras.saving.serialize_keras_object dict); "
            f"got {type(backbone).__name__}."
        )
    if getattr(backbone, "data_format", "channels_last") != "channels_last":
        raise ValueError("AttentionEncoder supports channels_last backbones only.")
    return backbone


@keras.saving.register_keras_serializable(package="wsolkeras")
class AttentionEncoder(keras.layers.Layer):
    """A keras-hub ViT/DeiT backbone that also returns per-block attention.

    Args:
        backbone: a ``keras_hub.models.ViTBackbone`` or ``DeiTBackbone`` (its
            weights and sub-layers are reused, not copied), or the dict
            ``keras.saving.serialize_keras_object(backbone)`` to build a fresh one.
        after_block: ``None``; a callable ``block_index -> keras.layers.Layer``
            called once per block; or a list with one layer per block. Each is
            applied to the tokens ``[B, N, D]`` after the MLP residual add of
            its block (where ViTOL puts p-ADL) and must keep the shape.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ...).

    Call: ``images [B, H, W, C] -> (tokens [B, N, D], [A_b [B, heads, N, N]] * L)``;
    ``tokens`` equal the backbone's output (final layer norm included).
    """

    def __init__(
        self,
        backbone: Any,
        after_block: Callable[[int], keras.layers.Layer]
        | Sequence[keras.layers.Layer | dict]
        | None = None,
        **kwargs: Any,
    ) -> None:
        backbone = _as_backbone(backbone)
        kwargs.setdefault("dtype", backbone.dtype_policy)
        super().__init__(**kwargs)
        self.backbone = backbone
        family = type(backbone).__name__
        if family not in _FAMILIES:  # a subclass of either: find its base
            family = next(
                name
                for name, cls in (
                    ("ViTBackbone", keras_hub.models.ViTBackbone),
                    ("DeiTBackbone", keras_hub.models.DeiTBackbone),
                )
                if isinstance(backbone, cls)
            )
        self.family = family
        embedding_name, encoder_name = _FAMILIES[family]
        embedding = backbone.get_layer(embedding_name)
        encoder = backbone.get_layer(encoder_name)
        for block in encoder.encoder_layers:
            # MultiHeadAttention fixes its flash-attention setting at construction.
            # The global default (None, also what keras.config.enable_flash_attention
            # sets) lets the backend choose and still returns scores on request; a
            # layer built with flash_attention=True raises when asked for scores.
            if getattr(block.mha, "_flash_attention", None) is True:
                raise ValueError(
                    f"Block {block.name!r} of {backbone.name!r} was built with "
                    "flash_attention=True, which cannot return attention scores. Rebuild "
                    "the backbone after keras.config.disable_flash_attention() (or without "
                    "flash_attention=True)."
                )
        self.num_layers = len(encoder.encoder_layers)
        self.num_heads = encoder.num_heads
        self.hidden_dim = encoder.hidden_dim
        if family == "ViTBackbone":
            self.num_prefix_tokens = 1 if embedding.use_class_token else 0
        else:
            self.num_prefix_tokens = 2  # class token, distillation token
        image_shape = tuple(backbone.image_shape)
        patch = tuple(backbone.patch_size)
        self.image_shape = image_shape
        self.grid_size = (image_shape[0] // patch[0], image_shape[1] // patch[1])
        self.num_tokens = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]

        if after_block is None:
            layers: list[keras.layers.Layer] = []
        elif callable(after_block) and not isinstance(after_block, keras.layers.Layer):
            layers = [after_block(i) for i in range(self.num_layers)]
        else:
            layers = [
                keras.saving.deserialize_keras_object(layer) if isinstance(layer, dict) else layer
                for layer in after_block
            ]
        if layers and len(layers) != self.num_layers:
            raise ValueError(
                f"after_block gives {len(layers)} layers for a backbone with "
                f"{self.num_layers} blocks: give one per block."
            )
        for i, layer in enumerate(layers):
            if not isinstance(layer, keras.layers.Layer):
                raise TypeError(
                    f"after_block[{i}] is a {type(layer).__name__}, not a keras.layers.Layer."
                )
        self.after_block_layers = layers

    # The backbone's parts are looked up on each use rather than stored as
    # attributes, so that saving sees each variable once (under `backbone`).
    def _parts(self) -> tuple[keras.layers.Layer, keras.layers.Layer]:
        embedding_name, encoder_name = _FAMILIES[self.family]
        return self.backbone.get_layer(embedding_name), self.backbone.get_layer(encoder_name)

    def build(self, input_shape: Any) -> None:
        for layer in self.after_block_layers:
            if not layer.built:
                layer.build((None, self.num_tokens, self.hidden_dim))
        self.built = True

    def call(self, images: Any, training: bool | None = None) -> tuple[Any, list[Any]]:
        embedding, encoder = self._parts()
        x = embedding(images, training=training)
        if self.family == "ViTBackbone":
            x = encoder.dropout(x, training=training)
        attentions = []
        for i, block in enumerate(encoder.encoder_layers):
            h = block.layer_norm_1(x)
            h, scores = block.mha(h, h, return_attention_scores=True, training=training)
            if self.family == "ViTBackbone":
                h = block.dropout(h, training=training)
                x = x + h
                x = x + block.mlp(block.layer_norm_2(x), training=training)
            else:
                x = x + h
                y = block.mlp(block.layer_norm_2(x), training=training)
                x = block.output_layer(y, x, training=training)  # dense, dropout, + x
            if self.after_block_layers:
                x = self.after_block_layers[i](x, training=training)
            attentions.append(scores)
        return encoder.layer_norm(x), attentions

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, list[Any]]:
        batch = input_shape[0]
        tokens = (batch, self.num_tokens, self.hidden_dim)
        attention = (batch, self.num_heads, self.num_tokens, self.num_tokens)
        return tokens, [attention] * self.num_layers

    def compute_output_spec(self, images: Any, training: bool | None = None) -> Any:
        tokens_shape, attention_shapes = self.compute_output_shape(images.shape)
        dtype = self.compute_dtype
        return keras.KerasTensor(tokens_shape, dtype=dtype), [
            keras.KerasTensor(shape, dtype=dtype) for shape in attention_shapes
        ]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "after_block": [
                    keras.saving.serialize_keras_object(layer) for layer in self.after_block_layers
                ]
                or None,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="wsolkeras")
class TokenPooling(keras.layers.Layer):
    """Pools encoder tokens ``[B, N, D]`` into one vector per image.

    ``mode="token"``: the class token (token 0), as keras-hub's ViT and DeiT
    classifiers do. ``mode="gap"``: the mean of the patch tokens (the
    ``num_prefix_tokens`` class/distillation tokens left out).
    """

    def __init__(self, mode: str = "token", num_prefix_tokens: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("token", "gap"):
            raise ValueError(f"TokenPooling mode must be 'token' or 'gap', got {mode!r}.")
        if mode == "token" and num_prefix_tokens < 1:
            raise ValueError("mode='token' needs a class token (num_prefix_tokens >= 1).")
        self.mode = mode
        self.num_prefix_tokens = num_prefix_tokens

    def call(self, tokens: Any) -> Any:
        if self.mode == "token":
            return tokens[:, 0]
        return keras.ops.mean(tokens[:, self.num_prefix_tokens :], axis=1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, Any]:
        return (input_shape[0], input_shape[2])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens})
        return config


def build_classifier(
    backbone: keras.Model,
    num_classes: int,
    *,
    pooling: str = "token",
    after_block: Callable[[int], keras.layers.Layer] | Sequence[keras.layers.Layer] | None = None,
    name: str | None = None,
) -> keras.Model:
    """A functional ViT/DeiT classifier whose encoder exposes attention.

    ``images -> AttentionEncoder (named roles.ENCODER) -> TokenPooling ->
    Dense (named roles.CLASSIFIER) -> logits``. The extractors ``rollout`` and
    ``gar`` find the encoder by its name. DeiT: the class token alone feeds
    the classifier (as keras-hub's ``DeiTImageClassifier``), the distillation
    token is not used.
    """
    encoder = AttentionEncoder(backbone, after_block=after_block, name=roles.ENCODER)
    inputs = keras.Input(shape=encoder.image_shape, name="images", dtype=backbone.input.dtype)
    tokens, _ = encoder(inputs)
    pooled = TokenPooling(pooling, encoder.num_prefix_tokens, name="token_pooling")(tokens)
    logits = keras.layers.Dense(num_classes, name=roles.CLASSIFIER, dtype=backbone.dtype_policy)(
        pooled
    )
    return keras.Model(inputs, logits, name=name)
