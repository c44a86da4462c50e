"""Training mechanics: devices and strategy, optimizer and schedule, checkpoints and resume.

Everything the train app does besides wiring lives here, importable and
testable without absl:

- :func:`configure_logical_cpus` and :func:`make_strategy`: ``auto``,
  ``one_device``, ``mirrored`` and ``multi_worker`` (``TF_CONFIG``).
- :class:`StepDecay` and :func:`make_optimizer`: SGD with momentum and a step
  decay (the RFGA recipe: x0.1 every 15 epochs), Adam, AdamW.
- :class:`ResumableBackup` (a ``keras.callbacks.BackupAndRestore`` that also
  saves every ``save_freq`` steps, atomically, never after a NaN) with
  :func:`resume_plan`, so that a run killed at any moment and started again
  with the same command continues at the step it had reached and ends with
  the same number of optimizer steps.
- :class:`EpochCheckpoint` (a ``.keras`` file per epoch, the last few kept)
  and :class:`EvaluateEvery`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable

import keras
import tensorflow as tf

from wsolkeras import atomic

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
OPTIMIZERS = ("sgd", "adam", "adamw")
NORMALIZATIONS = ("imagenet", "unit", "symmetric", "raw")
"""``wsolkeras.data`` normalisations (docs/INTERFACES.md)."""
EXTRACTORS = ("cam", "gradcam", "gradcam++", "layercam", "ach", "apx", "rollout", "gar")
"""``wsolkeras.extractors`` names (DESIGN.md contract)."""

LOGICAL_CPUS_ENV = "WSOLKERAS_LOGICAL_CPUS"
"""Environment variable read by :func:`configure_logical_cpus` when no count is given."""

log = logging.getLogger(__name__)


# --- devices and strategy ----------------------------------------------------


def configure_logical_cpus(count: int | None = None) -> int:
    """Splits the CPU into ``count`` logical devices (tests of ``mirrored`` without GPUs).

    Must run before TensorFlow initialises its devices (before the first op).
    ``count=None`` reads ``$WSOLKERAS_LOGICAL_CPUS``; 0 or 1 changes nothing.
    Returns the number of logical CPU devices asked for.
    """
    if count is None:
        count = int(os.environ.get(LOGICAL_CPUS_ENV, "0") or 0)
    if count <= 1:
        return count
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        if len(tf.config.list_logical_devices("CPU")) == count:
            return count  # already split the same way
        raise RuntimeError(
            f"cannot split the CPU into {count} logical devices: TensorFlow is already "
            "initialised; set them before anything runs a TensorFlow op"
        ) from error
    return count


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy named ``name`` (one of :data:`STRATEGIES`).

    - ``auto``: ``MirroredStrategy`` over all local GPUs when there are two or
      more, ``OneDeviceStrategy`` on the one GPU, else the default strategy.
    - ``one_device``: the first GPU, else the CPU.
    - ``mirrored``: all local GPUs, else all logical CPU devices.
    - ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}")
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy(devices=gpus)
        if gpus:
            return tf.distribute.OneDeviceStrategy(gpus[0])
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    if name == "mirrored":
        devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if not os.environ.get("TF_CONFIG"):
        raise ValueError(
            "--strategy=multi_worker needs the cluster in the TF_CONFIG environment variable "
            '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}); use --strategy=mirrored on one machine'
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and summaries (always, except non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and int(resolver.task_id) == 0


def uses_cpu_devices(strategy: tf.distribute.Strategy) -> bool:
    """True when the strategy's replicas are CPU devices (XLA cannot compile there)."""
    devices = getattr(strategy.extended, "worker_devices", ())
    return bool(devices) and all("CPU" in d.upper() for d in devices)


def check_strategy(strategy: tf.distribute.Strategy, batch_size: int, *, jit_compile: bool) -> None:
    """Raises ``ValueError`` for flags the strategy cannot run with."""
    replicas = strategy.num_replicas_in_sync
    if jit_compile and replicas > 1 and uses_cpu_devices(strategy):
        raise ValueError(
            "--jit_compile does not work with a strategy over CPU devices (an XLA "
            "limitation): drop --jit_compile, or use GPUs"
        )
    if batch_size % replicas:
        raise ValueError(
            f"--batch_size={batch_size} is not divisible by the {replicas} replicas: "
            f"use a multiple of {replicas}"
        )


