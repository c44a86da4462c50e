"""The mechanics every extractor shares: finding layers, tapping them, checking input.

A *probe* is the model re-wired (same layers, same weights) to return, from
one forward pass, the outputs of some named layers together with the class
scores Y. Layers inside nested functional models (a keras-hub backbone inside
a classifier) are tapped too: the nested model is re-wired the same way.
Because the tapped tensors and Y come from one graph, one ``GradientTape``
gives dY/dF for the whole batch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.models.functional import Functional  # not exported; clone_model needs it too

LOGITS_KEY = "__wsol_logits__"


def _is_softmax(activation: Any) -> bool:
    return activation is keras.activations.softmax or getattr(activation, "__name__", "") in (
        "softmax",
        "log_softmax",
    )


def iter_layers(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """Yields ``(path, layer)`` depth-first, outer layers before nested ones' layers."""
    for layer in model.layers:
        yield prefix + layer.name, layer
    for layer in model.layers:
        if isinstance(layer, (Functional, keras.Sequential)):
            yield from iter_layers(layer, prefix + layer.name + "/")


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer | None:
    """The first layer named ``name`` (outer model first), or ``None``."""
    for path, layer in iter_layers(model):
        if layer.name == name or path == name:
            return layer
    return None


def _output_shape(layer: keras.layers.Layer) -> tuple | None:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):  # never called, or called several times
        return None


def four_d_layers(model: keras.Model) -> list[str]:
    """Paths of the layers whose output is one 4-D tensor (feature-map candidates)."""
    names = []
    for path, layer in iter_layers(model):
        shape = _output_shape(layer)
        if shape is not None and len(shape) == 4 and not isinstance(layer, keras.layers.InputLayer):
            names.append(path)
    return names


def describe_candidates(names: Sequence[str], limit: int = 25) -> str:
    if not names:
        return "(none)"
    if len(names) <= limit:
        return ", ".join(names)
    return f"... ({len(names) - limit} more before), " + ", ".join(names[-limit:])


def _contains(model: keras.layers.Layer, names: set[str]) -> bool:
    if not isinstance(model, (Functional, keras.Sequential)):
        return False
    return any(layer.name in names for _, layer in iter_layers(model))


def _pre_softmax(layer: keras.layers.Layer, args: tuple, kwargs: dict) -> tuple[Any, Any] | None:
    """(logits, output) for a final softmax layer, or None when it has no softmax."""
    if isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation) and _is_softmax(layer.activation)
    ):
        return args[0], layer(*args, **kwargs)
    if isinstance(layer, keras.layers.Dense) and _is_softmax(layer.activation):
        logits = keras.ops.matmul(args[0], layer.kernel)
        if layer.use_bias:
            logits = logits + layer.bias
        return logits, layer(*args, **kwargs)
    return None


def _tap(model: Functional, names: set[str], find_logits: bool) -> keras.Model:
    """``model`` re-wired to return ``(dict name -> tapped output, model output)``."""
    captured: dict[str, Any] = {}
    output_op = model.outputs[0]._keras_history.operation if find_logits else None

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        if layer.name in names and layer.name not in captured:
            out = layer(*args, **kwargs)
            captured[layer.name] = out
        elif _contains(layer, names - captured.keys()):
            out = _tapped_call(layer, names - captured.keys(), args, kwargs, captured)
        elif layer is output_op and (split := _pre_softmax(layer, args, kwargs)) is not None:
            captured[LOGITS_KEY], out = split
        else:
            out = layer(*args, **kwargs)
        return out

    rewired = keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call
    )
    return keras.Model(rewired.input, [dict(captured), rewired.outputs[0]])


def _tapped_call(
    layer: keras.layers.Layer, names: set[str], args: tuple, kwargs: dict, captured: dict
) -> Any:
    if isinstance(layer, keras.Sequential):
        x = args[0]
        for sub in layer.layers:
            if sub.name in names and sub.name not in captured:
                x = sub(x)
                captured[sub.name] = x
            elif _contains(sub, names - captured.keys()):
                x = _tapped_call(sub, names - captured.keys(), (x,), {}, captured)
            else:
                x = sub(x)
        return x
    inner = _tap(layer, names, find_logits=False)
    taps, out = inner(*args, **kwargs)
    captured.update(taps)
    return out


class Probe:
    """One forward pass giving named layers' outputs and the class scores Y.

    Y is the model's (single) output, except that a final softmax (a
    ``Softmax`` layer, a softmax ``Activation``, or the softmax activation of
    the last ``Dense``) is left out: Y is the pre-softmax logit.
    """

    def __init__(self, model: keras.Model, layer_names: Sequence[str]) -> None:
        if not isinstance(model, Functional):
            raise TypeError(
                "Extractors need a functional keras.Model (built from keras.Input), got "
                f"{type(model).__name__}. Wrap a subclassed model in a functional one."
            )
        if len(model.outputs) != 1:
            raise ValueError(
                f"Extractors need a model with one output (the class scores); {model.name!r} "
                f"has {len(model.outputs)}."
            )
        self.model = model
        self.layer_names = list(layer_names)
        self._rewired = _tap(model, set(self.layer_names), find_logits=True)
        missing = [name for name in self.layer_names if name not in self._rewired.output[0]]
        if missing:
            raise ValueError(
                f"Layer(s) {missing} of {model.name!r} are not on the path from its input to "
                "its class scores, so no map can be taken from them."
            )

    def __call__(self, images: tf.Tensor, training: bool = False) -> tuple[list[Any], tf.Tensor]:
        taps, output = self._rewired(images, training=training)
        logits = taps.get(LOGITS_KEY, output)
        return [taps[name] for name in self.layer_names], logits


