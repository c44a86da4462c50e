"""Fixtures for the models tests: tiny keras-hub presets saved to local directories.

A tiny preset stands in for a downloaded one: `build(..., weights=dir)` loads
it the way it would load ImageNet weights, so the transformer methods train
in seconds (the real ViT-Tiny has 12 blocks).
"""

import keras
import keras_hub
import numpy as np
import pytest

TINY = {
    "resnet": lambda: keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 8, 8, 8],
        stackwise_num_blocks=[2, 2, 2, 2],  # resnet18's, so its layer names exist
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
    ),
    "vit": lambda: keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3),
        patch_size=16,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    ),
    "deit": lambda: keras_hub.models.DeiTBackbone(
        image_shape=(32, 32, 3),
        patch_size=16,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    ),
}


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory):
    """``tiny_preset(family) -> (preset_dir, backbone)``: a random tiny backbone saved once."""
    made = {}

    def make(family: str):
        if family not in made:
            keras.utils.set_random_seed(len(made) + 1)
            backbone = TINY[family]()
            path = tmp_path_factory.mktemp(f"tiny_{family}_preset")
            backbone.save_to_preset(str(path))
            made[family] = (str(path), backbone)
        return made[family]

    return make


@pytest.fixture
def images():
    """``images(size, batch=4, seed=0)``: random float32 images in [0, 1]."""

    def make(size: int, batch: int = 4, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.uniform(0, 1, size=(batch, size, size, 3)).astype(np.float32)

    return make


def _nodes(model: keras.Model):
    """The call nodes of `model`'s own graph (a shared layer has nodes elsewhere too)."""
    return [node for nodes in model._nodes_by_depth.values() for node in nodes]


def inbound(model: keras.Model, name: str) -> list[str]:
    """Names of the layers whose outputs feed layer `name` in `model`'s graph (one call)."""
    calls = [node for node in _nodes(model) if node.operation.name == name]
    assert len(calls) == 1, f"{name!r} is called {len(calls)} times in {model.name!r}"
    return [tensor._keras_history.operation.name for tensor in calls[0].input_tensors]


def consumers(model: keras.Model, name: str) -> list[str]:
    """Names of the layers that take layer `name`'s output in `model`'s graph."""
    return sorted(
        node.operation.name
        for node in _nodes(model)
        if any(t._keras_history.operation.name == name for t in node.input_tensors)
    )


@pytest.fixture
def graph():
    """Graph inspection helpers: ``graph.inbound(model, name)``, ``graph.consumers(...)``."""

    class Graph:
        pass

    helpers = Graph()
    helpers.inbound = inbound
    helpers.consumers = consumers
    return helpers