def mixed_precision_policy() -> str:
    """``mixed_float16`` on GPUs, ``mixed_bfloat16`` elsewhere (float16 is slow on CPUs)."""
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


# --- optimizer and schedule --------------------------------------------------


@keras.saving.register_keras_serializable(package="wsolkeras")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``lr = initial_learning_rate * decay_factor ** floor(step / decay_steps)``.

    The papers' "x0.1 every 15 epochs" is ``decay_steps = 15 * steps_per_epoch``.
    ``decay_steps <= 0`` keeps the rate constant.
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_factor: float):
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = int(decay_steps)
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        lr = keras.ops.convert_to_tensor(self.initial_learning_rate, "float32")
        if self.decay_steps <= 0:
            return lr
        drops = keras.ops.floor(keras.ops.cast(step, "float32") / float(self.decay_steps))
        return lr * keras.ops.power(self.decay_factor, drops)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_factor": self.decay_factor,
        }


def make_optimizer(
    name: str,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> keras.optimizers.Optimizer:
    """``sgd`` (with ``momentum``), ``adam`` or ``adamw``.

    ``weight_decay`` is Keras' decoupled decay (``w -= lr * weight_decay * w``
    each step, as AdamW); 0 turns it off. Build the optimizer inside the
    strategy's scope.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    decay = float(weight_decay) or None
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, weight_decay=decay)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=decay)
    return keras.optimizers.AdamW(learning_rate, weight_decay=float(weight_decay))


def steps_per_epoch(num_examples: int, batch_size: int, requested: int = 0) -> int:
    """Optimizer steps in one epoch: ``requested`` when > 0, else full batches of the split."""
    if requested > 0:
        return requested
    steps = num_examples // batch_size
    if steps < 1:
        raise ValueError(
            f"the training split has {num_examples} images, fewer than one batch of "
            f"{batch_size}: lower --batch_size or set --steps_per_epoch"
        )
    return steps


# --- resume ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitCall:
    """One ``model.fit`` call of a resumed run."""

    initial_epoch: int
    epochs: int
    steps_per_epoch: int


def resume_plan(global_step: int, steps_per_epoch: int, epochs: int) -> list[FitCall]:
    """The ``fit`` calls that take a run from ``global_step`` to ``epochs * steps_per_epoch``.

    Keras resumes at an epoch boundary only; a run stopped in the middle of
    epoch ``e`` first finishes that epoch with a shorter ``fit`` call, so the
    total number of steps is the same as an uninterrupted run's.
    """
    epoch, done = divmod(int(global_step), steps_per_epoch)
    calls = []
    if epoch >= epochs:
        return calls
    if done:
        calls.append(FitCall(epoch, epoch + 1, steps_per_epoch - done))
        epoch += 1
    if epoch < epochs:
        calls.append(FitCall(epoch, epochs, steps_per_epoch))
    return calls


def _loss_is_finite(logs: dict | None) -> bool:
    loss = (logs or {}).get("loss")
    if loss is None:
        return True
    return math.isfinite(float(loss))


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that resumes mid-epoch, writes atomically and keeps the last good state.

    Differences from Keras' callback, each for a run killed at any moment:

    - the backup (model weights + optimizer state, ``optimizer.iterations``
      included) is written under a temporary name and renamed, so a kill
      during the write leaves the previous backup intact;
    - the position is the optimizer's step count, restored by :meth:`restore`
      before ``fit``; :func:`resume_plan` turns it into ``fit`` calls that
      finish the interrupted epoch (Keras alone would redo it from its start);
    - it saves at every epoch's end as well as every ``save_freq`` steps;
    - once a loss is NaN or infinite nothing more is saved (so the backup is
      the last good state) and :attr:`nan_step` records where it happened;
    - the backup is kept at the end: a finished run started again finds that
      nothing is left to train.
    """

    def __init__(self, backup_dir: str, save_freq: int | str = "epoch", *, chief: bool = True):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)
        self.chief = chief
        self.nan_step: int | None = None

    @property
    def weights_path(self) -> str:
        return self._weights_path

    def restore(self, model: keras.Model) -> int:
        """Loads the backup into ``model`` (built, compiled) if there is one; returns the step."""
        if not os.path.exists(self._weights_path):
            return 0
        optimizer = model.optimizer
        if optimizer is not None and not optimizer.built:
            strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
            with strategy.scope():
                optimizer.build(model.trainable_variables)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.load_weights(self._weights_path)
            # Keras only warns when a layer or the optimizer does not match;
            # a half-restored run would silently train something else.
            skipped = [
                str(w.message) for w in caught if "Skipping variable loading" in str(w.message)
            ]
            if skipped:
                raise ValueError(skipped[0].strip())
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"the backup {self._weights_path} does not fit this model ({error}); it was "
                "written by a run with other model flags: use another --model_dir, or delete "
                f"{self.backup_dir} to start this run over"
            ) from error
        step = int(optimizer.iterations.numpy()) if optimizer is not None else 0
        log.info("resumed from %s at step %d", self._weights_path, step)
        return step

    def on_train_begin(self, logs=None):
        # The app restores before fit (it needs the step to plan the fit calls).
        pass

    def on_train_batch_end(self, batch, logs=None):
        if self.nan_step is None and not _loss_is_finite(logs):
            self.nan_step = int(self.model.optimizer.iterations.numpy())
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_step is None and not _loss_is_finite(logs):
            self.nan_step = int(self.model.optimizer.iterations.numpy())
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":
            # Also at every epoch's end, so a finished epoch is never redone.
            self._batches_seen_since_last_saving = 0
            self._save_model()

    def _save_model(self):
        if self.nan_step is not None or not self.chief:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        with atomic.atomic_path(self._weights_path) as tmp:
            self.model.save_weights(tmp)
        atomic.write_json(
            self._training_metadata_path,
            {
                "epoch": self._current_epoch,
                "batch": self._last_batch_seen,
                "step": int(self.model.optimizer.iterations.numpy()),
            },
        )


