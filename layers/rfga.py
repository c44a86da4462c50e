"""RFGA: residual fine-grained attention (triple-view attention, expansion, calibration).

WSOL_PROTOCOL.md section 2 and the RFGA paper (Eqs. 1-8), written channels-last.
For an input X `[B, H, W, C]`:

- pooled views (Eqs. 1-3): c = mean over (H, W) `[B, C]`, h = mean over W
  `[B, H, C]`, w = mean over H `[B, W, C]`;
- triple-view attentions (Eqs. 4-6), each a bias-free 1-D convolution with zero
  ("same") padding, then batch norm and a sigmoid:
  z_c slides one kernel of size k along the CHANNEL axis of c (one input, one
  output channel, as ECA-Net); z_h slides a `[k, C, C]` kernel along H; z_w a
  `[k, C, C]` kernel along W;
- expansion (Eq. 7): M = sigmoid(z_h + z_w + z_c) broadcast to `[B, H, W, C]`,
  or the plain sum with `expand_activation=None` (the authors' later code);
- calibration (Eq. 8): X + X * M (residual, the paper's "w/ R") or X * M.

The paper does not say over which axes each batch norm normalises; here each
view has its own batch norm over its C channels (statistics over the batch,
and over H or W for the height and width views), with PyTorch's defaults
(momentum 0.1, i.e. Keras momentum 0.9; epsilon 1e-5) since the authors used
PyTorch.
"""

import keras
from keras import ops

from layers._checks import check_int, check_known, check_rank

_EXPAND_ACTIVATIONS = ("sigmoid", None)


@keras.saving.register_keras_serializable(package="wsolkeras")
class RFGA(keras.layers.Layer):
    """Residual fine-grained attention on a channels-last feature map `[B, H, W, C]`.

    Args:
      kernel_size: odd size k >= 1 of the three 1-D convolutions.
      residual: True gives X + X * M (the paper's default), False X * M.
      expand_activation: "sigmoid" applies Eq. 7's sigmoid to the expanded
        sum; None leaves the sum as is (the authors' later public code).
      momentum: moving-average momentum of the three batch norms (Keras sense).
      epsilon: variance epsilon of the three batch norms.

    Call arguments:
      inputs: float tensor `[B, H, W, C]`; H and W may be unknown until call time.
      training: batch norms use batch statistics (and update their moving
        statistics) when true, their moving statistics otherwise.
    """

    def __init__(
        self,
        kernel_size: int = 3,
        residual: bool = True,
        expand_activation: str | None = "sigmoid",
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_size = check_int("RFGA", "kernel_size", kernel_size, 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"RFGA: kernel_size must be odd so that 'same' padding is symmetric, "
                f"got {kernel_size!r}."
            )
        if not isinstance(residual, bool):
            raise ValueError(f"RFGA: residual must be True or False, got {residual!r}.")
        if expand_activation not in _EXPAND_ACTIVATIONS:
            raise ValueError(
                f"RFGA: expand_activation must be one of {_EXPAND_ACTIVATIONS}, "
                f"got {expand_activation!r}."
            )
        self.residual = residual
        self.expand_activation = expand_activation
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        bn = dict(axis=-1, momentum=self.momentum, epsilon=self.epsilon)
        self.height_norm = keras.layers.BatchNormalization(name="height_norm", **bn)
        self.width_norm = keras.layers.BatchNormalization(name="width_norm", **bn)
        self.channel_norm = keras.layers.BatchNormalization(name="channel_norm", **bn)

    def build(self, input_shape):
        check_rank("RFGA", input_shape, 4, "[batch, height, width, channels]")
        check_known("RFGA", input_shape, {-1: "channel"})
        channels = input_shape[-1]
        k = self.kernel_size
        self.height_kernel = self.add_weight(
            name="height_kernel", shape=(k, channels, channels), initializer="glorot_uniform"
        )
        self.width_kernel = self.add_weight(
            name="width_kernel", shape=(k, channels, channels), initializer="glorot_uniform"
        )
        self.channel_kernel = self.add_weight(
            name="channel_kernel", shape=(k, 1, 1), initializer="glorot_uniform"
        )
        self.height_norm.build((None, None, channels))
        self.width_norm.build((None, None, channels))
        self.channel_norm.build((None, channels))
        self.built = True

    def call(self, inputs, training=None):
        pooled_h = ops.mean(inputs, axis=2)  # Eq. 2: [B, H, C]
        pooled_w = ops.mean(inputs, axis=1)  # Eq. 3: [B, W, C]
        pooled_c = ops.mean(inputs, axis=(1, 2))  # Eq. 1: [B, C]

        z_h = ops.conv(pooled_h, self.height_kernel, padding="same", data_format="channels_last")
        z_h = ops.sigmoid(self.height_norm(z_h, training=training))  # Eq. 4
        z_w = ops.conv(pooled_w, self.width_kernel, padding="same", data_format="channels_last")
        z_w = ops.sigmoid(self.width_norm(z_w, training=training))  # Eq. 5
        # ECA-style: the C channels become the sequence of a one-channel signal.
        z_c = ops.conv(
            ops.expand_dims(pooled_c, -1),
            self.channel_kernel,
            padding="same",
            data_format="channels_last",
        )
        z_c = ops.sigmoid(self.channel_norm(ops.squeeze(z_c, -1), training=training))  # Eq. 6

        # Eq. 7: outer (broadcast) sum of the three views.
        attention = z_h[:, :, None, :] + z_w[:, None, :, :] + z_c[:, None, None, :]
        if self.expand_activation == "sigmoid":
            attention = ops.sigmoid(attention)
        calibrated = inputs * attention
        return inputs + calibrated if self.residual else calibrated  # Eq. 8

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_size=self.kernel_size,
            residual=self.residual,
            expand_activation=self.expand_activation,
            momentum=self.momentum,
            epsilon=self.epsilon,
        )
        return config
