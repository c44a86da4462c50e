"""A train run's directory, read back: its config, its model, its step and tau.

``python -m apps.train`` writes ``config.json`` (its flags and the resolved
config: classes, normalisation, extractor, tau, ...) and ``model.keras`` into
its ``--model_dir``; evaluate, export and extract need nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import keras

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"


class RunError(ValueError):
    """A model_dir that cannot be used; the message says what is missing and what to do."""


@dataclasses.dataclass
class Run:
    """A trained run: its directory, config and model."""

    model_dir: str
    config: dict
    model: keras.Model
    step: int

    @property
    def image_size(self) -> int:
        return int(self.config.get("image_size") or self.config["crop_size"])

    @property
    def normalization(self) -> str:
        return self.config["normalization"]

    @property
    def extractor(self) -> str:
        return self.config.get("extractor") or "cam"

    @property
    def class_names(self) -> list[str]:
        names = self.config.get("class_names")
        return list(names) if names else [str(i) for i in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        return int(self.model.output_shape[-1])

    @property
    def tau(self) -> float | None:
        """The threshold chosen on the tau split by the train app (None before it finished)."""
        tau = self.config.get("tau")
        return None if tau is None else float(tau)

    def choose_tau(self, extractor: str, tau: float | None = None) -> float:
        """``tau`` when given, else the run's, which fits only the run's own extractor.

        Raises :class:`RunError` saying what to pass when there is none to use.
        """
        if tau is not None and tau >= 0:
            return float(tau)
        if extractor != self.extractor:
            raise RunError(
                f"the run's tau was chosen on {self.extractor} maps, not {extractor} maps: "
                f"pass --tau (python -m apps.evaluate --model_dir={self.model_dir} "
                f"--extractor={extractor} --split=val reports the tau for them)"
            )
        if self.tau is None:
            raise RunError(
                f"--model_dir={self.model_dir} records no tau (the train app writes it after "
                "its final evaluation): let the run finish, or pass --tau"
            )
        return self.tau


def read_config(model_dir: str) -> dict:
    """``<model_dir>/config.json``; :class:`RunError` naming the flag when it is not there."""
    if not os.path.isdir(model_dir):
        raise RunError(
            f"--model_dir={model_dir} does not exist: pass the --model_dir of a "
            "python -m apps.train run"
        )
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise RunError(
            f"--model_dir={model_dir} has no {CONFIG_FILE}: it is not the directory of a "
            "python -m apps.train run"
        )
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON ({error})") from None


def load_run(model_dir: str, model_file: str | None = None) -> Run:
    """Loads a run's config and model (``model.keras``, or ``model_file`` inside or outside it).

    The step is the model's optimizer step count when it was saved with its
    optimizer (the train app does), else the config's ``total_steps``.
    """
    config = read_config(model_dir)
    name = model_file or config.get("model_file") or MODEL_FILE
    path = name if os.path.isabs(name) else os.path.join(model_dir, name)
    if not os.path.exists(path):
        raise RunError(
            f"--model_dir={model_dir} has no {name}: the run has not finished training. "
            "Let python -m apps.train finish (run the same command again to resume it)"
        )
    # Registers the models' and the training schedule's classes for loading.
    import wsolkeras.models  # noqa: F401
    import wsolkeras.training  # noqa: F401

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = keras.models.load_model(path)
        except (TypeError, ValueError):
            # An optimizer that cannot be rebuilt is not needed to predict.
            model = keras.models.load_model(path, compile=False)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        step = int(optimizer.iterations.numpy())
    else:
        step = int(config.get("total_steps", 0))
    return Run(model_dir=model_dir, config=config, model=model, step=step)