_EPOCH_FILE = re.compile(r"epoch-(\d+)\.keras$")


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves ``<directory>/epoch-NNNN.keras`` after each epoch (atomically), keeping ``keep``.

    Nothing is saved once a loss has been NaN, so the newest file is the last
    good model.
    """

    def __init__(self, directory: str, keep: int = 3, *, chief: bool = True):
        super().__init__()
        self.directory = directory
        self.keep = keep
        self.chief = chief
        self._nan = False

    def on_train_batch_end(self, batch, logs=None):
        self._nan = self._nan or not _loss_is_finite(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._nan = self._nan or not _loss_is_finite(logs)
        if self._nan or not self.chief:
            return
        path = os.path.join(self.directory, f"epoch-{epoch + 1:04d}.keras")
        with atomic.atomic_path(path) as tmp:
            self.model.save(tmp)
        for old in list_epoch_checkpoints(self.directory)[: -self.keep or None]:
            os.remove(old)


def list_epoch_checkpoints(directory: str) -> list[str]:
    """The ``epoch-NNNN.keras`` files in ``directory``, oldest first."""
    found = [
        p for p in glob.glob(os.path.join(directory, "epoch-*.keras")) if _EPOCH_FILE.search(p)
    ]
    return sorted(found, key=lambda p: int(_EPOCH_FILE.search(p).group(1)))


class EvaluateEvery(keras.callbacks.Callback):
    """Calls ``fn(epoch, step)`` after every ``every``-th epoch (1-based epochs).

    ``skip_epoch`` (the last one) is left out: the app evaluates it anyway.
    """

    def __init__(self, every: int, fn: Callable[[int, int], None], skip_epoch: int | None = None):
        super().__init__()
        self.every = every
        self.fn = fn
        self.skip_epoch = skip_epoch

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if self.every > 0 and done % self.every == 0 and done != self.skip_epoch:
            if _loss_is_finite(logs):
                self.fn(done, int(self.model.optimizer.iterations.numpy()))


def read_backup_metadata(backup_dir: str) -> dict | None:
    """The metadata of the backup in ``backup_dir`` (epoch, batch, step), or None."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# --- config, data and model wiring for the train app --------------------------


