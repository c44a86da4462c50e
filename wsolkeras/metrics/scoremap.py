"""From raw class activation maps to the protocol's score maps, and their checks.

WSOL_PROTOCOL.md section 1: the raw map is upsampled to the evaluation size with
OpenCV's bicubic (``cv2.INTER_CUBIC``) in float64 -- the reference casts the
model's output to float64 before ``cv2.resize`` -- and then min-max normalised
per image; a map with NaN or a constant map becomes all zeros.
"""

from __future__ import annotations

import cv2
import numpy as np


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        height = width = int(size)
    else:
        try:
            height, width = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


def normalize_scoremap(scoremap: np.ndarray) -> np.ndarray:
    """Min-max normalises one map to [0, 1] as the protocol does, in float64.

    ``(m - min) / max(m - min)``; a map with a NaN or an infinite value, or a
    constant map, gives all zeros. (The reference only tests for NaN; an
    infinite value would leave NaN in its output and fail its own validity
    check, so zeros is the protocol's defined outcome for any non-finite map.)
    """
    out = np.array(scoremap, dtype=np.float64)
    if not np.isfinite(out).all() or out.min() == out.max():
        return np.zeros_like(out)
    out -= out.min()
    out /= out.max()
    return out


def cam_to_scoremap(cams: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Upsamples raw maps and normalises each one, exactly as the protocol.

    Args:
      cams: raw maps ``[B, h, w]`` (or one map ``[h, w]``), any real dtype,
        not normalised (negative values allowed).
      size: evaluation size, an int (square) or ``(height, width)``.

    Returns:
      float64 score maps ``[B, height, width]`` (or ``[height, width]``) in [0, 1].
      Each map is resized with ``cv2.resize(cam.astype(float64), (width,
      height), interpolation=cv2.INTER_CUBIC)`` (Keys kernel, a = -0.75) and then
      passed through :func:`normalize_scoremap`.
    """
    arr = np.asarray(cams)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"cams must have shape [B, h, w] or [h, w], got {np.shape(cams)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"cams must be real numbers, got dtype {arr.dtype}")
    height, width = _size(size)
    out = np.empty((arr.shape[0], height, width), np.float64)
    for i, cam in enumerate(arr):
        resized = cv2.resize(
            np.ascontiguousarray(cam, dtype=np.float64),
            (width, height),
            interpolation=cv2.INTER_CUBIC,
        )
        out[i] = normalize_scoremap(resized.reshape(height, width))
    return out[0] if single else out


def prepare_scoremaps(scoremaps: np.ndarray, name: str = "scoremaps") -> np.ndarray:
    """Checks evaluator input and applies the protocol's rules for degenerate maps.

    Returns float64 ``[B, H, W]``: maps with a NaN or infinite value, and
    constant maps, become all zeros (what the protocol's normalisation makes of
    them); other maps must lie in [0, 1].

    Raises:
      ValueError: wrong rank, an empty map, or values outside [0, 1].
    """
    arr = np.asarray(scoremaps)
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"{name} must have shape [B, H, W] with H, W > 0, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    # The reference evaluates float64 maps (it casts its inputs with .astype(np.float)).
    out = np.array(arr, dtype=np.float64)
    flat = out.reshape(out.shape[0], -1)
    finite = np.isfinite(flat).all(axis=1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    degenerate = ~finite | (lo == hi)
    bad = ~degenerate & ((lo < 0) | (hi > 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}[{i}] has values in [{lo[i]}, {hi[i]}], outside [0, 1]; normalise raw "
            "maps with wsolkeras.metrics.cam_to_scoremap first"
        )
    out[degenerate] = 0.0
    return out


def quantize(scoremaps: np.ndarray) -> np.ndarray:
    """The protocol's ``uint8(s * 255)`` (truncation) of float64 maps in [0, 1]."""
    return (scoremaps * 255.0).astype(np.uint8)
