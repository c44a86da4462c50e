"""wsolkeras.serving: finding and loading an export, and the Predict API's conversions.

End to end against a trained model: tests/apps/test_export.py.
"""

import base64
import json

import numpy as np
import pytest
import tensorflow as tf

from wsolkeras import export, serving


def test_resolve_version_dir_takes_the_highest_integer_version(tmp_path):
    base = tmp_path / "wsol"
    for name in ("1", "10", "9", "11", "12x", ".13.tmp-5"):
        (base / name).mkdir(parents=True)
    for name in ("1", "10", "9", "12x", ".13.tmp-5"):
        (base / name / "saved_model.pb").write_bytes(b"")
    # 11 has no saved_model.pb (an unfinished copy): not a version.
    assert serving.resolve_version_dir(str(base)) == str(base / "10")
    assert serving.resolve_version_dir(str(base / "9")) == str(base / "9")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        serving.resolve_version_dir(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no version directory"):
        serving.resolve_version_dir(str(tmp_path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from wsolkeras import models

    model = models.build(backbone="small_cnn", method="cam", num_classes=3, image_size=32, seed=2)
    path = export.export_model(
        model,
        str(tmp_path_factory.mktemp("exports")),
        model_name="m",
        version=4,
        image_size=32,
        normalization="unit",
        tau=0.35,
        class_names=["cat", "dog", "emu"],
        top_k=2,
    )
    return serving.ExportedModel(path), model


def png_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return tf.io.encode_png(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)).numpy()


def test_exported_model_reads_what_the_export_recorded(exported):
    model, _ = exported
    assert model.version == 4 and model.image_size == 32 and model.tau == 0.35
    assert model.class_names == ["cat", "dog", "emu"] and model.extractor == "cam"
    out = model.localize_bytes([png_bytes(0), png_bytes(1)])
    assert out["class_ids"].shape == (2, 2) and out["heatmaps"].shape == (2, 32, 32)
    with pytest.raises(ValueError, match="no signature 'serve'"):
        model.signature("serve")


def test_predict_converts_tensor_protos_both_ways(exported):
    from tensorflow_serving.apis import predict_pb2

    model, _ = exported
    images = [png_bytes(2), png_bytes(3)]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images))
    response = serving.predict(model, request)
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 4
    direct = model.localize_bytes(images)
    assert set(response.outputs) == set(direct)
    for key, proto in response.outputs.items():
        np.testing.assert_array_equal(tf.make_ndarray(proto), direct[key])
    assert response.outputs["class_ids"].dtype == tf.int32.as_datatype_enum
    assert response.outputs["class_names"].dtype == tf.string.as_datatype_enum

    request.output_filter.append("logits")
    with pytest.raises(ValueError, match="output_filter"):
        serving.predict(model, request)
    other = predict_pb2.PredictRequest()
    other.model_spec.signature_name = "localize_class"
    other.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 8, 8, 3), np.float32)))
    with pytest.raises(ValueError, match=r"\['class_ids', 'images'\]"):
        serving.predict(model, other)


def test_predict_json_row_and_column_formats(exported):
    model, _ = exported
    images = [png_bytes(4), png_bytes(5)]
    encoded = [{"b64": base64.b64encode(b).decode("ascii")} for b in images]
    rows = serving.predict_json(model, {"instances": [{"image_bytes": e} for e in encoded]})
    direct = model.localize_bytes(images)
    assert [r["class_names"] for r in rows["predictions"]] == direct["class_names"].astype(
        str
    ).tolist()
    np.testing.assert_allclose(
        [r["boxes"] for r in rows["predictions"]], direct["boxes"], atol=1e-7
    )
    json.dumps(rows)  # JSON-ready
    # One input: rows may be the values themselves, columns a bare list.
    bare = serving.predict_json(model, {"instances": encoded})
    columns = serving.predict_json(model, {"inputs": encoded})
    assert bare == rows
    assert columns["outputs"]["class_ids"] == direct["class_ids"].tolist()
    with pytest.raises(ValueError, match="exactly one of"):
        serving.predict_json(model, {"inputs": encoded, "instances": encoded})
    with pytest.raises(ValueError, match="takes the inputs"):
        serving.predict_json(
            model, {"signature_name": "localize_class", "instances": [{"images": [[[0, 0, 0]]]}]}
        )
