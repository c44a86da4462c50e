"""Method `vitol`: ViT / DeiT with p-ADL after every block (Gupta et al., ViTOL).

``WSOL_PROTOCOL.md`` section 2 and ``papers/vitol-patch-adl-grad-attention-rollout.txt``:

    images -> wsol_encoder (wsolkeras.vit.AttentionEncoder: the backbone's own
              blocks, with PatchADL after the MLP residual add of EVERY block)
           -> class token -> wsol_classifier (Dense, logits)

Maps come from grad attention rollout (``wsolkeras.extractors.get("gar",
model)``), which reads the encoder's per-block attention probabilities.

DeiT: the class token alone feeds the classifier (as keras-hub's
``DeiTImageClassifier``); the distillation token, trained in DeiT against a
CNN teacher that WSOL training does not have, is left unused. It still takes
part in attention, so rollouts include it as a row/column; GAR reads the
class token's row and the patch columns.
"""

from __future__ import annotations

import keras

from layers import PatchADL
from wsolkeras import roles
from wsolkeras.vit import AttentionEncoder, TokenPooling


def vitol_logits(
    backbone: keras.Model,
    inputs: keras.KerasTensor,
    num_classes: int,
    *,
    drop_rate: float = 0.75,
    drop_threshold: float = 0.9,
    seed: int | None = None,
) -> keras.KerasTensor:
    """Logits of a ViTOL classifier on `inputs` (the backbone's weights are shared)."""

    def patch_adl(index: int) -> keras.layers.Layer:
        return PatchADL(
            drop_rate=drop_rate,
            drop_threshold=drop_threshold,
            seed=None if seed is None else seed + index,
            name=f"patch_adl_{index}",
        )

    encoder = AttentionEncoder(backbone, after_block=patch_adl, name=roles.ENCODER)
    tokens, _ = encoder(inputs)
    pooled = TokenPooling("token", encoder.num_prefix_tokens, name="class_token")(tokens)
    return keras.layers.Dense(num_classes, name=roles.CLASSIFIER)(pooled)
