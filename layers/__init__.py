"""The four public WSOL layers: ADL, RFGA, PatchADL, RecurrentAttentionHead.

Channels-last, written with `keras.ops` (TensorFlow and JAX backends), and
registered for `.keras` files under the package name "wsolkeras".
"""

from layers.adl import ADL
from layers.patch_adl import PatchADL
from layers.recurrent_attention_head import RecurrentAttentionHead
from layers.rfga import RFGA

__all__ = ["ADL", "RFGA", "PatchADL", "RecurrentAttentionHead"]
