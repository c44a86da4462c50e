"""Weights: ImageNet offline fails fast and says what to do; local presets load exactly."""

import socket
import time

import keras
import keras_hub
import numpy as np
import pytest
import requests

from wsolkeras import models, roles


def _network_reachable() -> bool:
    try:
        socket.create_connection(("api.kaggle.com", 443), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_network_reachable(), reason="the network is reachable here")
def test_imagenet_offline_fails_fast_with_what_to_do():
    start = time.perf_counter()
    with pytest.raises(models.WeightsUnavailableError) as error:
        models.build("resnet50", "cam", num_classes=3, image_size=64, weights="imagenet")
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"took {elapsed:.1f} s to fail"
    message = str(error.value)
    assert "resnet_50_imagenet" in message
    assert "no network" in message
    assert "--weights=none" in message and "preset_dir" in message


def test_download_errors_become_weights_unavailable(monkeypatch):
    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.VGGBackbone, "from_preset", offline)
    with pytest.raises(models.WeightsUnavailableError, match="vgg_16_imagenet.*--weights=none"):
        models.build("vgg16", "cam", num_classes=3, image_size=32, weights="imagenet")


def test_generic_remote_backbone_offline_says_to_use_a_directory(monkeypatch):
    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(models.WeightsUnavailableError, match="--backbone=/path/to/preset_dir"):
        models.build("efficientnet_b0_ra_imagenet", "cam", num_classes=3, image_size=32)


def test_no_imagenet_preset_or_weights_are_plain_errors():
    with pytest.raises(ValueError, match="no ImageNet preset for 'vit_tiny'"):
        models.build("vit_tiny", "vitol", num_classes=3, image_size=32, weights="imagenet")
    with pytest.raises(ValueError, match="small_cnn has no pretrained weights"):
        models.build("small_cnn", "cam", num_classes=3, image_size=32, weights="imagenet")
    with pytest.raises(ValueError, match="looks like a path but is not a directory"):
        models.build("resnet18", "cam", num_classes=3, image_size=32, weights="./no/such/dir")


def test_directory_that_is_not_a_preset(tmp_path):
    with pytest.raises(ValueError, match="not a readable keras-hub preset"):
        models.build("resnet18", "cam", num_classes=3, image_size=32, weights=str(tmp_path))


def test_local_preset_loads_identical_weights_with_the_protocol_strides(tiny_preset, images):
    preset, saved = tiny_preset("resnet")
    assert saved.stackwise_num_strides == [1, 2, 2, 2]
    x = images(64)
    for large, size in ((False, 4), (True, 8)):
        model = models.build(
            "resnet18",
            "cam",
            num_classes=3,
            image_size=64,
            weights=preset,
            large_feature_map=large,
            adl_positions=None,
        )
        # The saved backbone's weights, each one, under the same layer names.
        ours = {layer.name: layer for layer in model.layers}
        weighted = [layer for layer in saved.layers if layer.weights]
        assert len(weighted) == 40  # stem conv + bn, 8 blocks x (2 convs + 2 bns), 3 shortcuts x 2
        for layer in weighted:
            for theirs, mine in zip(layer.weights, ours[layer.name].weights, strict=True):
                np.testing.assert_array_equal(theirs.numpy(), mine.numpy())
        # layer4 (stack3) at stride 1: output stride 16 at 64 px -> 4x4 (saved: 2x2);
        # large_feature_map: layer3 (stack2) too -> 8x8.
        features = keras.Model(model.input, model.get_layer(roles.FEATURES).output)(x)
        assert features.shape == (4, size, size, 8)
        assert saved(x).shape == (4, 2, 2, 8)
        assert model.get_layer("stack3_block0_1_conv").strides == (1, 1)
        assert model.get_layer("stack2_block0_1_conv").strides == ((1, 1) if large else (2, 2))
        config = model.get_config()
        assert config["weights"] == "none"
        strides = config["backbone_config"]["config"]["stackwise_num_strides"]
        assert strides == ([1, 2, 1, 1] if large else [1, 2, 2, 1])


def test_any_keras_hub_preset_generically(tiny_preset, images):
    preset, saved = tiny_preset("resnet")
    x = images(64)
    model = models.build(preset, "cam", num_classes=5, image_size=64, weights="imagenet")
    # Generic: the preset's own architecture and strides, CAM on its last 4-D map.
    features = keras.Model(model.input, model.get_layer(roles.FEATURES).output)
    np.testing.assert_allclose(features(x), saved(x), rtol=1e-5, atol=1e-5)
    assert model(x).shape == (4, 5)
    random = models.build(
        preset, "adl", num_classes=5, image_size=64, adl_positions=["stack3_block0_out"]
    )
    kernel = random.get_layer("stack0_block0_1_conv").kernel.numpy()
    assert not np.array_equal(kernel, saved.get_layer("stack0_block0_1_conv").kernel.numpy())
    assert random.get_layer("adl_0") is not None


def test_generic_transformer_preset_has_no_feature_map(tiny_preset):
    preset, _ = tiny_preset("vit")
    with pytest.raises(ValueError, match="no 4-D feature map"):
        models.build(preset, "cam", num_classes=3, image_size=32)


def test_recurrent_loads_the_preset_into_both_streams(tiny_preset):
    preset, saved = tiny_preset("resnet")
    model = models.build(
        "resnet18", "recurrent", num_classes=3, image_size=64, weights=preset, recurrent_units=8
    )
    local = model.get_layer("local_backbone")
    for name in ("conv1_conv", "stack1_block0_1_conv", "stack3_block1_2_conv"):
        kernel = saved.get_layer(name).kernel.numpy()
        np.testing.assert_array_equal(model.get_layer(name).kernel.numpy(), kernel)
        np.testing.assert_array_equal(local.get_layer(name).kernel.numpy(), kernel)
    assert model.get_layer(name).kernel is not local.get_layer(name).kernel
