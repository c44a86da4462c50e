r"""Train a weakly supervised object localization model, evaluate it, export it.

    python -m apps.train                        # the embedded default (default.flags)
    python -m apps.train --flagfile=cub.flags   # RFGA's CUB recipe

With no flags it generates the synthetic set into data/synthetic (first run
only), trains a small CNN for a few minutes on the CPU, evaluates it and
exports it into runs/default. A run killed at any moment and started again
with the same command resumes where it was.

Writes into --model_dir:
  config.json            the flags and the resolved config (what evaluate/export need)
  checkpoints/           epoch-NNNN.keras (the last --keep_checkpoints epochs)
  backup/                the resume state (every --backup_every_steps steps)
  model.keras            the trained model
  tensorboard/           train/ (loss, lr), eval_<split>/ (localization scalars,
                         BoxAcc-vs-tau curves, maps with boxes)
  metrics.json           the final evaluation: tau chosen on --tau_split, the
                         test split at that tau, the centre baseline
  export/<model_name>/<version>/   the SavedModel for TF Serving

Your own photos (apps.convert --dataset=folder) may have boxes for only a few
images, or none: training needs no box; localization metrics are computed
over the images that have boxes (top-1 over all); a --tau_split or
--test_split with no box at all is reported as classification only (a
warning, and "classification_only_splits" in metrics.json), and with no box
on --tau_split tau is --default_tau (metrics.json: "tau_source": "default"),
which the export then uses.
"""

import os
import time

from absl import app, flags, logging

# Splitting the CPU into logical devices must happen before TensorFlow starts;
# the flag is parsed in main(), which runs before any TensorFlow op.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from wsolkeras import atomic, evaluation, export, models, summaries, training  # noqa: E402

# --- flags -------------------------------------------------------------------

_ABSL_FLAGS = set(flags.FLAGS)

# Data.
flags.DEFINE_string("data_dir", "data/synthetic", "TFRecord dataset (apps.convert's output).")
flags.DEFINE_bool(
    "synthetic",
    True,
    "When --data_dir holds no dataset yet, generate the built-in synthetic set there "
    "(--nosynthetic for a converted dataset: a missing one is then an error).",
)
flags.DEFINE_integer("synthetic_num_classes", 10, "Synthetic set: number of classes.")
flags.DEFINE_integer("synthetic_image_size", 96, "Synthetic set: image size in pixels.")
flags.DEFINE_integer("synthetic_train_size", 2000, "Synthetic set: training images.")
flags.DEFINE_integer("synthetic_val_size", 200, "Synthetic set: validation images.")
flags.DEFINE_integer("synthetic_test_size", 300, "Synthetic set: test images.")
flags.DEFINE_string("train_split", "train", "Split to train on.")
flags.DEFINE_string(
    "tau_split", "val", "Split on which the threshold tau is chosen (falls back to test if absent)."
)
flags.DEFINE_string("test_split", "test", "Split reported at the chosen tau.")

# Input pipeline.
flags.DEFINE_integer("resize_size", 80, "Training images are resized to this, then cropped.")
flags.DEFINE_integer("crop_size", 64, "Random crop at training; the evaluation/input size.")
flags.DEFINE_integer("batch_size", 32, "Global batch size (divided over the replicas).")
flags.DEFINE_integer("eval_batch_size", 64, "Batch size for evaluation.")
flags.DEFINE_enum(
    "normalization",
    "auto",
    ["auto", *training.NORMALIZATIONS],
    "Pixel normalisation; auto: the backbone's.",
)

