"""apps.export and the SavedModel it writes, as TF Serving and its clients see it.

The exported model is loaded in a fresh Python process that imports nothing
of this project, listed by saved_model_cli, and sent a PredictRequest and a
REST body built as TF Serving receives them; its answers are checked against
the run's Keras model (``serving_helpers.Reference``: numpy softmax and
top-k, OpenCV resizes, the extractor's map min-max normalised, the box rule
with scipy).
"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.apps.app_runner import ROOT, run_app
from tests.apps.serving_helpers import (
    assert_box_is_one_of,
    decode_rgb,
    largest_component_boxes,
    sample_images,
)

pytestmark = pytest.mark.slow

FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf

path, out, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
loaded = tf.saved_model.load(path)
serve = loaded.signatures["serving_default"]
data = [open(name, "rb").read() for name in names]
result = serve(image_bytes=tf.constant(data))
np.savez(out, **{key: value.numpy() for key, value in result.items()})
ours = ("wsolkeras", "tfrecords", "layers", "apps", "tests")
print(json.dumps({
    "project_modules": sorted(m for m in sys.modules if m.split(".")[0] in ours),
    "sys_path": [__import__("os").path.abspath(p) for p in sys.path],
}))
"""


def check_against_reference(outputs: dict, images: list[bytes], reference, config) -> None:
    """The served outputs equal the Keras model's, on the same decoded images."""
    top_k, tau = config["top_k"], config["tau"]
    expected = reference.predict([decode_rgb(data) for data in images], top_k, tau)
    np.testing.assert_array_equal(outputs["class_ids"], expected["class_ids"])
    np.testing.assert_allclose(outputs["scores"], expected["scores"], atol=1e-5)
    names = np.vectorize(lambda b: b.decode("utf-8"))(outputs["class_names"])
    np.testing.assert_array_equal(names, expected["class_names"])
    size = reference.size
    assert outputs["heatmaps"].shape == (len(images), size, size)
    np.testing.assert_allclose(outputs["heatmaps"], expected["heatmaps"], atol=1e-4)
    assert outputs["heatmaps"].min() >= 0 and outputs["heatmaps"].max() <= 1
    for box, heatmap in zip(outputs["boxes"], outputs["heatmaps"], strict=True):
        assert_box_is_one_of(box, largest_component_boxes(heatmap, tau))


def test_a_fresh_process_serves_jpeg_and_png_as_the_keras_model_predicts(
    exported, reference, run_config, tmp_path
):
    version_dir, _ = exported
    # Moved: the class-name asset must travel with the SavedModel.
    served = tmp_path / "models" / "wsol" / "1"
    shutil.copytree(version_dir, served)
    samples = sample_images()
    for name, data in samples:
        (tmp_path / name).write_bytes(data)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS,
            str(served),
            str(tmp_path / "out.npz"),
            json.dumps([name for name, _ in samples]),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["project_modules"] == []
    # Nothing of the repository is on the path, but the interpreter's own
    # site-packages may live inside it (CI's venv is <repo>/.ci-venv).
    inside_repo = [
        p
        for p in facts["sys_path"]
        if (p == ROOT or p.startswith(ROOT + os.sep)) and not p.startswith(sys.prefix)
    ]
    assert not inside_repo

    outputs = dict(np.load(tmp_path / "out.npz", allow_pickle=True))  # strings: objects
    assert set(outputs) == {"class_ids", "scores", "class_names", "boxes", "heatmaps"}
    check_against_reference(outputs, [data for _, data in samples], reference, run_config)


