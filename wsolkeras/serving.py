"""Use an exported SavedModel (``wsolkeras.export``) from Python, and answer requests as TF Serving.

- :class:`ExportedModel` loads ``<export_dir>/<model_name>/<version>/`` (or the
  newest version under ``<export_dir>/<model_name>/``) and reads what the
  export recorded about itself (input size, tau, extractor, class names).
- :func:`predict` answers a ``tensorflow_serving.apis.PredictRequest`` the way
  the model server's Predict API does: each input ``TensorProto`` becomes a
  tensor, the named signature runs, each output becomes a ``TensorProto`` of a
  ``PredictResponse``. :func:`predict_json` does the same for the REST API's
  JSON body (``instances`` rows or ``inputs`` columns; binary values as
  ``{"b64": ...}``, which TF Serving accepts for inputs whose name ends in
  ``_bytes``). Neither needs a model server: they are for tests, and for
  checking a request before sending it to one.
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

import numpy as np
import tensorflow as tf

from wsolkeras.export import (
    CLASS_NAMES_ASSET,
    SIGNATURE_CLASS,
    SIGNATURE_IMAGE_BYTES,
    SIGNATURE_IMAGES,
)
from wsolkeras.export import INFO_FILE as _INFO_NAME

INFO_FILE = os.path.join("assets.extra", _INFO_NAME)
CLASS_NAMES_FILE = os.path.join("assets", CLASS_NAMES_ASSET)


def resolve_version_dir(path: str) -> str:
    """``path`` if it holds a ``saved_model.pb``, else its highest integer-named subdirectory.

    Raises ``FileNotFoundError`` saying what was expected where.
    """
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path} does not exist: pass a SavedModel directory "
            "(<export_dir>/<model_name>/<version>) or its <export_dir>/<model_name> parent"
        )
    versions = [
        int(name)
        for name in os.listdir(path)
        if re.fullmatch(r"\d+", name) and os.path.isfile(os.path.join(path, name, "saved_model.pb"))
    ]
    if not versions:
        raise FileNotFoundError(
            f"{path} holds no saved_model.pb and no version directory (1/, 2/, ...) with one: "
            "pass a SavedModel written by python -m apps.export"
        )
    return os.path.join(path, str(max(versions)))


class ExportedModel:
    """A loaded SavedModel written by ``wsolkeras.export.export_model``.

    Keep this object alive while calling its signatures (TensorFlow frees the
    loaded resources with it).
    """

    def __init__(self, path: str):
        self.path = resolve_version_dir(path)
        self.loaded = tf.saved_model.load(self.path)
        info_path = os.path.join(self.path, INFO_FILE)
        self.info: dict = {}
        if os.path.exists(info_path):
            with open(info_path, encoding="utf-8") as f:
                self.info = json.load(f)
        for name in (SIGNATURE_IMAGE_BYTES, SIGNATURE_IMAGES):
            if name not in self.loaded.signatures:
                raise ValueError(
                    f"{self.path} has no {name!r} signature (it has "
                    f"{sorted(self.loaded.signatures)}): it was not written by wsolkeras.export"
                )

    @property
    def version(self) -> int | None:
        name = os.path.basename(os.path.normpath(self.path))
        return int(name) if name.isdigit() else None

    @property
    def image_size(self) -> int:
        """The model's input size ``S`` (the heat maps' side)."""
        if "image_size" in self.info:
            return int(self.info["image_size"])
        shape = self.loaded.signatures[SIGNATURE_IMAGE_BYTES].structured_outputs["heatmaps"].shape
        return int(shape[1])

    @property
    def tau(self) -> float | None:
        return self.info.get("tau")

    @property
    def extractor(self) -> str | None:
        return self.info.get("extractor")

    @property
    def class_names(self) -> list[str]:
        """The names in the export's class-name asset (one per line)."""
        path = os.path.join(self.path, CLASS_NAMES_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return f.read().splitlines()
        return list(self.info.get("class_names", []))

    def signature(self, name: str):
        if name not in self.loaded.signatures:
            raise ValueError(
                f"{self.path} has no signature {name!r}; it has {sorted(self.loaded.signatures)}"
            )
        return self.loaded.signatures[name]

    def localize(self, images: Any) -> dict[str, np.ndarray]:
        """``serving_images`` on float RGB ``[B, H, W, 3]`` in [0, 255]; numpy outputs."""
        out = self.signature(SIGNATURE_IMAGES)(images=tf.cast(images, tf.float32))
        return {key: value.numpy() for key, value in out.items()}

    def localize_bytes(self, image_bytes: list[bytes]) -> dict[str, np.ndarray]:
        """``serving_default`` on encoded JPEG/PNG images; numpy outputs."""
        out = self.signature(SIGNATURE_IMAGE_BYTES)(image_bytes=tf.constant(image_bytes))
        return {key: value.numpy() for key, value in out.items()}

    def for_classes(self, images: Any, class_ids: Any) -> dict[str, tf.Tensor]:
        """``localize_class``: logits, raw maps, heat maps and boxes for given classes."""
        return self.signature(SIGNATURE_CLASS)(
            images=tf.cast(images, tf.float32), class_ids=tf.cast(class_ids, tf.int32)
        )


def _signature_inputs(function) -> dict[str, tf.TensorSpec]:
    return dict(function.structured_input_signature[1])


def predict(model: ExportedModel, request, model_version: int | None = None):
    """Answers a ``PredictRequest`` as TF Serving's Predict API does; returns a ``PredictResponse``.

    The inputs must be exactly the signature's (TF Serving refuses others and
    missing ones); ``output_filter`` keeps only the named outputs.
    """
    from tensorflow_serving.apis import predict_pb2

    name = request.model_spec.signature_name or SIGNATURE_IMAGE_BYTES
    function = model.signature(name)
    expected = _signature_inputs(function)
    given = set(request.inputs)
    if given != set(expected):
        raise ValueError(
            f"signature {name!r} takes the inputs {sorted(expected)}; the request has "
            f"{sorted(given)}"
        )
    inputs = {
        key: tf.constant(tf.make_ndarray(proto), dtype=expected[key].dtype)
        for key, proto in request.inputs.items()
    }
    outputs = function(**inputs)
    wanted = list(request.output_filter) or sorted(outputs)
    unknown = [key for key in wanted if key not in outputs]
    if unknown:
        raise ValueError(f"output_filter names {unknown}; the outputs are {sorted(outputs)}")
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = name
    version = model_version if model_version is not None else model.version
    if version is not None:
        response.model_spec.version.value = version
    for key in wanted:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key].numpy()))
    return response