# Model.
flags.DEFINE_string("backbone", "small_cnn", "A backbone name, a keras-hub preset or a preset dir.")
flags.DEFINE_enum("method", "rfga", models.METHODS, "The WSOL method.")
flags.DEFINE_string(
    "weights", "none", "none | imagenet | a keras-hub preset name | a local preset directory."
)
flags.DEFINE_bool("large_feature_map", False, "resnet50: layer3 at stride 1 too.")
flags.DEFINE_float("adl_drop_rate", 0.75, "ADL / p-ADL: probability of the drop mask.")
flags.DEFINE_float("adl_drop_threshold", 0.9, "ADL / p-ADL: gamma.")
flags.DEFINE_integer("rfga_kernel_size", 3, "RFGA: 1-D conv kernel size.")
flags.DEFINE_bool("rfga_residual", True, "RFGA: residual calibration X + X * M.")
flags.DEFINE_enum(
    "rfga_expand_activation", "sigmoid", ["sigmoid", "none"], "RFGA: activation of the sum."
)
flags.DEFINE_enum(
    "attention_loss", "none", ["none", "sharpen_focus"], "Extra attention losses (CNN methods)."
)
flags.DEFINE_integer("recurrent_timesteps", 4, "recurrent: LSTM time steps.")
flags.DEFINE_integer("recurrent_units", 512, "recurrent: LSTM units.")
flags.DEFINE_integer("seed", 0, "Random seed (model initialisation, data order).")
flags.DEFINE_string(
    "init_from", "", "Start from this run's model (a --model_dir, .keras or .weights.h5 file)."
)

