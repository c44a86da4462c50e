"""The local-stream head of "Focus Longer to See Better" (recurrent attention).

Thesis section 3.1.3.2 (Eqs. 3.4-3.7), the default mode: the pooled feature
vector `[B, D]` is fed at every one of T steps into a stack of `num_layers`
LSTMs of `units` units; the top layer's hidden states phi_t are weighted by a
soft attention over the steps, alpha_t = softmax_t(w . phi_t) (Eq. 3.6), summed
(Eq. 3.5) and classified by a linear layer returning logits (Eq. 3.7 without
its softmax). Eq. 3.6 writes the score vector as W^t; WSOL_PROTOCOL.md reads it
as one vector w shared by the steps, and so does this layer.

Chapter 7, `spatial_attention=True`: the input is the feature map F
`[B, h, w, C]`, split along channels into keys K (the first c_k channels) and
values V (the other c_v = C - c_k); a learned spatial bias S `[h, w, c_s]` is
concatenated to both (the thesis' query has c_k + c_s dimensions and its answer
c_v + c_s, so "added" means concatenated). At step t:

- query q_t = MLP_q(phi_{t-1}): two hidden layers of `units` (ReLU), then a
  linear layer to c_k + c_s; phi_{t-1} is the top LSTM's hidden state of the
  previous step, and for the first step the LSTM's zero initial state (so the
  first map already depends on the keys through the query MLP's biases);
- map a_t = softmax over the h*w positions of [K, S] . q_t / sqrt(c_k + c_s)
  (the scaling of the thesis' Eq. 7.1);
- answer r_t = sum over positions of a_t * [V, S], and the LSTM input at step t
  is MLP_r(r_t): one hidden layer of `units` (ReLU), then a linear layer to
  `units` (the thesis' "two layer MLP ... the 512 dimension vector").

So the map a_t is made from the state after step t-1 and feeds step t. The
thesis gives no sizes for c_k and c_s: `key_channels` defaults to C // 2 and
`spatial_channels` to 32. The spatial bias needs h and w at build time.
"""

import math

import keras
from keras import ops

from layers._checks import check_int, check_known, check_rank

_LAYER = "RecurrentAttentionHead"


def _lstm_bias_initializer(units: int):
    """Zeros, except ones for the forget gate (Keras' unit_forget_bias)."""

    def initialize(shape, dtype=None):
        return ops.concatenate(
            [
                ops.zeros((units,), dtype=dtype),
                ops.ones((units,), dtype=dtype),
                ops.zeros((2 * units,), dtype=dtype),
            ]
        )

    return initialize


