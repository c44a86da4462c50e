"""Converts a data set to wsolkeras TFRecord shards (the ExampleGen component).

    python -m apps.convert --dataset=cub --data_dir=/data/CUB_200_2011 --output_dir=/data/cub_tfr
    python -m apps.convert --dataset=synthetic --output_dir=/tmp/synthetic
    python -m apps.convert --verify --output_dir=/data/cub_tfr

Re-running the same command resumes an interrupted conversion (complete,
verified shards are kept); ``--overwrite`` redoes everything. Bad records
stop the conversion with a message naming the file; ``--skip_bad`` skips and
counts them instead.
"""

from __future__ import annotations

import inspect
import sys

from absl import app, flags, logging

from tfrecords import converters, writer
from tfrecords.errors import BadRecord, ManifestError

FLAGS = flags.FLAGS

flags.DEFINE_string("dataset", None, f"one of: {', '.join(sorted(converters.CONVERTERS))}")
flags.DEFINE_string("data_dir", None, "the data set's folder (or archive), as the converter says")
flags.DEFINE_string("output_dir", None, "folder for the shards and manifest.json")
flags.DEFINE_bool("overwrite", False, "rewrite every shard, even complete ones")
flags.DEFINE_bool("verify", False, "only re-check --output_dir against its manifest")
flags.DEFINE_bool("skip_bad", False, "skip (and count) records that cannot be converted")
flags.DEFINE_integer("workers", None, "loader processes (default: one per CPU; 0: none)")
flags.DEFINE_integer("records_per_shard", 512, "records per TFRecord shard")
flags.DEFINE_bool("progress", True, "show a progress bar on stderr")

# Converter options: each is passed to make_source only when given and taken.
flags.DEFINE_string("segmentations_dir", None, "cub: folder (or .tgz) of the segmentation masks")
flags.DEFINE_enum("label_level", None, ["variant", "family", "manufacturer"], "aircraft: labels")
flags.DEFINE_bool("crop_banner", None, "aircraft: crop the 20-pixel copyright banner")
flags.DEFINE_string("metadata_dir", None, "wsol_metadata: folder with train/ val/ test/")
flags.DEFINE_string("tfds_name", None, "tfds: builder name, e.g. caltech_birds2011")
flags.DEFINE_integer("num_classes", None, "synthetic: number of classes")
flags.DEFINE_integer("image_size", None, "synthetic: image side in pixels")
flags.DEFINE_integer("train_size", None, "synthetic: training images")
flags.DEFINE_integer("val_size", None, "synthetic: validation images")
flags.DEFINE_integer("test_size", None, "synthetic: test images")
flags.DEFINE_integer("seed", None, "synthetic, folder: random seed")
flags.DEFINE_string("split", None, "folder: train,val,test fractions, e.g. 0.8,0.1,0.1")
flags.DEFINE_string("boxes", None, "folder: boxes as a COCO .json or a .csv file")

CONVERTER_OPTIONS = (
    "segmentations_dir",
    "label_level",
    "crop_banner",
    "metadata_dir",
    "tfds_name",
    "num_classes",
    "image_size",
    "train_size",
    "val_size",
    "test_size",
    "seed",
    "split",
    "boxes",
)


def converter_options(make_source, given: dict) -> dict:
    """The options of ``given`` (flag name -> value) that ``make_source`` takes.

    Raises:
      ValueError: a given option the converter does not take.
    """
    parameters = inspect.signature(make_source).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [name for name in given if name not in parameters and not takes_any]
    if unknown:
        valid = [name for name in CONVERTER_OPTIONS if name in parameters]
        raise ValueError(
            f"--{', --'.join(unknown)} do(es) not apply to --dataset={FLAGS.dataset}; "
            f"its options: {', '.join('--' + v for v in valid) or 'none'}"
        )
    return given


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _usage(message: str) -> int:
    # absl's UsageError would print the whole flag list above the message.
    print(f"error: {message}\n(python -m apps.convert --help lists the flags)", file=sys.stderr)
    return 2


def _verify(output_dir: str) -> int:
    problems = writer.verify(output_dir)
    if problems:
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        print(f"{output_dir}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    manifest = writer.read_manifest(output_dir)
    shards = sum(len(split["shards"]) for split in manifest["splits"].values())
    print(f"{output_dir}: OK ({shards} shards match manifest.json)")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return _usage(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.output_dir:
        return _usage("--output_dir is required")
    if FLAGS.verify:
        return _verify(FLAGS.output_dir)
    if not FLAGS.dataset:
        return _usage(
            f"--dataset is required; valid datasets: {', '.join(sorted(converters.CONVERTERS))}"
        )
    try:
        module = converters.get(FLAGS.dataset)
    except ValueError as error:
        return _usage(str(error))
    except ImportError as error:
        return _fail(f"the {FLAGS.dataset!r} converter cannot be imported: {error}")

    data_dir_param = inspect.signature(module.make_source).parameters.get("data_dir")
    if (
        not FLAGS.data_dir
        and data_dir_param is not None
        and data_dir_param.default is (inspect.Parameter.empty)
    ):
        return _usage(f"--data_dir is required for --dataset={FLAGS.dataset}")
    given = {name: FLAGS[name].value for name in CONVERTER_OPTIONS if FLAGS[name].present}
    if "skip_bad" in inspect.signature(module.make_source).parameters:
        # Converters that scan annotations up front skip bad ones there too.
        given["skip_bad"] = FLAGS.skip_bad
    try:
        options = converter_options(module.make_source, given)
    except ValueError as error:
        return _usage(str(error))

    try:
        source = module.make_source(FLAGS.data_dir, **options)
        manifest = writer.write_dataset(
            source,
            FLAGS.output_dir,
            records_per_shard=FLAGS.records_per_shard,
            workers=FLAGS.workers,
            overwrite=FLAGS.overwrite,
            skip_bad=FLAGS.skip_bad,
            progress=FLAGS.progress,
        )
    except BadRecord as error:
        return _fail(f"bad record: {error}")
    except (ValueError, ManifestError, OSError) as error:
        return _fail(str(error))

    for name, split in manifest["splits"].items():
        line = f"{name}: {split['num_records']} records in {len(split['shards'])} shard(s)"
        if split["num_skipped"]:
            line += f", {split['num_skipped']} bad record(s) skipped"
        if split["num_clipped_boxes"]:
            line += f", {split['num_clipped_boxes']} box(es) clipped to their image"
        print(line)
    print(f"wrote {FLAGS.output_dir}/{writer.MANIFEST} ({manifest['num_classes']} classes)")
    logging.info("done")
    return 0


if __name__ == "__main__":
    app.run(main)
