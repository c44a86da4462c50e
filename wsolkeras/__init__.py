"""wsolkeras: weakly supervised object localization for Keras 3 / TensorFlow.

Subpackages: ``data`` (tf.data pipeline), ``models`` (backbones + WSOL
methods), ``extractors`` (CAM, Grad-CAM family, rollouts), ``losses``
(attention-guided losses), ``metrics`` (the WSOL protocol's evaluators).
"""

__version__ = "0.1.0"