# Training.
flags.DEFINE_integer("epochs", 30, "Training epochs.")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch; 0: one pass over the training split.")
flags.DEFINE_enum("optimizer", "sgd", training.OPTIMIZERS, "Optimizer.")
flags.DEFINE_float("lr", 0.05, "Initial learning rate.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay (0: off).")
flags.DEFINE_integer("lr_decay_epochs", 20, "Multiply the lr by --lr_decay_factor every N epochs.")
flags.DEFINE_float("lr_decay_factor", 0.1, "Step-decay factor.")
flags.DEFINE_enum("strategy", "auto", training.STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_bool("mixed_precision", False, "mixed_float16 on GPUs, mixed_bfloat16 elsewhere.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step (not with CPU replicas).")
flags.DEFINE_integer(
    "logical_cpus", 0, "Testing: split the CPU into N logical devices (for --strategy=mirrored)."
)
flags.DEFINE_integer(
    "backup_every_steps", 50, "Save the resume state every N steps (and every epoch)."
)
flags.DEFINE_integer("keep_checkpoints", 3, "Epoch checkpoints to keep.")
flags.DEFINE_enum(
    "verbose",
    "auto",
    ["auto", "0", "1", "2"],
    "Keras fit verbosity: 1 a progress bar, 2 a line per epoch; auto: 1 on a terminal, else 2.",
)

# Evaluation and export.
flags.DEFINE_integer(
    "eval_every", 10, "Evaluate on --tau_split every N epochs (0: at the end only)."
)
flags.DEFINE_enum(
    "extractor", "auto", ["auto", *training.EXTRACTORS], "Map extractor; auto: the method's."
)
flags.DEFINE_float("cam_curve_interval", 0.01, "Threshold step for the box metrics.")
flags.DEFINE_float(
    "default_tau",
    0.5,
    "Threshold tau in [0, 1) used when no image of --tau_split has a box, so tau cannot be "
    "chosen on data (metrics.json then says tau_source: default); the export uses it.",
)
flags.DEFINE_integer("num_summary_images", 6, "Validation images shown with maps in TensorBoard.")
flags.DEFINE_bool("export", True, "Export a SavedModel at the end.")
flags.DEFINE_string("model_name", "wsol", "Served model name: export/<model_name>/<version>/.")
flags.DEFINE_integer("top_k", 5, "Classes the exported model returns.")
flags.DEFINE_string("model_dir", "runs/default", "Where everything of this run is written.")
flags.DEFINE_bool("dry_run", False, "Build the pipeline and the model, run one step, stop.")

FLAGS = flags.FLAGS
APP_FLAGS = sorted(set(FLAGS) - _ABSL_FLAGS)


def _backbone_is_valid(name: str) -> bool:
    try:
        models.check_backbone(name)
    except ValueError:
        return False
    return True


flags.register_validator(
    "backbone",
    _backbone_is_valid,
    message=(
        f"unknown backbone; valid backbones: {', '.join(models.BACKBONES)}, "
        "or a keras-hub preset name, or a local preset directory"
    ),
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    # --- set up: devices, strategy, logging, model_dir ---------------------
    training.configure_logical_cpus(FLAGS.logical_cpus or None)
    config = training.flag_config(FLAGS, APP_FLAGS)
    try:
        training.check_config(config)
    except ValueError as error:
        raise SystemExit(f"apps.train: error: {error}") from None
    model_dir = FLAGS.model_dir
    os.makedirs(model_dir, exist_ok=True)
    training.log_to_file(os.path.join(model_dir, "train.log"))
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy(training.mixed_precision_policy())
    keras.utils.set_random_seed(FLAGS.seed)
    try:
        strategy = training.make_strategy(FLAGS.strategy)
    except ValueError as error:
        raise SystemExit(f"apps.train: error: {error}") from None
    chief = training.is_chief(strategy)
    try:
        training.check_strategy(strategy, FLAGS.batch_size, jit_compile=FLAGS.jit_compile)
    except ValueError as error:
        raise SystemExit(f"apps.train: error: {error}") from None
    logging.info("strategy %s with %d replicas", FLAGS.strategy, strategy.num_replicas_in_sync)

    verbosity = training.fit_verbosity(FLAGS.verbose)

    # --- input pipeline ----------------------------------------------------
    try:
        manifest = training.ensure_dataset(
            FLAGS.data_dir,
            synthetic=FLAGS.synthetic,
            synthetic_options={
                "num_classes": FLAGS.synthetic_num_classes,
                "image_size": FLAGS.synthetic_image_size,
                "train_size": FLAGS.synthetic_train_size,
                "val_size": FLAGS.synthetic_val_size,
                "test_size": FLAGS.synthetic_test_size,
                "seed": FLAGS.seed,
            },
        )
        tau_split = training.resolve_tau_split(manifest, FLAGS.tau_split, FLAGS.test_split)
        for split in training.splits_without_boxes(manifest, [tau_split, FLAGS.test_split]):
            logging.warning(
                "no image of the %r split has a box: it will be evaluated for classification "
                "only%s",
                split,
                f", and tau will be --default_tau={FLAGS.default_tau}"
                if split == tau_split
                else "",
            )
        num_train = training.split_size(manifest, FLAGS.train_split, "--train_split")
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"apps.train: error: {error}") from None
    normalization = (
        models.normalization(FLAGS.backbone)
        if FLAGS.normalization == "auto"
        else FLAGS.normalization
    )
    extractor_name = (
        models.default_extractor(FLAGS.method) if FLAGS.extractor == "auto" else FLAGS.extractor
    )
    steps_per_epoch = training.steps_per_epoch(num_train, FLAGS.batch_size, FLAGS.steps_per_epoch)
    train_data = training.train_dataset(
        FLAGS.data_dir,
        FLAGS.train_split,
        batch_size=FLAGS.batch_size,
        resize_size=FLAGS.resize_size,
        crop_size=FLAGS.crop_size,
        normalization=normalization,
        seed=FLAGS.seed,
    )

    def eval_data(split):
        return training.eval_dataset(
            FLAGS.data_dir,
            split,
            batch_size=FLAGS.eval_batch_size,
            crop_size=FLAGS.crop_size,
            normalization=normalization,
        )

    config.update(
        {
            "num_classes": manifest["num_classes"],
            "class_names": manifest["class_names"],
            "dataset": manifest.get("dataset"),
            "data_dir": os.path.abspath(FLAGS.data_dir),
            "image_size": FLAGS.crop_size,
            "normalization": normalization,
            "extractor": extractor_name,
            "tau_split": tau_split,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": steps_per_epoch * FLAGS.epochs,
            "model_file": "model.keras",
        }
    )
    if chief:
        training.write_config(model_dir, config)

    # --- model and optimizer -----------------------------------------------
    with strategy.scope():
        model = models.build(**training.model_kwargs(config))
        schedule = training.StepDecay(
            FLAGS.lr, FLAGS.lr_decay_epochs * steps_per_epoch, FLAGS.lr_decay_factor
        )
        optimizer = training.make_optimizer(
            FLAGS.optimizer, schedule, momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay
        )
        # --- update step: the model's own train_step adds the method's losses
        model.compile(
            optimizer=optimizer,
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=FLAGS.jit_compile,
        )
        model.optimizer.build(model.trainable_variables)
    logging.info("model %s + %s: %d parameters", FLAGS.backbone, FLAGS.method, model.count_params())

    if FLAGS.dry_run:
        model.fit(train_data, epochs=1, steps_per_epoch=1, shuffle=False, verbose=verbosity)
        logging.info("dry run: the pipeline and the model work; stopping before training")
        return 0

    # --- checkpoint: resume where a killed run stopped -----------------------
    backup = training.ResumableBackup(
        os.path.join(model_dir, "backup"),
        save_freq=FLAGS.backup_every_steps or "epoch",
        chief=chief,
    )
    try:
        start_step = backup.restore(model)
    except ValueError as error:
        raise SystemExit(f"apps.train: error: {error}") from None
    plan = training.resume_plan(start_step, steps_per_epoch, FLAGS.epochs)

    if start_step == 0 and FLAGS.init_from:
        try:
            training.init_weights(model, FLAGS.init_from)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"apps.train: error: {error}") from None

    # --- train loop -----------------------------------------------------------
    writers = summaries.Writers(os.path.join(model_dir, "tensorboard"), chief)
    extract = training.make_extractor(extractor_name, model)

    def evaluate_split(split, step, *, baseline=False, tau=None):
        found = evaluation.evaluate(
            model,
            eval_data(split),
            extractor=extract,
            eval_size=FLAGS.crop_size,
            split=split,
            cam_curve_interval=FLAGS.cam_curve_interval,
            centre_baseline=baseline,
            num_examples=FLAGS.num_summary_images,
            require_boxes=False,
        )
        summaries.write_evaluation(
            writers.get(f"eval_{split}"), step, found, tau=tau, max_images=FLAGS.num_summary_images
        )
        logging.info("step %d, %s: %s", step, split, evaluation.headline(found))
        return found

    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        backup,
        training.EpochCheckpoint(
            os.path.join(model_dir, "checkpoints"), keep=FLAGS.keep_checkpoints, chief=chief
        ),
        summaries.TrainSummaries(writers.get("train"), every=max(1, steps_per_epoch // 10)),
        training.EvaluateEvery(
            FLAGS.eval_every,
            lambda epoch, step: evaluate_split(tau_split, step),
            skip_epoch=FLAGS.epochs,
        ),
    ]
    started = time.time()
    for call in plan:
        model.fit(
            train_data,
            initial_epoch=call.initial_epoch,
            epochs=call.epochs,
            steps_per_epoch=call.steps_per_epoch,
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles
            verbose=verbosity,
        )
        if backup.nan_step is not None:
            logging.error(
                "the loss became NaN at step %d; stopped. The last good state is in %s and %s: "
                "lower --lr, or check the data",
                backup.nan_step,
                backup.weights_path,
                os.path.join(model_dir, "checkpoints"),
            )
            return 1
    step = int(model.optimizer.iterations.numpy())
    logging.info("trained to step %d (%.0f s this run)", step, time.time() - started)
    if chief:
        with atomic.atomic_path(os.path.join(model_dir, "model.keras")) as tmp:
            model.save(tmp)

    # --- evaluate: choose tau on --tau_split, report --test_split at it --------
    tau_eval = evaluate_split(tau_split, step, baseline=True)
    tau = evaluation.choose_tau(tau_eval, default=FLAGS.default_tau)
    if tau_eval.classification_only:
        logging.warning(
            "no box on the %r split: tau cannot be chosen on data; using --default_tau=%s",
            tau_split,
            tau,
        )
    reports = {tau_split: tau_eval}
    if FLAGS.test_split in manifest["splits"] and FLAGS.test_split != tau_split:
        reports[FLAGS.test_split] = evaluate_split(FLAGS.test_split, step, baseline=True, tau=tau)
    results = evaluation.report(reports, tau=tau, tau_split=tau_split, step=step, config=config)
    config["tau"] = tau
    config["tau_source"] = results["tau_source"]
    if chief:
        atomic.write_json(os.path.join(model_dir, "metrics.json"), results)
        training.write_config(model_dir, config)
    logging.info("metrics: %s", results["summary"])

    # --- export ----------------------------------------------------------------
    if FLAGS.export and chief:
        path = export.export_if_new(
            model,
            os.path.join(model_dir, "export"),
            model_name=FLAGS.model_name,
            version=step,
            image_size=FLAGS.crop_size,
            normalization=normalization,
            tau=tau,
            extractor=extractor_name,
            class_names=manifest["class_names"],
            top_k=FLAGS.top_k,
        )
        config["export"] = os.path.relpath(path, model_dir)
        training.write_config(model_dir, config)
    writers.close()
    return 0


if __name__ == "__main__":
    app.run(main)
