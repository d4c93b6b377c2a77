"""L2T-DLN for ultralytics YOLO detectors (``pip install dynaloss[ultralytics]``).

:class:`DLNDetectionTrainer` is ultralytics' ``DetectionTrainer`` with the DLN's criterion and teacher rounds;
:class:`DLNDetectionLoss` is that criterion, ultralytics' box/cls/dfl parts (:data:`PART_NAMES`) weighted by
a :class:`dynaloss.MultiPartDLN`, and :class:`DetectionObjective` its DLN-weighted objective as a teacher
round evaluates it.

Importing this module sets ``YOLO_OFFLINE=1`` (unless you set it) *before* it imports ultralytics, whose
import otherwise probes the network; see :mod:`dynaloss.integrations.ultralytics.offline`.
"""

from dynaloss.integrations.ultralytics.offline import prefer_offline

prefer_offline()

from dynaloss.integrations.ultralytics.loss import PART_NAMES, DetectionObjective, DLNDetectionLoss  # noqa: E402
from dynaloss.integrations.ultralytics.trainer import DLNDetectionTrainer  # noqa: E402

__all__ = ["PART_NAMES", "DLNDetectionLoss", "DLNDetectionTrainer", "DetectionObjective"]