def parse_saved_model_cli(text: str) -> dict:
    """``{signature: {"inputs"|"outputs": {name: (dtype, shape)}, "method": str}}``."""
    signatures, current, side, name = {}, None, None, None
    for line in text.split("Concrete Functions:")[0].splitlines():
        if match := re.match(r"signature_def\['(.+)'\]:", line):
            current = signatures.setdefault(match[1], {"inputs": {}, "outputs": {}})
        elif match := re.match(r"\s+(inputs|outputs)\['(.+)'\] tensor_info:", line):
            side, name = match[1], match[2]
        elif match := re.match(r"\s+dtype: (\w+)", line):
            dtype = match[1]
        elif match := re.match(r"\s+shape: (.+)", line):
            current[side][name] = (dtype, match[1].strip())
        elif match := re.match(r"\s+Method name is: (.*)", line):
            current["method"] = match[1].strip()
    return signatures


def test_saved_model_cli_lists_the_documented_signatures(exported, run_config):
    version_dir, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [cli, "show", "--all", "--dir", version_dir],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = parse_saved_model_cli(result.stdout)
    k, size, classes = run_config["top_k"], run_config["crop_size"], run_config["num_classes"]
    served = {
        "boxes": ("DT_FLOAT", "(-1, 4)"),
        "class_ids": ("DT_INT32", f"(-1, {k})"),
        "class_names": ("DT_STRING", f"(-1, {k})"),
        "heatmaps": ("DT_FLOAT", f"(-1, {size}, {size})"),
        "scores": ("DT_FLOAT", f"(-1, {k})"),
    }
    assert found["serving_default"]["inputs"] == {"image_bytes": ("DT_STRING", "(-1)")}
    assert found["serving_default"]["outputs"] == served
    assert found["serving_images"]["inputs"] == {"images": ("DT_FLOAT", "(-1, -1, -1, 3)")}
    assert found["serving_images"]["outputs"] == served
    assert found["localize_class"]["inputs"] == {
        "images": ("DT_FLOAT", "(-1, -1, -1, 3)"),
        "class_ids": ("DT_INT32", "(-1)"),
    }
    outputs = found["localize_class"]["outputs"]
    assert outputs["logits"] == ("DT_FLOAT", f"(-1, {classes})")
    assert outputs["heatmaps"] == served["heatmaps"] and outputs["boxes"] == served["boxes"]
    assert outputs["raw_maps"][0] == "DT_FLOAT"
    for name in ("serving_default", "serving_images", "localize_class"):
        assert found[name]["method"] == "tensorflow/serving/predict"


