"""Grad-CAM cost against one forward + backward pass of the same batch.

    python benchmarks/bench_extractors.py [--batch 32] [--size 224] [--repeats 3]

Model: keras-hub ResNet50 (the resnet_50 config, random weights) with the
protocol's stride-1 last stage (``--last_stride 2`` for the stock one), GAP
and a 200-class Dense head, as one flat functional model. Three steps are
timed side by side, interleaved, each after one warm-up call (tracing),
median over the repeats:

- ``forward``: logits for the batch (inference mode);
- ``forward+backward``: the gradient of sum_i Y[i, c_i] w.r.t. every
  trainable weight (a training step's passes, inference-mode BatchNorm, no
  optimizer update);
- ``gradcam``: ``wsolkeras.extractors.get("gradcam", model)(images, classes)``.

The target is ``gradcam <= 1.3 x forward+backward``. tf-keras-vis's
``Gradcam`` is timed on the same model and batch when it can be imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from wsolkeras import extractors  # noqa: E402


def build_resnet50(size: int, last_stride: int, num_classes: int) -> keras.Model:
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, last_stride],
        block_type="bottleneck_block",
        use_pre_activation=False,
        image_shape=(size, size, 3),
    )
    # One flat graph (backbone layers + head), so that a library that taps a
    # layer by name (tf-keras-vis) can reach the last stage's output layer.
    pooled = keras.layers.GlobalAveragePooling2D(name="pooler")(backbone.output)
    logits = keras.layers.Dense(num_classes, name="predictions")(pooled)
    return keras.Model(backbone.input, logits, name="resnet50_cam")


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        # Pull the result to the host so that asynchronous work is counted.
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
        times.append(time.perf_counter() - start)
    return times


def tf_keras_vis_step(model: keras.Model, images: np.ndarray, classes: np.ndarray):
    """A callable running tf-keras-vis's Gradcam, or the reason it cannot run."""
    try:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.scores import CategoricalScore
    except Exception as error:  # noqa: BLE001 - any import failure is reported
        return f"not measured: tf-keras-vis cannot be imported here ({error!r})"
    try:
        gradcam = Gradcam(model, clone=True)
        score = CategoricalScore(classes.tolist())
        layer = model.layers[-3].name  # the last stage's output (before the pooler)
        # Raw maps at the feature resolution, as ours: no upsampling, no normalising.
        fn = lambda: tf.constant(
            gradcam(
                score,
                images,
                penultimate_layer=layer,
                seek_penultimate_conv_layer=False,
                expand_cam=False,
                normalize_cam=False,
            )
        )
        fn()
        return fn
    except Exception as error:  # noqa: BLE001
        return f"not measured: tf-keras-vis failed on this model ({error!r})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--last_stride", type=int, default=1, choices=(1, 2))
    parser.add_argument("--num_classes", type=int, default=200)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = build_resnet50(args.size, args.last_stride, args.num_classes)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch, args.size, args.size, 3)).astype("float32")
    classes = rng.integers(0, args.num_classes, size=args.batch).astype("int32")
    x, c = tf.constant(images), tf.constant(classes)
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def forward(x):
        return model(x, training=False)

    @tf.function(reduce_retracing=True)
    def forward_backward(x, c):
        with tf.GradientTape() as tape:
            logits = model(x, training=False)
            target = tf.reduce_sum(tf.gather(logits, c, axis=1, batch_dims=1))
        return tape.gradient(target, variables)

    gradcam = extractors.get("gradcam", model)
    steps = {
        "forward": lambda: forward(x),
        "forward+backward": lambda: forward_backward(x, c),
        "gradcam": lambda: gradcam(x, c),
    }
    other = tf_keras_vis_step(model, images, classes)
    if callable(other):
        steps["tf-keras-vis Gradcam"] = other

    for fn in steps.values():  # warm-up: traces
        fn()
    results: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleaved, so load changes hit all alike
        for name, fn in steps.items():
            results[name] += timed(fn, 1)

    feature_size = tuple(model.get_layer(gradcam.layer).output.shape[1:3])
    print(
        f"ResNet50 (keras-hub config, random weights, last stride {args.last_stride}), "
        f"batch {args.batch} x {args.size}px, feature map {feature_size}, "
        f"{os.cpu_count()} CPU cores, TF {tf.__version__}, Keras {keras.__version__}"
    )
    medians = {name: statistics.median(times) for name, times in results.items()}
    for name, times in results.items():
        print(f"  {name:22s} median {medians[name]:7.3f} s   runs {[round(t, 3) for t in times]}")
    ratio = medians["gradcam"] / medians["forward+backward"]
    verdict = "OK" if ratio <= 1.3 else "OVER the 1.3x target"
    print(f"  gradcam / forward+backward = {ratio:.2f}  ({verdict})")
    if callable(other):
        ours, theirs = gradcam(x, c).numpy(), other().numpy()
        difference = np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12)
        print(
            f"  gradcam / tf-keras-vis Gradcam = "
            f"{medians['gradcam'] / medians['tf-keras-vis Gradcam']:.2f}; "
            f"max difference of the maps {difference:.1e} of the max"
        )
    else:
        print(f"  tf-keras-vis: {other}")


if __name__ == "__main__":
    main()
