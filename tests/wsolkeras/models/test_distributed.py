"""Every method trains under tf.distribute.MirroredStrategy over two logical CPU devices.

Logical devices must be set before TensorFlow initialises its devices, so the
training runs in a fresh Python process.
"""

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    from wsolkeras import models

    cases = json.loads(sys.argv[1])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(8, 32, 32, 3)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    results = {}
    for name, kwargs in cases.items():
        with strategy.scope():
            model = models.build(num_classes=3, image_size=32, **kwargs)
            model.compile(optimizer=keras.optimizers.SGD(0.01))
        before = [v.numpy().copy() for v in model.trainable_variables]
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history
        unchanged = [
            v.path for v, old in zip(model.trainable_variables, before)
            if np.array_equal(v.numpy(), old)
        ]
        results[name] = {
            "loss": float(history["loss"][-1]),
            "unchanged": unchanged,
            "replicas": strategy.num_replicas_in_sync,
        }
    print("RESULTS" + json.dumps(results))
    """
)


@pytest.mark.slow
def test_every_method_under_mirrored_strategy(tiny_preset):
    cases = {
        "cam": {"backbone": "small_cnn", "method": "cam"},
        "adl": {"backbone": "small_cnn", "method": "adl"},
        "rfga": {"backbone": "small_cnn", "method": "rfga"},
        "sharpen_focus": {
            "backbone": "small_cnn",
            "method": "cam",
            "attention_loss": "sharpen_focus",
        },
        "recurrent": {"backbone": "small_cnn", "method": "recurrent", "recurrent_units": 8},
        "vitol": {"backbone": "deit_tiny", "method": "vitol", "weights": tiny_preset("deit")[0]},
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cases)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULTS"))
    results = json.loads(line[len("RESULTS") :])
    assert set(results) == set(cases)
    for name, result in results.items():
        assert result["replicas"] == 2
        assert math.isfinite(result["loss"]), name
        assert not result["unchanged"], f"{name}: no gradient reached {result['unchanged']}"
