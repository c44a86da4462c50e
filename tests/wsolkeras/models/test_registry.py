"""The registry of backbones and methods, and the errors for names that are not in it."""

import keras_hub
import pytest

from wsolkeras import data, models
from wsolkeras.models import registry


def test_names_of_the_api():
    assert set(models.BACKBONES) == {
        "small_cnn",
        "resnet18",
        "resnet50",
        "vgg16",
        "vit_tiny",
        "vit_small",
        "vit_base",
        "deit_tiny",
        "deit_small",
        "deit_base",
    }
    assert models.METHODS == ("cam", "adl", "rfga", "vitol", "recurrent")


@pytest.mark.parametrize(
    ("name", "width", "heads"),
    [("tiny", 192, 3), ("small", 384, 6), ("base", 768, 12)],
)
@pytest.mark.parametrize("family", ["vit", "deit"])
def test_transformer_sizes(family, name, width, heads):
    # Dosovitskiy et al. / Touvron et al.: 12 blocks, MLP 4x the width, patch 16.
    config = models.BACKBONE_SPECS[f"{family}_{name}"].config
    mlp = config["mlp_dim"] if family == "vit" else config["intermediate_dim"]
    assert (config["hidden_dim"], config["num_heads"], config["num_layers"]) == (width, heads, 12)
    assert (mlp, config["patch_size"]) == (4 * width, 16)


def test_imagenet_presets_are_keras_hub_presets():
    known = keras_hub.models.Backbone.presets
    for spec in models.BACKBONE_SPECS.values():
        if spec.imagenet_preset is not None:
            assert spec.imagenet_preset in known, spec.name
            assert spec.imagenet_preset in getattr(keras_hub.models, spec.keras_hub_class).presets
    assert models.BACKBONE_SPECS["resnet50"].imagenet_preset == "resnet_50_imagenet"
    assert models.BACKBONE_SPECS["vgg16"].imagenet_preset == "vgg_16_imagenet"
    assert (
        models.BACKBONE_SPECS["deit_base"].imagenet_preset
        == "deit_base_distilled_patch16_224_imagenet"
    )


def test_normalizations_are_the_pipelines():
    for name in models.BACKBONES:
        assert models.normalization(name) in data.NORMALIZATIONS, name


def test_normalization_and_default_extractor():
    assert models.normalization("resnet50") == "imagenet"
    assert models.normalization("vit_base") == "symmetric"
    assert models.normalization("deit_small") == "imagenet"
    assert models.normalization("small_cnn") == "unit"
    assert models.default_extractor("adl") == "cam"
    assert models.default_extractor("recurrent") == "cam"
    assert models.default_extractor("vitol") == "gar"


def test_protocol_adl_positions():
    specs = models.BACKBONE_SPECS
    # layer3 block 0, layer4 blocks 0 and 2 (keras-hub's stack2 = layer3).
    assert specs["resnet50"].adl_positions == (
        "stack2_block0_out",
        "stack3_block0_out",
        "stack3_block2_out",
    )
    # pool3, conv4_3, conv5_3.
    assert specs["vgg16"].adl_positions == ("block3_pool", "block4_conv3", "block5_conv3")
    assert registry.RESNET_STRIDES == {False: [1, 2, 2, 1], True: [1, 2, 1, 1]}


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown backbone 'resnet51'") as error:
        models.build("resnet51", "cam", num_classes=3, image_size=32)
    for name in models.BACKBONES:
        assert name in str(error.value)
    assert "preset" in str(error.value)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown method 'gradcam'") as error:
        models.build("small_cnn", "gradcam", num_classes=3, image_size=32)
    for name in models.METHODS:
        assert name in str(error.value)
    with pytest.raises(ValueError, match="Unknown method"):
        models.default_extractor("gradcam")


def test_unknown_attention_loss_lists_the_valid_ones():
    with pytest.raises(ValueError, match="none, sharpen_focus"):
        models.build("small_cnn", "cam", num_classes=3, image_size=32, attention_loss="sharp")


@pytest.mark.parametrize(
    ("backbone", "method", "message"),
    [
        ("vit_tiny", "cam", "use method='vitol'"),
        ("deit_tiny", "adl", "use method='vitol'"),
        ("small_cnn", "vitol", "needs a ViT/DeiT backbone"),
        ("small_cnn", "recurrent", "sharpen_focus' applies to"),
        ("small_cnn", "adl", "needs adl_positions"),
        ("vit_tiny", "vitol", "multiple of the patch size 16"),
    ],
)
def test_combinations_that_do_not_fit(backbone, method, message):
    kwargs = {}
    if method == "recurrent":
        kwargs["attention_loss"] = "sharpen_focus"
    if message == "needs adl_positions":
        kwargs["adl_positions"] = []
    size = 40 if "patch size" in message else 32
    with pytest.raises(ValueError, match=message):
        models.build(backbone, method, num_classes=3, image_size=size, **kwargs)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("num_classes", 0),
        ("image_size", 2.5),
        ("adl_drop_rate", 1.5),
        ("recurrent_fusion_weights", (1.0,)),
        ("recurrent_crop_threshold", 1.0),
    ],
)
def test_bad_numbers_name_the_argument(argument, value):
    with pytest.raises(ValueError, match=argument):
        models.build(**{"backbone": "small_cnn", "method": "cam", argument: value})
