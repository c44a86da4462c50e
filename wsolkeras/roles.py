"""Names of the layers that give a WSOL model's parts their roles.

Models built by :mod:`wsolkeras.models` name these layers so, and the
extractors and losses find them by name; names survive `.keras` files and
SavedModels where Python attributes would not.
"""

FEATURES = "wsol_features"
"""Output: the feature map ``[B, h, w, C]`` the CAM is computed from."""

CLASSIFIER = "wsol_classifier"
"""The ``Dense`` layer that gives logits from the pooled ``FEATURES``."""

INNER_FEATURES = "wsol_inner_features"
"""Optional inner feature map, for the inner-layer attention losses."""

ENCODER = "wsol_encoder"
"""ViT models: the encoder that also returns each block's attention probabilities."""
