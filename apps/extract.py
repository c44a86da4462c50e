r"""Heat maps, classes and boxes for a folder of images.

    python -m apps.extract --images=photos/ --model_dir=runs/default --output_dir=maps
    python -m apps.extract --images='photos/**/*.jpg' --saved_model=exports/wsol \
        --output_dir=maps

For each image, <output_dir>/<stem>.png: the image with the heat map of its
top-1 class over it and the box predicted at tau; and for all of them
<output_dir>/predictions.json (written atomically): per image the top-k
class ids, names and scores, and the box, normalised ([ymin, xmin, ymax,
xmax]) and in pixels of the original image ([x0, y0, x1, y1], inclusive).
With --save_maps, also <stem>.npy: the heat map (float32 [S, S] in [0, 1]).
The computation is the exported model's (the same decoder, resize, maps and
box rule), from a train run's --model_dir (any --extractor) or a SavedModel.

Files that cannot be read as images are named in a warning, counted and
listed in predictions.json; with --strict the first one is an error.
"""

import os

from absl import app, flags, logging

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from wsolkeras import extraction, training  # noqa: E402

flags.DEFINE_string("images", "", "A folder of images, or a glob (quote it; ** recurses).")
flags.DEFINE_string("model_dir", "", "A python -m apps.train run's --model_dir.")
flags.DEFINE_string(
    "saved_model", "", "Or: an exported SavedModel (<export_dir>/<name>/<version>, or <name>/)."
)
flags.DEFINE_enum(
    "extractor",
    "auto",
    ["auto", *training.EXTRACTORS],
    "Map extractor (--model_dir only); auto: the run's.",
)
flags.DEFINE_float("tau", -1.0, "Threshold for the boxes (--model_dir only); default: the run's.")
flags.DEFINE_integer("top_k", 0, "Classes per image (--model_dir only); 0: the run's --top_k.")
flags.DEFINE_string("output_dir", "", "Where the PNGs and predictions.json go (required).")
flags.DEFINE_integer("batch_size", 16, "Images per model call.")
flags.DEFINE_bool("overlays", True, "Write the <stem>.png overlays (else predictions.json only).")
flags.DEFINE_bool(
    "save_maps", False, "Also write <stem>.npy: the heat map, float32 [S, S] in [0, 1]."
)
flags.DEFINE_bool("strict", False, "An unreadable image is an error (else a warning).")
flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")

FLAGS = flags.FLAGS


def fail(message: str) -> SystemExit:
    return SystemExit(f"apps.extract: error: {message}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(FLAGS.model_dir) == bool(FLAGS.saved_model):
        raise fail("pass one of --model_dir (a train run) or --saved_model (an export)")
    if not FLAGS.images:
        raise fail("--images is required (a folder of images or a glob)")
    if not FLAGS.output_dir:
        raise fail("--output_dir is required")
    if FLAGS.batch_size < 1:
        raise fail(f"--batch_size must be at least 1, got {FLAGS.batch_size}")
    if FLAGS.saved_model:
        given = [
            name
            for name, unset in (("extractor", "auto"), ("tau", -1.0), ("top_k", 0))
            if FLAGS[name].value != unset
        ]
        if given:
            raise fail(
                f"--{given[0]} works with --model_dir only: a SavedModel gives the maps, tau and "
                "top-k it was exported with (python -m apps.export exports others)"
            )

    # --- the images --------------------------------------------------------------
    paths = extraction.find_images(FLAGS.images)
    if not paths:
        raise fail(
            f"--images={FLAGS.images} matched no files "
            f"(a folder is searched for {', '.join(extraction.IMAGE_EXTENSIONS)})"
        )

    # --- the model ----------------------------------------------------------------
    try:
        if FLAGS.model_dir:
            predictor = extraction.from_run(
                FLAGS.model_dir,
                extractor=None if FLAGS.extractor == "auto" else FLAGS.extractor,
                tau=FLAGS.tau,
                top_k=FLAGS.top_k,
            )
        else:
            predictor = extraction.from_saved_model(FLAGS.saved_model)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    logging.info(
        "%d files; model %s (%s, extractor %s, tau %s)",
        len(paths),
        predictor.path,
        predictor.source,
        predictor.extractor,
        predictor.tau,
    )

    # --- extract ----------------------------------------------------------------------
    try:
        result = extraction.extract(
            predictor,
            paths,
            FLAGS.output_dir,
            batch_size=FLAGS.batch_size,
            strict=FLAGS.strict,
            overlays=FLAGS.overlays,
            save_maps=FLAGS.save_maps,
            show_progress=FLAGS.progress,
        )
    except extraction.UnreadableImage as error:
        raise fail(f"{error} (--strict)") from None
    print(
        f"{result['num_images']} images localised, {result['num_unreadable']} unreadable; "
        f"wrote {os.path.join(FLAGS.output_dir, extraction.PREDICTIONS_FILE)}"
    )
    if not result["num_images"]:
        raise fail(f"none of the {len(paths)} files matched by --images could be read")
    return 0


if __name__ == "__main__":
    app.run(main)