@keras.saving.register_keras_serializable(package="wsolkeras")
class RecurrentAttentionHead(keras.layers.Layer):
    """Stacked-LSTM head with soft attention over time steps, returning logits.

    Args:
      num_classes: number of logits.
      timesteps: T >= 1, the number of LSTM steps.
      units: LSTM width (also the width of the chapter-7 MLPs).
      num_layers: number of stacked LSTM layers.
      spatial_attention: False: input `[B, D]`, the same vector at every step.
        True: input `[B, h, w, C]` with chapter 7's spatial attention at each
        step (see the module docstring).
      key_channels: c_k, the channels of the input used as keys (spatial mode);
        None means C // 2. The remaining channels are the values.
      spatial_channels: c_s, the channels of the learned spatial bias.
      return_attention: if True the call returns `(logits, attention)` where
        attention is a dict: `"temporal"` `[B, T]` (the step weights alpha) and,
        in spatial mode, `"spatial"` `[B, T, h, w]` (each step's map).

    LSTM weights use Keras' gate order (input, forget, cell, output).
    """

    def __init__(
        self,
        num_classes: int,
        timesteps: int = 4,
        units: int = 512,
        num_layers: int = 2,
        spatial_attention: bool = False,
        key_channels: int | None = None,
        spatial_channels: int = 32,
        return_attention: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_int(_LAYER, "num_classes", num_classes, 1)
        self.timesteps = check_int(_LAYER, "timesteps", timesteps, 1)
        self.units = check_int(_LAYER, "units", units, 1)
        self.num_layers = check_int(_LAYER, "num_layers", num_layers, 1)
        for name, value in (
            ("spatial_attention", spatial_attention),
            ("return_attention", return_attention),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"{_LAYER}: {name} must be True or False, got {value!r}.")
        self.spatial_attention = spatial_attention
        self.return_attention = return_attention
        self.key_channels = (
            None if key_channels is None else check_int(_LAYER, "key_channels", key_channels, 1)
        )
        self.spatial_channels = check_int(_LAYER, "spatial_channels", spatial_channels, 1)

    # -- weights ---------------------------------------------------------------

    def _dense(self, name: str, fan_in: int, fan_out: int):
        kernel = self.add_weight(
            name=f"{name}_kernel", shape=(fan_in, fan_out), initializer="glorot_uniform"
        )
        bias = self.add_weight(name=f"{name}_bias", shape=(fan_out,), initializer="zeros")
        return kernel, bias

    def build(self, input_shape):
        if self.spatial_attention:
            check_rank(_LAYER, input_shape, 4, "[batch, height, width, channels] (spatial mode)")
            check_known(_LAYER, input_shape, {1: "height", 2: "width", 3: "channel"})
            height, width, channels = input_shape[1:]
            key_channels = channels // 2 if self.key_channels is None else self.key_channels
            if not 1 <= key_channels <= channels - 1:
                raise ValueError(
                    f"{_LAYER}: key_channels must leave at least one key and one value channel "
                    f"(1 <= key_channels <= {channels - 1} for {channels} input channels), "
                    f"got {key_channels}."
                )
            self._key_dims = key_channels
            self._map_size = (height, width)
            query_dims = key_channels + self.spatial_channels
            answer_dims = channels - key_channels + self.spatial_channels
            self.spatial_bias = self.add_weight(
                name="spatial_bias",
                shape=(height, width, self.spatial_channels),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            )
            self.query_mlp = [
                self._dense("query_1", self.units, self.units),
                self._dense("query_2", self.units, self.units),
                self._dense("query_out", self.units, query_dims),
            ]
            self.answer_mlp = [
                self._dense("answer_1", answer_dims, self.units),
                self._dense("answer_out", self.units, self.units),
            ]
            lstm_input_dims = self.units
        else:
            if input_shape is not None and len(input_shape) == 4:
                raise ValueError(
                    f"{_LAYER}: got a feature map of shape {tuple(input_shape)}; pool it to "
                    f"[batch, features] first, or set spatial_attention=True."
                )
            check_rank(_LAYER, input_shape, 2, "[batch, features]")
            check_known(_LAYER, input_shape, {1: "feature"})
            lstm_input_dims = input_shape[1]

        self.lstm = []
        for layer in range(self.num_layers):
            fan_in = lstm_input_dims if layer == 0 else self.units
            kernel = self.add_weight(
                name=f"lstm_{layer}_kernel",
                shape=(fan_in, 4 * self.units),
                initializer="glorot_uniform",
            )
            recurrent = self.add_weight(
                name=f"lstm_{layer}_recurrent_kernel",
                shape=(self.units, 4 * self.units),
                initializer="orthogonal",
            )
            bias = self.add_weight(
                name=f"lstm_{layer}_bias",
                shape=(4 * self.units,),
                initializer=_lstm_bias_initializer(self.units),
            )
            self.lstm.append((kernel, recurrent, bias))
        self.step_score = self.add_weight(
            name="step_score", shape=(self.units, 1), initializer="glorot_uniform"
        )
        self.classifier = self._dense("classifier", self.units, self.num_classes)
        self.built = True

    # -- computation -----------------------------------------------------------

    def _lstm_step(self, x, state, weights):
        kernel, recurrent, bias = weights
        hidden, cell = state
        gates = ops.matmul(x, kernel) + ops.matmul(hidden, recurrent) + bias
        i, f, g, o = ops.split(gates, 4, axis=-1)
        cell = ops.sigmoid(f) * cell + ops.sigmoid(i) * ops.tanh(g)
        hidden = ops.sigmoid(o) * ops.tanh(cell)
        return hidden, cell

    @staticmethod
    def _mlp(x, layers):
        for index, (kernel, bias) in enumerate(layers):
            x = ops.matmul(x, kernel) + bias
            if index < len(layers) - 1:
                x = ops.relu(x)
        return x

    def call(self, inputs):
        zeros = ops.zeros((ops.shape(inputs)[0], self.units), dtype=inputs.dtype)
        states = [(zeros, zeros)] * self.num_layers
        if self.spatial_attention:
            height, width = self._map_size
            bias = ops.zeros_like(inputs[..., :1]) + self.spatial_bias  # [B, h, w, c_s]
            keys = ops.concatenate([inputs[..., : self._key_dims], bias], axis=-1)
            values = ops.concatenate([inputs[..., self._key_dims :], bias], axis=-1)
            keys = ops.reshape(keys, (-1, height * width, keys.shape[-1]))
            values = ops.reshape(values, (-1, height * width, values.shape[-1]))
            scale = 1.0 / math.sqrt(keys.shape[-1])  # Eq. 7.1
        spatial_maps, top_hiddens = [], []
        for _ in range(self.timesteps):
            if self.spatial_attention:
                query = self._mlp(states[-1][0], self.query_mlp)
                scores = ops.einsum("bnd,bd->bn", keys, query) * scale
                attention = ops.softmax(scores, axis=-1)
                answer = ops.einsum("bn,bnd->bd", attention, values)
                x = self._mlp(answer, self.answer_mlp)
                spatial_maps.append(ops.reshape(attention, (-1, height, width)))
            else:
                x = inputs  # Eq. 3.4: the same vector at every step
            for layer in range(self.num_layers):
                states[layer] = self._lstm_step(x, states[layer], self.lstm[layer])
                x = states[layer][0]
            top_hiddens.append(x)
        top_hiddens = ops.stack(top_hiddens, axis=1)  # [B, T, units]
        step_scores = ops.squeeze(ops.matmul(top_hiddens, self.step_score), -1)
        if self.timesteps == 1:  # a softmax over one step is 1 (and Keras warns about it)
            step_weights = ops.ones_like(step_scores)
        else:
            step_weights = ops.softmax(step_scores, axis=-1)  # Eq. 3.6
        pooled = ops.sum(step_weights[..., None] * top_hiddens, axis=1)  # Eq. 3.5
        kernel, bias = self.classifier
        logits = ops.matmul(pooled, kernel) + bias  # Eq. 3.7, before the softmax
        if not self.return_attention:
            return logits
        attention = {"temporal": step_weights}
        if self.spatial_attention:
            attention["spatial"] = ops.stack(spatial_maps, axis=1)
        return logits, attention

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        logits = (batch, self.num_classes)
        if not self.return_attention:
            return logits
        attention = {"temporal": (batch, self.timesteps)}
        if self.spatial_attention:
            attention["spatial"] = (batch, self.timesteps, input_shape[1], input_shape[2])
        return logits, attention

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            timesteps=self.timesteps,
            units=self.units,
            num_layers=self.num_layers,
            spatial_attention=self.spatial_attention,
            key_channels=self.key_channels,
            spatial_channels=self.spatial_channels,
            return_attention=self.return_attention,
        )
        return config
