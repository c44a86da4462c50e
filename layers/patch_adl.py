"""p-ADL: attention-based dropout on transformer tokens (ViTOL, CVPR-W 2022).

WSOL_PROTOCOL.md section 2: on tokens `[B, N, D]` (the CLS token included),
A = mean over D, the maximum is taken over all N tokens of a sample; the
drop-mask / importance-map rule, the one draw per call and the identity at
inference are those of ADL.
"""

import keras
from keras import ops

from layers._checks import check_fraction, check_rank
from layers.adl import select_attention_map


@keras.saving.register_keras_serializable(package="wsolkeras")
class PatchADL(keras.layers.Layer):
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

    def __init__(
        self,
        drop_rate: float = 0.75,
        drop_threshold: float = 0.9,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.drop_rate = check_fraction("PatchADL", "drop_rate", drop_rate)
        self.drop_threshold = check_fraction("PatchADL", "drop_threshold", drop_threshold)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        check_rank("PatchADL", input_shape, 3, "[batch, tokens, embedding]")
        self.built = True

    def call(self, inputs, training=None):
        if not training:
            return inputs
        attention = ops.mean(inputs, axis=-1, keepdims=True)
        selected = select_attention_map(
            attention, self.drop_rate, self.drop_threshold, self.seed_generator
        )
        return inputs * selected

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(drop_rate=self.drop_rate, drop_threshold=self.drop_threshold, seed=self.seed)
        return config