def flag_config(flag_values, names) -> dict:
    """``{name: value}`` of the app's own flags (absl's are left out)."""
    return {name: flag_values[name].value for name in sorted(names)}


def check_config(config: dict) -> None:
    """Cross-flag checks; raises ``ValueError`` naming the flag and what to do."""
    positive = ("epochs", "batch_size", "eval_batch_size", "crop_size", "resize_size", "top_k")
    for name in positive:
        if name in config and config[name] < 1:
            raise ValueError(f"--{name} must be at least 1, got {config[name]}")
    for name in ("steps_per_epoch", "eval_every", "backup_every_steps", "lr_decay_epochs"):
        if name in config and config[name] < 0:
            raise ValueError(f"--{name} must be 0 or more, got {config[name]}")
    if config.get("resize_size", 0) < config.get("crop_size", 0):
        raise ValueError(
            f"--crop_size={config['crop_size']} is larger than --resize_size="
            f"{config['resize_size']}: the random crop is taken from the resized image"
        )
    if not config.get("lr", 1.0) > 0:
        raise ValueError(f"--lr must be positive, got {config['lr']}")
    if not 0 < config.get("cam_curve_interval", 0.01) < 1:
        raise ValueError("--cam_curve_interval must be in (0, 1), e.g. 0.01 (100 thresholds)")
    if config.get("keep_checkpoints", 1) < 1:
        raise ValueError("--keep_checkpoints must be at least 1")
    if not 0 <= config.get("default_tau", 0.5) < 1:
        raise ValueError(
            f"--default_tau must be in [0, 1) (a score-map threshold), got {config['default_tau']}"
        )


def fit_verbosity(flag: str) -> int:
    """Keras ``fit`` verbosity; ``auto``: a progress bar on a terminal, else a line per epoch."""
    if flag == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(flag)


def log_to_file(path: str) -> None:
    """Also send this process' log records to ``path`` (appending: a resumed run continues it)."""
    root = logging.getLogger()
    if any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in root.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))


def ensure_dataset(data_dir: str, *, synthetic: bool, synthetic_options: dict) -> dict:
    """The manifest of the dataset in ``data_dir``; generates the synthetic set there if allowed.

    Raises ``FileNotFoundError`` with what to do when there is no dataset.
    """
    from tfrecords import writer

    manifest_path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(manifest_path):
        if not synthetic:
            raise FileNotFoundError(
                f"--data_dir={data_dir} holds no dataset (no manifest.json): convert one first, "
                f"e.g. python -m apps.convert --dataset=cub --data_dir=CUB_200_2011 "
                f"--output_dir={data_dir}"
            )
        from tfrecords.converters import synthetic as synthetic_converter

        log.info(
            "no dataset in %s: generating the synthetic set there (%s); pass --nosynthetic "
            "to make a missing dataset an error",
            data_dir,
            synthetic_options,
        )
        source = synthetic_converter.make_source(data_dir, **synthetic_options)
        writer.write_dataset(source, data_dir, progress=False)
    return writer.read_manifest(data_dir)


def split_size(manifest: dict, split: str, flag: str) -> int:
    """The number of records of ``split``; a ``ValueError`` naming ``flag`` if there is none."""
    splits = manifest["splits"]
    if split not in splits or not splits[split]["num_records"]:
        raise ValueError(
            f"{flag}={split}: the dataset has no such split (or it is empty); "
            f"it has {', '.join(s for s in splits if splits[s]['num_records'])}"
        )
    return int(splits[split]["num_records"])


def resolve_tau_split(manifest: dict, tau_split: str, test_split: str) -> str:
    """The split to choose tau on: ``tau_split``, else ``test_split`` if val is missing."""
    splits = manifest["splits"]
    if tau_split in splits and splits[tau_split]["num_records"]:
        return tau_split
    if tau_split == "val" and test_split in splits:
        log.warning(
            "the dataset has no %r split: tau is chosen on the %r split, and the figures at that "
            "tau are then optimistic (chosen on the data they are reported on)",
            tau_split,
            test_split,
        )
        return test_split
    raise ValueError(
        f"--tau_split={tau_split}: the dataset has no such split (or it is empty); it has "
        f"{', '.join(s for s in splits if splits[s]['num_records'])}"
    )


