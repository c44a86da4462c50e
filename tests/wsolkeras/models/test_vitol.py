"""Method vitol: p-ADL after every block, the classifier on the class token, GAR maps."""

import keras
import numpy as np
import pytest

from layers import PatchADL
from wsolkeras import models, roles
from wsolkeras.vit import AttentionEncoder


@pytest.mark.parametrize(("backbone", "prefix"), [("vit_tiny", 1), ("deit_tiny", 2)])
def test_real_config_has_patch_adl_after_every_block(backbone, prefix, images):
    model = models.build(backbone, "vitol", num_classes=3, image_size=32, adl_drop_rate=0.5)
    encoder = model.get_layer(roles.ENCODER)
    assert isinstance(encoder, AttentionEncoder)
    assert encoder.num_layers == 12 and encoder.num_prefix_tokens == prefix
    after = encoder.after_block_layers
    assert len(after) == 12 and all(isinstance(layer, PatchADL) for layer in after)
    assert [(layer.drop_rate, layer.drop_threshold) for layer in after] == [(0.5, 0.9)] * 12
    assert model.get_layer(roles.CLASSIFIER).kernel.shape == (192, 3)
    assert model(images(32, batch=2)).shape == (2, 3)


@pytest.mark.parametrize("family", ["vit", "deit"])
def test_classifier_reads_the_class_token(family, tiny_preset, images):
    preset, saved = tiny_preset(family)
    model = models.build(f"{family}_tiny", "vitol", num_classes=4, image_size=32, weights=preset)
    x = images(32, batch=2)
    # At inference p-ADL is the identity: logits = Dense(backbone tokens[:, 0]).
    tokens = keras.ops.convert_to_numpy(saved(x))
    dense = model.get_layer(roles.CLASSIFIER)
    expected = tokens[:, 0] @ dense.kernel.numpy() + dense.bias.numpy()
    np.testing.assert_allclose(model(x), expected, rtol=1e-4, atol=1e-5)
    # In training the blocks' outputs go through p-ADL: with drop_rate 0 each
    # token is scaled by its importance sigmoid(mean), which changes the logits.
    dropping = models.build(
        f"{family}_tiny",
        "vitol",
        num_classes=4,
        image_size=32,
        weights=preset,
        adl_drop_rate=0.0,
    )
    assert not np.allclose(dropping(x, training=True), dropping(x, training=False))


def test_gar_extractor_finds_the_encoder(tiny_preset, images):
    extractors = pytest.importorskip("wsolkeras.extractors")
    preset, _ = tiny_preset("deit")
    model = models.build("deit_tiny", "vitol", num_classes=4, image_size=32, weights=preset)
    maps = extractors.get(models.default_extractor("vitol"), model)(images(32, batch=2))
    assert maps.shape == (2, 2, 2)
    assert np.all(np.isfinite(maps))
