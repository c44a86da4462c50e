"""The WSOL protocol's localisation metrics (WSOL_PROTOCOL.md section 1).

* ``BoxEvaluator``: MaxBoxAcc, MaxBoxAccV2, mIoU, Top-1 / GT-known Loc.
* ``MaskEvaluator``: PxAP.
* ``cam_to_scoremap``: raw maps -> the protocol's score maps.

numpy, OpenCV and numba (the box metrics' all-thresholds sweep is compiled; its
first use compiles it, or loads it from ``__pycache__``), no Keras; the numbers
equal those of the protocol's reference implementation (clovaai/wsolevaluation)
on the same maps and boxes.
"""

from wsolkeras.metrics.box import BoxEvaluator
from wsolkeras.metrics.mask import MaskEvaluator
from wsolkeras.metrics.scoremap import cam_to_scoremap, normalize_scoremap

__all__ = ["BoxEvaluator", "MaskEvaluator", "cam_to_scoremap", "normalize_scoremap"]