def splits_without_boxes(manifest: dict, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that the dataset has but where no image has a box (manifest counts)."""
    splits = manifest["splits"]
    return [
        name
        for name in dict.fromkeys(names)
        if name in splits and splits[name]["num_records"] and int(splits[name]["max_boxes"]) == 0
    ]


def train_dataset(
    data_dir: str,
    split: str,
    *,
    batch_size: int,
    resize_size: int,
    crop_size: int,
    normalization: str,
    seed: int,
) -> tf.data.Dataset:
    """``(images, labels)`` batches for ``fit``, repeated without end (epochs are step counts)."""
    from wsolkeras import data

    dataset = data.make_dataset(
        data_dir,
        split,
        training=True,
        batch_size=batch_size,
        resize_size=resize_size,
        crop_size=crop_size,
        normalization=normalization,
        seed=seed,
        repeat=True,
    )
    return dataset.map(lambda b: (b["image"], b["label"]), num_parallel_calls=tf.data.AUTOTUNE)


def eval_dataset(
    data_dir: str, split: str, *, batch_size: int, crop_size: int, normalization: str
) -> tf.data.Dataset:
    """A split's batches for :func:`wsolkeras.evaluation.evaluate`, in a fixed order."""
    from wsolkeras import data

    return data.make_dataset(
        data_dir,
        split,
        training=False,
        batch_size=batch_size,
        crop_size=crop_size,
        normalization=normalization,
    )


def model_kwargs(config: dict) -> dict:
    """``wsolkeras.models.build`` arguments from the app's config."""
    expand = config["rfga_expand_activation"]
    return {
        "backbone": config["backbone"],
        "method": config["method"],
        "num_classes": config["num_classes"],
        "image_size": config["crop_size"],
        "weights": config["weights"],
        "large_feature_map": config["large_feature_map"],
        "adl_drop_rate": config["adl_drop_rate"],
        "adl_drop_threshold": config["adl_drop_threshold"],
        "rfga_kernel_size": config["rfga_kernel_size"],
        "rfga_residual": config["rfga_residual"],
        "rfga_expand_activation": None if expand == "none" else expand,
        "attention_loss": config["attention_loss"],
        "recurrent_timesteps": config["recurrent_timesteps"],
        "recurrent_units": config["recurrent_units"],
        "seed": config["seed"],
    }


def make_extractor(name: str, model: keras.Model) -> Callable:
    """``wsolkeras.extractors.get(name, model)``."""
    from wsolkeras import extractors

    return extractors.get(name, model)


def write_config(model_dir: str, config: dict) -> None:
    """``<model_dir>/config.json``: the flags and the resolved config, atomically."""
    atomic.write_json(os.path.join(model_dir, "config.json"), config)


def init_weights(model: keras.Model, source: str) -> None:
    """Starts ``model`` from the weights of another run (``--init_from``).

    ``source``: a run's ``--model_dir`` (its ``model.keras``), a ``.keras``
    file or a ``.weights.h5`` file. The models must have the same weights in
    the same order; layers without weights (ADL, p-ADL) may differ, which is
    what the ViTOL recipe needs (a DeiT baseline, then p-ADL added).
    """
    path = os.path.join(source, "model.keras") if os.path.isdir(source) else source
    if not os.path.exists(path):
        raise FileNotFoundError(f"--init_from={source}: {path} does not exist")
    if path.endswith(".weights.h5"):
        model.load_weights(path)
        return
    other = keras.models.load_model(path, compile=False)
    theirs, ours = other.get_weights(), model.get_weights()
    shapes = [w.shape for w in theirs], [w.shape for w in ours]
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"--init_from={source}: its model has {len(theirs)} weight arrays, this one "
            f"{len(ours)} (or their shapes differ): start from a run of the same backbone "
            "and number of classes"
        )
    model.set_weights(theirs)
    log.info("initialised the model from %s", path)