def test_a_predict_request_is_answered_as_tf_serving_would(exported, reference, run_config):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from wsolkeras import serving

    version_dir, _ = exported
    model = serving.ExportedModel(os.path.dirname(version_dir))  # the newest version: 1
    assert model.path == version_dir
    images = [data for _, data in sample_images()[:3]]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "wsol"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    # What the server receives is the serialised proto.
    received = predict_pb2.PredictRequest.FromString(request.SerializeToString())

    response = serving.predict(model, received)
    response = predict_pb2.PredictResponse.FromString(response.SerializeToString())
    assert response.model_spec.name == "wsol"
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 1
    outputs = {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
    check_against_reference(outputs, images, reference, run_config)

    request.output_filter.append("boxes")
    assert set(serving.predict(model, request).outputs) == {"boxes"}
    wrong = predict_pb2.PredictRequest()
    wrong.inputs["images_bytes"].CopyFrom(tf.make_tensor_proto(images[:1]))
    with pytest.raises(ValueError, match="image_bytes"):
        serving.predict(model, wrong)


def test_the_readme_rest_body_is_answered_as_tf_serving_would(exported, reference, run_config):
    from wsolkeras import serving

    model = serving.ExportedModel(exported[0])
    images = [data for _, data in sample_images()[:2]]
    body = json.dumps(
        {
            "signature_name": "serving_default",
            "instances": [{"image_bytes": {"b64": base64.b64encode(d).decode()}} for d in images],
        }
    )
    answer = json.loads(json.dumps(serving.predict_json(model, json.loads(body))))
    rows = answer["predictions"]
    assert len(rows) == 2
    outputs = {
        key: np.array([row[key] for row in rows])
        for key in ("class_ids", "scores", "boxes", "heatmaps")
    }
    outputs["class_names"] = np.array([[n.encode() for n in row["class_names"]] for row in rows])
    check_against_reference(outputs, images, reference, run_config)

    columns = serving.predict_json(
        model, {"inputs": {"image_bytes": [{"b64": base64.b64encode(images[0]).decode()}]}}
    )
    assert columns["outputs"]["class_ids"] == [rows[0]["class_ids"]]


def test_bytes_that_are_not_an_image_fail_saying_so(exported):
    import tensorflow as tf

    from wsolkeras import serving

    model = serving.ExportedModel(exported[0])
    good = sample_images()[1][1]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not a JPEG/PNG image") as error:
        model.localize_bytes([good, b"GIF89a, or any text", good])
    assert "[1]" in str(error.value), "the message gives the index of the bad string"
    with pytest.raises(tf.errors.InvalidArgumentError, match="PNG"):
        model.localize_bytes([good[: len(good) // 2]])  # a truncated PNG


def test_class_names_ship_as_a_saved_model_asset(exported, run_config):
    from tensorflow.core.protobuf import saved_model_pb2

    version_dir, _ = exported
    with open(os.path.join(version_dir, "assets", "class_names.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == run_config["class_names"]
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    assets = [a.filename for g in proto.meta_graphs for a in g.asset_file_def]
    assert assets == ["class_names.txt"]
    with open(os.path.join(version_dir, "assets.extra", "wsolkeras.json")) as f:
        info = json.load(f)
    assert info["tau"] == run_config["tau"] and info["step"] == run_config["total_steps"]
    assert info["extractor"] == run_config["extractor"]


# --- the app ------------------------------------------------------------------------


def test_versions_increase_and_an_existing_one_is_kept_unless_overwrite(
    trained_run, exported, tmp_path
):
    model_dir, _ = trained_run
    export_dir = tmp_path / "exports"
    shutil.copytree(exported[1], export_dir)  # holds wsol/1
    second = run_app("export", f"--model_dir={model_dir}", f"--export_dir={export_dir}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(os.listdir(export_dir / "wsol")) == ["1", "2"], "nothing temporary is left"
    assert f'-v "{export_dir / "wsol"}:/models/wsol"' in second.stdout

    before = os.path.getmtime(export_dir / "wsol" / "1" / "saved_model.pb")
    refused = run_app(
        "export", f"--model_dir={model_dir}", f"--export_dir={export_dir}", "--version=1"
    )
    assert refused.returncode != 0
    assert "exists" in refused.stderr and "--overwrite" in refused.stderr
    assert "the next free one is 3" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert os.path.getmtime(export_dir / "wsol" / "1" / "saved_model.pb") == before

    replaced = run_app(
        "export",
        f"--model_dir={model_dir}",
        f"--export_dir={export_dir}",
        "--version=1",
        "--overwrite",
        "--top_k=1",
    )
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert sorted(os.listdir(export_dir / "wsol")) == ["1", "2"]
    with open(export_dir / "wsol" / "1" / "assets.extra" / "wsolkeras.json") as f:
        assert json.load(f)["top_k"] == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["--model_dir is required"]),
        (["--model_dir={tmp}/nowhere"], ["--model_dir=", "does not exist"]),
        (["--model_dir={run}", "--extractor=gradcamm"], ["--extractor", "gradcam++", "layercam"]),
        (["--model_dir={run}", "--extractor=gradcam"], ["tau was chosen on cam maps", "--tau"]),
    ],
)
def test_bad_flags_exit_nonzero_with_a_clear_message(args, expected, trained_run, tmp_path):
    model_dir, _ = trained_run
    args = [a.format(tmp=tmp_path, run=model_dir) for a in args]
    result = run_app("export", *args, f"--export_dir={tmp_path / 'exports'}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, (text, result.stderr[-3000:])
    assert not (tmp_path / "exports" / "wsol").exists() or not os.listdir(
        tmp_path / "exports" / "wsol"
    )
