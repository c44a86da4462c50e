"""p-ADL: attention-based dropout on transformer tokens (ViTOL, CVPR-W 2022).

WSOL_PROTOCOL.md section 2: on tokens `[B, N, D]` (the CLS token included),
A = mean over D, the maximum is taken over all N tokens of a sample; the
drop-mask / importance-map rule, the one draw per call and the identity at
inference are those of ADL.
"""

import keras

from layers.adl import ADL


@keras.saving.register_keras_serializable(package="wsolkeras")
class PatchADL(ADL):
    """Patch-based attention dropout on token embeddings `[B, N, D]`.

    Args:
      drop_rate: probability in [0, 1] that a training call applies the patch
        drop mask instead of the patch importance map.
      drop_threshold: gamma in [0, 1]; tokens whose mean embedding reaches
        gamma times the sample's maximum over tokens are dropped.
      seed: optional int seed of the layer's random generator.

    Call arguments:
      inputs: float tensor `[B, N, D]`, CLS token included.
      training: the maps are applied only when true; otherwise identity.
    """

    input_rank = 3
    input_layout = "[batch, tokens, embedding]"

    def __init__(
        self,
        drop_rate: float = 0.75,
        drop_threshold: float = 0.9,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(drop_rate, drop_threshold, seed, **kwargs)
