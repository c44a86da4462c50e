r"""Evaluate a trained run or an exported SavedModel on a split of a converted data set.

    python -m apps.evaluate --model_dir=runs/default                 # its test split
    python -m apps.evaluate --model_dir=runs/cub --split=test --extractor=gradcam
    python -m apps.evaluate --saved_model=exports/wsol/3 --data_dir=data/cub \
        --output_dir=eval/wsol-3

The threshold tau is chosen on --tau_split (the validation split) and the
--split is reported at it: MaxBoxAccV2, MaxBoxAcc at IoU 0.5 to 0.9 with mIoU,
Top-1 Loc, GT-known Loc, top-1 classification, PxAP where the split has
masks, and the centre-Gaussian baseline. A --model_dir's config.json gives
the data set, the input size, the normalisation and the extractor; a
SavedModel gives its exported heat maps (the extractor it was exported with).

Writes into --output_dir (default <model_dir>/eval/<split>, or
<model_dir>/eval/<split>-<extractor> for another extractor than the run's):
  metrics.json            the same report as the train app's metrics.json
  box_acc_vs_tau.png      BoxAcc against tau at IoU 0.5..0.9 (largest box)
  box_acc_v2_vs_tau.png   BoxAcc against tau at IoU 0.3/0.5/0.7 (all boxes)
  tensorboard/<split>/    scalars, the curves and example maps
"""

import os

from absl import app, flags, logging

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from wsolkeras import evaluator, runs, training  # noqa: E402

flags.DEFINE_string("model_dir", "", "A python -m apps.train run's --model_dir.")
flags.DEFINE_string(
    "saved_model", "", "Or: an exported SavedModel (<export_dir>/<name>/<version>, or <name>/)."
)
flags.DEFINE_string("data_dir", "", "Converted data set; default: the run's --data_dir.")
flags.DEFINE_string("split", "test", "The split to report.")
flags.DEFINE_string(
    "tau_split", "", "The split tau is chosen on; default: the run's (val; test if absent)."
)
flags.DEFINE_enum(
    "extractor",
    "auto",
    ["auto", *training.EXTRACTORS],
    "Map extractor (--model_dir only); auto: the run's.",
)
flags.DEFINE_string("output_dir", "", "Where to write; default <model_dir>/eval/<split>.")
flags.DEFINE_integer("batch_size", 0, "Evaluation batch size; 0: the run's --eval_batch_size.")
flags.DEFINE_float(
    "cam_curve_interval", 0.0, "Threshold step; 0: the run's (0.01, 100 thresholds)."
)
flags.DEFINE_bool("centre_baseline", True, "Also evaluate the centre-Gaussian baseline.")
flags.DEFINE_integer("num_summary_images", 6, "Images shown with their maps in TensorBoard.")
flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")

FLAGS = flags.FLAGS


def fail(message: str) -> SystemExit:
    return SystemExit(f"apps.evaluate: error: {message}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(FLAGS.model_dir) == bool(FLAGS.saved_model):
        raise fail("pass one of --model_dir (a train run) or --saved_model (an export)")

    # --- what is evaluated ----------------------------------------------------
    try:
        if FLAGS.model_dir:
            extractor = None if FLAGS.extractor == "auto" else FLAGS.extractor
            source = evaluator.from_run(FLAGS.model_dir, extractor)
        else:
            source = evaluator.from_saved_model(FLAGS.saved_model)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    config = source.config
    if FLAGS.saved_model and FLAGS.extractor not in ("auto", source.extractor_name):
        raise fail(
            f"--extractor={FLAGS.extractor}: a SavedModel gives the heat maps it was exported "
            f"with ({source.extractor_name}); evaluate the run's --model_dir for another extractor"
        )

    # --- on what ------------------------------------------------------------------
    data_dir = FLAGS.data_dir or (config.get("data_dir") if source.kind == "model_dir" else "")
    if not data_dir:
        raise fail("--data_dir is needed with --saved_model (a converted data set)")
    tau_split = FLAGS.tau_split or config.get("tau_split") or "val"
    batch_size = FLAGS.batch_size or int(config.get("eval_batch_size", 64))
    interval = FLAGS.cam_curve_interval or float(config.get("cam_curve_interval", 0.01))
    output_dir = FLAGS.output_dir
    if not output_dir:
        if source.kind != "model_dir":
            raise fail("--output_dir is needed with --saved_model")
        default_extractor = runs.read_config(FLAGS.model_dir).get("extractor", "cam")
        name = FLAGS.split
        if source.extractor_name != default_extractor:
            name = f"{FLAGS.split}-{source.extractor_name}"
        output_dir = os.path.join(FLAGS.model_dir, "eval", name)
    logging.info(
        "evaluating %s (%s, extractor %s) on %s, split %s; tau from %s",
        source.path,
        source.kind,
        source.extractor_name,
        data_dir,
        FLAGS.split,
        tau_split,
    )

    # --- evaluate: tau on tau_split, the split at it ---------------------------------
    try:
        found, evaluations = evaluator.evaluate(
            source,
            data_dir,
            FLAGS.split,
            tau_split=tau_split,
            batch_size=batch_size,
            cam_curve_interval=interval,
            centre_baseline=FLAGS.centre_baseline,
            num_examples=FLAGS.num_summary_images,
            show_progress=FLAGS.progress,
        )
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None

    # --- write ------------------------------------------------------------------------
    written = evaluator.write_outputs(
        output_dir, found, evaluations, num_images=FLAGS.num_summary_images
    )
    for line in evaluator.summary_lines(found):
        print(line)
    print(f"wrote {written['metrics']}, the plots and TensorBoard events in {output_dir}")
    return 0


if __name__ == "__main__":
    app.run(main)