def _is_value(value: Any) -> bool:
    """A JSON value, not ``{input name: value}`` (``{"b64": ...}`` is a value)."""
    return not isinstance(value, dict) or set(value) == {"b64"}


def _decode_json_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_json_value(v) for v in value]
    return value


def _encode_json_value(name: str, value: np.ndarray) -> Any:
    if value.dtype.kind in ("S", "O"):
        if name.endswith("_bytes"):
            return np.vectorize(
                lambda b: {"b64": base64.b64encode(b).decode("ascii")}, otypes=[object]
            )(value).tolist()
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value).tolist()
    return value.tolist()


def predict_json(model: ExportedModel, body: dict) -> dict:
    """Answers a REST ``:predict`` JSON body as TF Serving does (row or columnar format).

    ``{"signature_name": ..., "instances": [{"image_bytes": {"b64": ...}}, ...]}``
    gives ``{"predictions": [{output: value, ...}, ...]}``;
    ``{"inputs": {"image_bytes": [{"b64": ...}, ...]}}`` gives ``{"outputs": {...}}``.
    """
    name = body.get("signature_name") or SIGNATURE_IMAGE_BYTES
    function = model.signature(name)
    expected = _signature_inputs(function)
    if ("instances" in body) == ("inputs" in body):
        raise ValueError('the body needs exactly one of "instances" (rows) or "inputs" (columns)')
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise ValueError('"instances" must be a non-empty list')
        if len(expected) == 1 and _is_value(rows[0]):
            rows = [{next(iter(expected)): row} for row in rows]
        keys = set(rows[0]) if isinstance(rows[0], dict) else set()
        if any(not isinstance(row, dict) or set(row) != keys for row in rows):
            raise ValueError('every row of "instances" must name the same inputs')
        columns = {key: [_decode_json_value(row[key]) for row in rows] for key in keys}
    else:
        columns = body["inputs"]
        if len(expected) == 1 and _is_value(columns):
            columns = {next(iter(expected)): columns}
        columns = {key: _decode_json_value(value) for key, value in columns.items()}
    if set(columns) != set(expected):
        raise ValueError(
            f"signature {name!r} takes the inputs {sorted(expected)}; the body has "
            f"{sorted(columns)}"
        )
    inputs = {key: tf.constant(columns[key], dtype=expected[key].dtype) for key in expected}
    outputs = {key: value.numpy() for key, value in function(**inputs).items()}
    if "inputs" in body:
        return {"outputs": {key: _encode_json_value(key, v) for key, v in outputs.items()}}
    count = len(next(iter(outputs.values())))
    return {
        "predictions": [
            {key: _encode_json_value(key, value[i]) for key, value in outputs.items()}
            for i in range(count)
        ]
    }
