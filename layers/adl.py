"""ADL: the attention-based dropout layer (Choe & Shim, CVPR 2019).

WSOL_PROTOCOL.md section 2: A = mean over channels; importance map sigmoid(A);
drop mask 1 where A < gamma * max(A) (max per sample), else 0. In training one
random draw per call, shared by the whole batch, picks the drop mask with
probability `drop_rate`, else the importance map; the output is the input times
the chosen map, broadcast over channels. At inference ADL is the identity.
"""

import keras
from keras import ops

from layers._checks import check_fraction, check_rank


def select_attention_map(
    attention: object,
    drop_rate: float,
    drop_threshold: float,
    seed_generator: keras.random.SeedGenerator,
) -> object:
    """The map ADL / p-ADL multiply their input with in training.

    Args:
      attention: the self-attention map A, shape `[B, ..., 1]` (batch first).
      drop_rate: probability of picking the drop mask for this call.
      drop_threshold: gamma; positions with A >= gamma * max(A) are dropped.
      seed_generator: the layer's generator; one scalar draw per call.

    Returns:
      The drop mask or the importance map, same shape and dtype as `attention`.
    """
    reduce_axes = tuple(range(1, len(attention.shape)))
    importance_map = ops.sigmoid(attention)
    max_value = ops.max(attention, axis=reduce_axes, keepdims=True)
    drop_mask = ops.cast(ops.less(attention, drop_threshold * max_value), attention.dtype)
    # One draw for the whole batch, as the reference's torch.rand([]): P(u < p) = p.
    draw = keras.random.uniform((), seed=seed_generator)
    use_drop_mask = ops.cast(ops.less(draw, drop_rate), attention.dtype)
    return use_drop_mask * drop_mask + (1.0 - use_drop_mask) * importance_map


@keras.saving.register_keras_serializable(package="wsolkeras")
class ADL(keras.layers.Layer):
    """Attention-based dropout on a channels-last feature map `[B, H, W, C]`.

    Args:
      drop_rate: probability in [0, 1] that a training call applies the drop
        mask instead of the importance map.
      drop_threshold: gamma in [0, 1]; the drop mask zeroes positions whose
        channel mean reaches gamma times the sample's maximum.
      seed: optional int seed of the layer's random generator.

    Call arguments:
      inputs: float tensor `[B, H, W, C]`.
      training: the maps are applied only when true; otherwise identity.
    """

    # The input's rank and layout; PatchADL, the same rule on tokens, overrides them.
    input_rank = 4
    input_layout = "[batch, height, width, channels]"

    def __init__(
        self,
        drop_rate: float = 0.75,
        drop_threshold: float = 0.8,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        name = type(self).__name__
        self.drop_rate = check_fraction(name, "drop_rate", drop_rate)
        self.drop_threshold = check_fraction(name, "drop_threshold", drop_threshold)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        check_rank(type(self).__name__, input_shape, self.input_rank, self.input_layout)
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
