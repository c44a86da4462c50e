r"""Export a trained run as a SavedModel that TF Serving serves (the Pusher).

    python -m apps.export --model_dir=runs/default                  # exports/wsol/<next>/
    python -m apps.export --model_dir=runs/cub --model_name=cub --version=3 --overwrite

Writes <export_dir>/<model_name>/<version>/ (TF Serving's layout; the version
is an integer, by default one more than the highest there), under a temporary
name renamed when complete. An existing version is kept unless --overwrite.

Signatures (saved_model_cli show --all --dir <that directory>):
  serving_default   image_bytes: [B] string, encoded JPEG/PNG (any size;
                    grayscale, RGB or RGBA)
  serving_images    images: [B, H, W, 3] float32 RGB in [0, 255]
    both -> class_ids [B, k] int32, scores [B, k] float32 (softmax),
            class_names [B, k] string, boxes [B, 4] float32 (normalised
            [ymin, xmin, ymax, xmax] of the top-1 class at tau),
            heatmaps [B, S, S] float32 in [0, 1]
  localize_class    images and class_ids: [B] int32 -> logits, raw_maps,
                    heatmaps and boxes for those classes
The class names ship as assets/class_names.txt; assets.extra/wsolkeras.json
records the input size, normalisation, extractor, tau and the run it came from.

Serve it (where Docker is):
  docker run -p 8501:8501 -v "$PWD/exports/wsol:/models/wsol" -e MODEL_NAME=wsol \
      tensorflow/serving
"""

import os

from absl import app, flags, logging

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from wsolkeras import export, runs, training  # noqa: E402

flags.DEFINE_string("model_dir", "", "A python -m apps.train run's --model_dir.")
flags.DEFINE_string("export_dir", "exports", "Writes <export_dir>/<model_name>/<version>/.")
flags.DEFINE_string("model_name", "", "The served model's name; default: the run's (wsol).")
flags.DEFINE_integer("version", 0, "The version (a positive integer); 0: the next one.")
flags.DEFINE_bool("overwrite", False, "Replace the version if it exists.")
flags.DEFINE_integer("top_k", 0, "Classes returned per image; 0: the run's --top_k.")
flags.DEFINE_enum(
    "extractor", "auto", ["auto", *training.EXTRACTORS], "Map extractor; auto: the run's."
)
flags.DEFINE_float(
    "tau", -1.0, "Threshold for the boxes; default: the one the run chose on its tau split."
)

FLAGS = flags.FLAGS


def fail(message: str) -> SystemExit:
    return SystemExit(f"apps.export: error: {message}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.model_dir:
        raise fail("--model_dir is required (a python -m apps.train run's directory)")

    # --- the run ---------------------------------------------------------------
    try:
        run = runs.load_run(FLAGS.model_dir)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    extractor = run.extractor if FLAGS.extractor == "auto" else FLAGS.extractor
    try:
        tau = run.choose_tau(extractor, FLAGS.tau)
    except ValueError as error:
        raise fail(str(error)) from None
    model_name = FLAGS.model_name or run.config.get("model_name") or "wsol"
    version = FLAGS.version or export.next_version(FLAGS.export_dir, model_name)
    target = os.path.join(FLAGS.export_dir, model_name, str(version))
    if os.path.exists(target) and not FLAGS.overwrite:
        raise fail(
            f"{target} exists: pass --overwrite to replace it, or another --version "
            f"(the next free one is {export.next_version(FLAGS.export_dir, model_name)})"
        )

    # --- export ------------------------------------------------------------------
    try:
        path = export.export_model(
            run.model,
            FLAGS.export_dir,
            model_name=model_name,
            version=version,
            overwrite=FLAGS.overwrite,
            image_size=run.image_size,
            normalization=run.normalization,
            tau=tau,
            extractor=extractor,
            class_names=run.class_names,
            top_k=FLAGS.top_k or int(run.config.get("top_k", 5)),
            metadata={
                "step": run.step,
                "model_dir": os.path.abspath(FLAGS.model_dir),
                "backbone": run.config.get("backbone"),
                "method": run.config.get("method"),
                "dataset": run.config.get("dataset"),
                "tau_split": run.config.get("tau_split"),
            },
        )
    except ValueError as error:
        raise fail(str(error)) from None
    logging.info("exported %s", path)
    base = os.path.abspath(os.path.join(FLAGS.export_dir, model_name))
    print(f"exported {model_name} version {version} to {path}")
    print(
        f'serve it: docker run -p 8501:8501 -v "{base}:/models/{model_name}" '
        f"-e MODEL_NAME={model_name} tensorflow/serving"
    )
    return 0


if __name__ == "__main__":
    app.run(main)
