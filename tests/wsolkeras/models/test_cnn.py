"""CNN backbones in WSOL models: strides, ADL / RFGA / inner-layer positions, roles, CAM."""

import keras
import numpy as np
import pytest

from layers import ADL, RFGA
from wsolkeras import models, roles


def feature_model(model: keras.Model) -> keras.Model:
    return keras.Model(model.input, model.get_layer(roles.FEATURES).output)


def test_small_cnn_output_stride_8_and_roles(images):
    model = models.build("small_cnn", "cam", num_classes=4, image_size=96)
    x = images(96, batch=2)
    assert feature_model(model)(x).shape == (2, 12, 12, 64)
    assert model(x).shape == (2, 4)
    assert isinstance(model.get_layer(roles.CLASSIFIER), keras.layers.Dense)
    assert model.get_layer(roles.CLASSIFIER).kernel.shape == (64, 4)
    assert model.get_layer(roles.INNER_FEATURES).output.shape == (None, 12, 12, 64)


def test_resnet50_protocol_structure_at_64px(images, graph):
    x = images(64, batch=2)
    model = models.build("resnet50", "adl", num_classes=5, image_size=64)
    # The real ResNet50: 3 + 4 + 6 + 3 bottleneck blocks, 2048 channels.
    names = [layer.name for layer in model.layers]
    blocks = [n for n in names if n.startswith("stack") and n.endswith("_out")]
    assert len(blocks) == 16
    # layer4 at stride 1: output stride 16 -> 4x4 at 64 px.
    assert feature_model(model)(x).shape == (2, 4, 4, 2048)
    assert model.get_layer("stack3_block0_2_conv").strides == (1, 1)
    assert model.get_layer("stack3_block0_0_conv").strides == (1, 1)
    assert model.get_layer("stack2_block0_2_conv").strides == (2, 2)
    # ADL after layer3 block 0 and after layer4 blocks 0 and 2.
    adls = [layer for layer in model.layers if isinstance(layer, ADL)]
    assert [graph.inbound(model, a.name) for a in adls] == [
        ["stack2_block0_out"],
        ["stack3_block0_out"],
        ["stack3_block2_out"],
    ]
    assert all((a.drop_rate, a.drop_threshold) == (0.75, 0.9) for a in adls)
    # Every consumer of the block output now reads ADL's output instead.
    assert graph.consumers(model, "stack2_block0_out") == ["adl_0"]
    assert graph.consumers(model, "adl_0") == ["stack2_block1_1_conv", "stack2_block1_add"]
    assert graph.inbound(model, roles.FEATURES) == ["adl_2"]
    # "Sharpen Focus" inner layer: the end of the penultimate stage (layer3).
    assert graph.inbound(model, roles.INNER_FEATURES) == ["stack2_block5_out"]
    assert model(x).shape == (2, 5)


def test_resnet50_large_feature_map(images):
    model = models.build("resnet50", "cam", num_classes=5, image_size=64, large_feature_map=True)
    assert feature_model(model)(images(64, batch=1)).shape == (1, 8, 8, 2048)
    assert not any(isinstance(layer, ADL) for layer in model.layers)


def test_resnet18_positions(images, graph):
    model = models.build("resnet18", "adl", num_classes=3, image_size=64)
    assert feature_model(model)(images(64, batch=1)).shape == (1, 4, 4, 512)
    inbound = [graph.inbound(model, f"adl_{i}")[0] for i in range(3)]
    assert inbound == ["stack2_block0_out", "stack3_block0_out", "stack3_block1_out"]
    assert graph.inbound(model, roles.INNER_FEATURES) == ["stack2_block1_out"]


def test_vgg16_protocol_structure(images, graph):
    model = models.build("vgg16", "adl", num_classes=3, image_size=32)
    names = [layer.name for layer in model.layers]
    assert "block5_pool" not in names and "block4_pool" in names
    # pool5 removed: output stride 16; conv6 is 3x3, 1024 channels, ReLU.
    conv6 = model.get_layer("conv6")
    assert (conv6.filters, conv6.kernel_size, conv6.activation) == (
        1024,
        (3, 3),
        keras.activations.relu,
    )
    assert feature_model(model)(images(32, batch=1)).shape == (1, 2, 2, 1024)
    # ADL after pool3, conv4_3 and conv5_3; conv6 reads the last ADL. At
    # conv4_3 the inner-feature identity (the raw map) comes first, then ADL.
    inbound = [graph.inbound(model, f"adl_{i}")[0] for i in range(3)]
    assert inbound == ["block3_pool", roles.INNER_FEATURES, "block5_conv3"]
    assert graph.inbound(model, roles.INNER_FEATURES) == ["block4_conv3"]
    assert graph.inbound(model, "conv6") == ["adl_2"]
    assert graph.consumers(model, "adl_1") == ["block4_pool"]


