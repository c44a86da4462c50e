"""AttentionEncoder re-runs keras-hub ViT/DeiT blocks exactly and exposes attention."""

import keras
import keras_hub
import numpy as np
import pytest

from wsolkeras import roles, vit

TINY = {"image_shape": (32, 32, 3), "patch_size": 8, "num_layers": 2, "num_heads": 2}


def vit_backbone():
    keras.utils.set_random_seed(1)
    return keras_hub.models.ViTBackbone(**TINY, hidden_dim=32, mlp_dim=64)


def deit_backbone():
    keras.utils.set_random_seed(2)
    return keras_hub.models.DeiTBackbone(**TINY, hidden_dim=32, intermediate_dim=64)


def images(n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("make, prefix", [(vit_backbone, 1), (deit_backbone, 2)])
def test_tokens_equal_the_unmodified_backbone(make, prefix):
    backbone = make()
    encoder = vit.AttentionEncoder(backbone)
    x = images()
    tokens, attentions = encoder(x)
    np.testing.assert_allclose(tokens, backbone(x), atol=1e-5)
    n = prefix + 16
    assert encoder.num_prefix_tokens == prefix and encoder.grid_size == (4, 4)
    assert len(attentions) == 2
    for a in attentions:
        assert tuple(a.shape) == (3, 2, n, n)
        np.testing.assert_allclose(np.sum(a, axis=-1), 1.0, atol=1e-5)  # softmax rows


def test_deit_attention_equals_keras_hub_encoder_scores():
    # DeiTEncoder can return its scores itself: an independent source.
    backbone = deit_backbone()
    x = images()
    _, attentions = vit.AttentionEncoder(backbone)(x)
    embedded = backbone.get_layer("deit_patching_and_embedding")(x)
    _, _, scores = backbone.get_layer("deit_encoder")(embedded, return_attention_scores=True)
    for ours, theirs in zip(attentions, scores, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("make", [vit_backbone, deit_backbone])
def test_after_block_is_applied_after_each_block(make):
    backbone = make()
    x = images()
    encoder = vit.AttentionEncoder(
        backbone, after_block=lambda i: keras.layers.Rescaling(0.5 + i, name=f"scale_{i}")
    )
    tokens, _ = encoder(x)
    # Reference: keras-hub's own block calls with the scaling in between.
    if isinstance(backbone, keras_hub.models.ViTBackbone):
        h = backbone.get_layer("vit_patching_and_embedding")(x)
        enc = backbone.get_layer("vit_encoder")
        for i, block in enumerate(enc.encoder_layers):
            h = block(h) * (0.5 + i)
    else:
        h = backbone.get_layer("deit_patching_and_embedding")(x)
        enc = backbone.get_layer("deit_encoder")
        for i, block in enumerate(enc.encoder_layers):
            h = block(h)[0] * (0.5 + i)
    np.testing.assert_allclose(tokens, enc.layer_norm(h), atol=1e-5)
    assert [layer.name for layer in encoder.after_block_layers] == ["scale_0", "scale_1"]


def test_after_block_list_must_match_blocks():
    with pytest.raises(ValueError, match="one per block"):
        vit.AttentionEncoder(vit_backbone(), after_block=[keras.layers.Identity()])


def test_rejects_other_models():
    with pytest.raises(TypeError, match="ViTBackbone or DeiTBackbone"):
        vit.AttentionEncoder(keras.Sequential([keras.layers.Dense(2)]))


def test_flash_attention_layer_is_refused_clearly():
    backbone = vit_backbone()
    # As if the backbone had been built with MultiHeadAttention(flash_attention=True).
    backbone.get_layer("vit_encoder").encoder_layers[1].mha._flash_attention = True
    with pytest.raises(ValueError, match="disable_flash_attention"):
        vit.AttentionEncoder(backbone)


@pytest.mark.parametrize("make", [vit_backbone, deit_backbone])
def test_classifier_saves_and_loads(tmp_path, make):
    backbone = make()
    model = vit.build_classifier(
        backbone, 5, after_block=lambda i: keras.layers.Rescaling(1.0 + i), pooling="gap"
    )
    assert model.get_layer(roles.ENCODER).num_layers == 2
    assert isinstance(model.get_layer(roles.CLASSIFIER), keras.layers.Dense)
    x = images()
    path = tmp_path / "vit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    # And the weights really came from the file: a fresh build differs.
    fresh = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert np.abs(np.asarray(fresh(x)) - np.asarray(model(x))).max() > 1e-3
    enc = loaded.get_layer(roles.ENCODER)
    assert [type(layer).__name__ for layer in enc.after_block_layers] == ["Rescaling"] * 2


def test_token_pooling():
    tokens = np.random.default_rng(3).normal(size=(2, 6, 4)).astype("float32")
    np.testing.assert_allclose(vit.TokenPooling("token", 2)(tokens), tokens[:, 0])
    np.testing.assert_allclose(
        vit.TokenPooling("gap", 2)(tokens), tokens[:, 2:].mean(axis=1), rtol=1e-6
    )
    with pytest.raises(ValueError, match="'token' or 'gap'"):
        vit.TokenPooling("max")
