"""apps.convert, run as a user runs it: a subprocess with flags."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _convert(*flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "apps.convert", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _no_traceback(result):
    assert "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    output = tmp_path_factory.mktemp("converted") / "synthetic"
    result = _convert(
        "--dataset=synthetic",
        f"--output_dir={output}",
        "--num_classes=4",
        "--image_size=40",
        "--train_size=18",
        "--val_size=5",
        "--test_size=3",
        "--seed=2",
        "--records_per_shard=8",
        "--workers=2",
        "--noprogress",
    )
    assert result.returncode == 0, result.stderr
    return output, result


def test_converts_the_synthetic_set(converted):
    output, result = converted
    assert "train: 18 records in 3 shard(s)" in result.stdout
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["num_classes"] == 4
    assert {k: v["num_records"] for k, v in manifest["splits"].items()} == {
        "train": 18,
        "val": 5,
        "test": 3,
    }
    assert manifest["source"]["seed"] == 2 and manifest["source"]["image_size"] == 40


def test_verify_passes_then_finds_and_names_a_corrupt_shard(converted, tmp_path):
    output, _ = converted
    result = _convert("--verify", f"--output_dir={output}")
    assert result.returncode == 0 and "OK (5 shards" in result.stdout
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(output):
        (copy / name).write_bytes((output / name).read_bytes())
    shard = copy / "val-00000-of-00001.tfrecord"
    content = bytearray(shard.read_bytes())
    content[100] ^= 0xFF
    shard.write_bytes(bytes(content))
    result = _convert("--verify", f"--output_dir={copy}")
    assert result.returncode == 1
    assert "val-00000-of-00001.tfrecord: sha256 does not match" in result.stderr
    _no_traceback(result)


def test_unknown_dataset_lists_the_valid_ones():
    result = _convert("--dataset=imagenet21k", "--output_dir=/tmp/unused")
    assert result.returncode != 0
    assert "unknown dataset 'imagenet21k'" in result.stderr
    for name in ("aircraft", "cub", "dogs", "folder", "synthetic", "tfds", "wsol_metadata"):
        assert name in result.stderr
    _no_traceback(result)


def test_bad_flags_are_clear_messages(tmp_path):
    cases = {
        ("--dataset=synthetic",): "--output_dir is required",
        (
            "--dataset=synthetic",
            f"--output_dir={tmp_path}",
            "--label_level=family",
        ): "--label_level do(es) not apply to --dataset=synthetic",
        (
            "--dataset=synthetic",
            f"--output_dir={tmp_path}",
            "--num_classes=500",
        ): "num_classes must be in [2, 80]",
        ("--dataset=cub", f"--output_dir={tmp_path}"): "--data_dir is required for --dataset=cub",
        ("--verify", f"--output_dir={tmp_path}"): "manifest.json does not exist",
    }
    for flags, message in cases.items():
        result = _convert(*flags)
        assert result.returncode != 0, flags
        assert message in result.stderr, (flags, result.stderr)
        _no_traceback(result)