def test_small_cnn_default_and_custom_adl_positions(graph):
    model = models.build("small_cnn", "adl", num_classes=3, image_size=32)
    inbound = [graph.inbound(model, f"adl_{i}")[0] for i in range(3)]
    assert inbound == ["block2_pool", roles.INNER_FEATURES, "block4_relu"]
    assert graph.inbound(model, roles.INNER_FEATURES) == ["block3_relu"]
    custom = models.build(
        "small_cnn", "adl", num_classes=3, image_size=32, adl_positions="block1_pool,block4_relu"
    )
    assert [graph.inbound(custom, f"adl_{i}")[0] for i in range(2)] == [
        "block1_pool",
        "block4_relu",
    ]
    with pytest.raises(ValueError, match=r"Unknown adl_positions \['block9'\].*block4_relu"):
        models.build("small_cnn", "adl", num_classes=3, image_size=32, adl_positions=["block9"])


def test_rfga_right_before_pooling(graph):
    model = models.build(
        "small_cnn", "rfga", num_classes=3, image_size=32, rfga_expand_activation=None
    )
    rfga = model.get_layer("rfga")
    assert isinstance(rfga, RFGA)
    assert (rfga.kernel_size, rfga.residual, rfga.expand_activation) == (3, True, None)
    assert graph.inbound(model, "rfga") == ["block4_relu"]
    assert graph.inbound(model, roles.FEATURES) == ["rfga"]
    assert graph.inbound(model, "gap") == [roles.FEATURES]
    assert graph.inbound(model, roles.CLASSIFIER) == ["gap"]


def test_cam_head_is_gap_then_linear(images):
    model = models.build("small_cnn", "cam", num_classes=3, image_size=32)
    x = images(32)
    features = keras.ops.convert_to_numpy(feature_model(model)(x))
    dense = model.get_layer(roles.CLASSIFIER)
    kernel, bias = dense.kernel.numpy(), dense.bias.numpy()
    expected = features.mean(axis=(1, 2)) @ kernel + bias
    np.testing.assert_allclose(model(x), expected, rtol=1e-4, atol=1e-5)


def test_cam_extractor_finds_the_roles(images):
    extractors = pytest.importorskip("wsolkeras.extractors")
    model = models.build("resnet18", "adl", num_classes=3, image_size=64)
    x = images(64, batch=2)
    features = keras.ops.convert_to_numpy(feature_model(model)(x))
    kernel = model.get_layer(roles.CLASSIFIER).kernel.numpy()
    classes = np.array([2, 0])
    expected = np.einsum("bhwk,kb->bhw", features, kernel[:, classes])
    maps = extractors.get("cam", model)(x, classes=classes)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["cam", "adl", "rfga", "recurrent"])
@pytest.mark.parametrize(
    ("backbone", "channels"),
    [("small_cnn", 64), ("resnet18", 512), ("resnet50", 2048), ("vgg16", 1024)],
)
def test_every_cnn_backbone_with_every_cnn_method(backbone, channels, method, images):
    model = models.build(backbone, method, num_classes=3, image_size=32, recurrent_units=8)
    x = images(32, batch=2)
    assert model(x).shape == (2, 3)
    stride = 8 if backbone == "small_cnn" else 16
    assert model.get_layer(roles.FEATURES).output.shape == (
        None,
        32 // stride,
        32 // stride,
        channels,
    )
    assert model.get_layer(roles.CLASSIFIER).kernel.shape == (channels, 3)
    assert model.get_layer(roles.INNER_FEATURES) is not None


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vit_small", "vit_base", "deit_small", "deit_base"])
def test_larger_transformers_build(backbone, images):
    model = models.build(backbone, "vitol", num_classes=3, image_size=32)
    width = models.BACKBONE_SPECS[backbone].config["hidden_dim"]
    assert model.get_layer(roles.CLASSIFIER).kernel.shape == (width, 3)
    assert model(images(32, batch=1)).shape == (1, 3)
