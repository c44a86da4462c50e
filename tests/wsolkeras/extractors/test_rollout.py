"""Attention rollout and grad attention rollout against numpy matrix products.

The per-block attention and its gradient are obtained without AttentionEncoder:
for DeiT from keras-hub's own DeiTEncoder(return_attention_scores=True), for
ViT by recording the scores inside the unmodified keras-hub backbone's
MultiHeadAttention layers.
"""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from wsolkeras import extractors, roles, vit

TINY = {"image_shape": (32, 32, 3), "patch_size": 8, "num_layers": 2, "num_heads": 2}


def np_rollout(blocks, prefix):
    """blocks: per-block [N, N] head-averaged matrices, first block first."""
    n = blocks[0].shape[0]
    rolled = np.eye(n)
    for abar in blocks:
        a = abar + np.eye(n)
        a = a / a.sum(axis=1, keepdims=True)
        rolled = a @ rolled  # R = Abar_L ... Abar_1
    return rolled[0, prefix:].reshape(4, 4)


def deit_per_image(model, image, cls):
    backbone = model.get_layer(roles.ENCODER).backbone
    with tf.GradientTape() as tape:
        x = tf.constant(image[None])
        embedded = backbone.get_layer("deit_patching_and_embedding")(x)
        tokens, _, scores = backbone.get_layer("deit_encoder")(
            embedded, return_attention_scores=True
        )
        logit = model.get_layer(roles.CLASSIFIER)(tokens[:, 0])[0, cls]
    grads = tape.gradient(logit, list(scores))
    return [s[0].numpy() for s in scores], [g[0].numpy() for g in grads]


def vit_per_image(model, image, cls, monkeypatch):
    backbone = model.get_layer(roles.ENCODER).backbone
    recorded = []
    for block in backbone.get_layer("vit_encoder").encoder_layers:
        original = block.mha._compute_attention

        def recording(
            query,
            key,
            value,
            attention_mask=None,
            training=None,
            return_attention_scores=False,
            use_causal_mask=False,
            _orig=original,
        ):
            out, scores = _orig(
                query,
                key,
                value,
                attention_mask,
                training,
                return_attention_scores=True,
                use_causal_mask=use_causal_mask,
            )
            recorded.append(scores)
            return out, scores

        monkeypatch.setattr(block.mha, "_compute_attention", recording)
    with tf.GradientTape() as tape:
        tokens = backbone(tf.constant(image[None]))  # keras-hub's own forward pass
        logit = model.get_layer(roles.CLASSIFIER)(tokens[:, 0])[0, cls]
    grads = tape.gradient(logit, recorded)
    monkeypatch.undo()
    return [s[0].numpy() for s in recorded], [g[0].numpy() for g in grads]


@pytest.fixture(scope="module")
def deit_model():
    keras.utils.set_random_seed(11)
    backbone = keras_hub.models.DeiTBackbone(**TINY, hidden_dim=32, intermediate_dim=64)
    return vit.build_classifier(backbone, 5)


@pytest.fixture(scope="module")
def vit_model():
    keras.utils.set_random_seed(12)
    backbone = keras_hub.models.ViTBackbone(**TINY, hidden_dim=32, mlp_dim=64)
    return vit.build_classifier(backbone, 5)


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(13).normal(size=(3, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("family", ["vit", "deit"])
def test_rollouts_equal_numpy(family, vit_model, deit_model, batch, monkeypatch):
    model, prefix = (vit_model, 1) if family == "vit" else (deit_model, 2)
    classes = np.array([4, 0, 2])
    gar = extractors.get("gar", model)(batch, classes).numpy()
    rollout = extractors.get("rollout", model)(batch, classes).numpy()
    assert gar.shape == rollout.shape == (3, 4, 4)
    for i, c in enumerate(classes):
        if family == "vit":
            attentions, grads = vit_per_image(model, batch[i], c, monkeypatch)
        else:
            attentions, grads = deit_per_image(model, batch[i], c)
        assert len(attentions) == 2 and attentions[0].shape == (2, 16 + prefix, 16 + prefix)
        expected_gar = np_rollout(
            [np.maximum(a * g, 0).mean(axis=0) for a, g in zip(attentions, grads, strict=True)],
            prefix,
        )
        expected_ar = np_rollout([a.mean(axis=0) for a in attentions], prefix)
        np.testing.assert_allclose(gar[i], expected_gar, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(rollout[i], expected_ar, rtol=1e-4, atol=1e-7)
    # GAR depends on the class, AR does not.
    assert not np.allclose(gar, extractors.get("gar", model)(batch, [1, 1, 1]))
    np.testing.assert_allclose(rollout, extractors.get("rollout", model)(batch, [1, 1, 1]))


def test_gar_batched_equals_per_image_and_traces_once(deit_model, batch):
    extractor = extractors.get("gar", deit_model)
    classes = np.array([3, 1, 0])
    together = extractor(batch, classes).numpy()
    alone = np.concatenate([extractor(batch[i : i + 1], classes[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-8)
    extractor(batch[:2])
    assert extractor.trace_count == 1


def test_rollout_needs_an_attention_encoder():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match="gar needs attention probabilities.*no layer named"):
        extractors.get("gar", model)
    with pytest.raises(ValueError, match="has a Conv2D named 'conv'"):
        extractors.get("rollout", model, layer="conv")