def watch_input(tape: tf.GradientTape, images: tf.Tensor) -> None:
    """Watches float images, so that every op is recorded even when the layers
    before the tapped one are frozen (graph mode prunes what is not needed)."""
    if images.dtype.is_floating:
        tape.watch(images)


def target_classes(classes: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """``classes`` with each negative entry replaced by that image's predicted class."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.where(classes >= 0, classes, predicted)


def class_scores(logits: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """``logits[i, classes[i]]`` for each image i: ``[B]``."""
    return tf.gather(logits, classes, axis=1, batch_dims=1)


class Extractor:
    """Base of all extractors: input checks, one traced function per extractor.

    Subclasses set ``name`` and implement :meth:`compute_maps`, which runs the
    forward (and backward) pass for the whole batch and returns ``[B, h, w]``.

    With ``differentiable=False`` (default) the maps come from a
    ``tf.function`` with a fixed input signature (``[None, H, W, C]`` images,
    ``[None]`` int32 classes), so batches of any size reuse one trace, in
    inference mode, as float32. With ``differentiable=True`` the maps are
    computed eagerly (or inside the caller's ``tf.function``) in the model's
    compute dtype, so an outer ``GradientTape`` can differentiate them,
    second-order terms included; ``training`` may then be set.
    """

    name = ""

    def __init__(self, model: keras.Model, *, differentiable: bool = False) -> None:
        if not isinstance(model, keras.Model):
            raise TypeError(f"Expected a keras.Model, got {type(model).__name__}.")
        self.model = model
        self.differentiable = differentiable
        input_shape = tuple(model.inputs[0].shape)
        if len(input_shape) != 4:
            raise ValueError(
                f"Extractors need an image model with inputs [B, H, W, C]; {model.name!r} "
                f"takes {input_shape}."
            )
        self.input_shape = input_shape
        self.input_dtype = model.inputs[0].dtype
        self.num_classes = int(model.outputs[0].shape[-1])
        self.trace_count = 0
        if differentiable:
            self._run = self._compute
        else:
            # A partial (no __code__) makes TF count traces per extractor, not per
            # class, so several extractors do not raise its "retracing" warning.
            self._run = tf.function(
                functools.partial(Extractor._traced, self),
                input_signature=[
                    tf.TensorSpec((None, *input_shape[1:]), self.input_dtype, name="images"),
                    tf.TensorSpec((None,), tf.int32, name="classes"),
                ],
                reduce_retracing=True,
                autograph=False,  # no tensor-dependent Python control flow here
            )

    def compute_maps(self, images: tf.Tensor, classes: tf.Tensor, training: bool) -> tf.Tensor:
        """Maps ``[B, h, w]`` for ``classes`` (``-1``: the predicted class)."""
        raise NotImplementedError

    def _traced(self, images: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
        self.trace_count += 1  # runs once per trace, not per call
        return tf.cast(self.compute_maps(images, classes, training=False), tf.float32)

    def _compute(self, images: tf.Tensor, classes: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.compute_maps(images, classes, training=training)

    def check_images(self, images: Any) -> tf.Tensor:
        """The images in the model's input dtype, or a ValueError saying what is wrong."""
        images = tf.convert_to_tensor(images)
        expected = ["B", *(str(d) if d is not None else "?" for d in self.input_shape[1:])]
        expected_text = f"[{', '.join(expected)}] (batch, height, width, channels)"
        shape = tuple(images.shape)
        if len(shape) != 4:
            hint = " (a single image: add a batch axis)" if len(shape) == 3 else ""
            raise ValueError(
                f"images must be a batch of rank 4, {expected_text}; got shape {shape}{hint}."
            )
        for axis, what in ((3, "channels"), (1, "height"), (2, "width")):
            want = self.input_shape[axis]
            if want is not None and shape[axis] is not None and shape[axis] != want:
                raise ValueError(
                    f"images have {shape[axis]} {what} but {self.model.name!r} expects "
                    f"{want}: shape {shape}, expected {expected_text}."
                )
        return tf.cast(images, self.input_dtype)

    def check_classes(self, classes: Any, images: tf.Tensor) -> tf.Tensor:
        """One class id per image as int32 ``[B]``; ``None`` gives ``-1`` (predicted)."""
        batch = images.shape[0]
        if classes is None:
            return tf.fill([batch if batch is not None else tf.shape(images)[0]], -1)
        if isinstance(classes, tf.Tensor) and not tf.executing_eagerly():
            return tf.reshape(tf.cast(classes, tf.int32), [-1])
        values = np.asarray(classes)
        if values.ndim != 1 or (batch is not None and values.shape[0] != batch):
            raise ValueError(
                f"classes must hold one class id per image, shape [{batch}]; got shape "
                f"{values.shape}."
            )
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"classes must be integer class ids, got dtype {values.dtype}.")
        bad = values[(values < 0) | (values >= self.num_classes)]
        if bad.size:
            raise ValueError(
                f"class ids must be in [0, {self.num_classes}) for {self.model.name!r}; got "
                f"{bad.tolist()}."
            )
        return tf.constant(values, tf.int32)

    def __call__(self, images: Any, classes: Any = None, *, training: bool = False) -> tf.Tensor:
        """Raw maps ``[B, h, w]`` for ``classes`` (``None``: each image's predicted class)."""
        images = self.check_images(images)
        classes = self.check_classes(classes, images)
        if self.differentiable:
            return self._run(images, classes, training=training)
        if training:
            raise ValueError(
                "training=True needs differentiable=True; evaluation maps run in inference mode."
            )
        return self._run(images, classes)
