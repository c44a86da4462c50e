"""The four public WSOL layers: ADL, RFGA, PatchADL, RecurrentAttentionHead."""
