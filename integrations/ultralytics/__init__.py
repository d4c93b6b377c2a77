"""L2T-DLN for ultralytics YOLO detectors (``pip install dynaloss[ultralytics]``).

Importing this module sets ``YOLO_OFFLINE=1`` (unless you set it) *before* it imports ultralytics, whose
import otherwise probes the network; see :mod:`dynaloss.integrations.ultralytics.offline`.
"""

from dynaloss.integrations.ultralytics.offline import prefer_offline

prefer_offline()

from dynaloss.integrations.ultralytics.configs import scaled_config, write_scaled_config  # noqa: E402
from dynaloss.integrations.ultralytics.loss import PART_NAMES, DetectionObjective, DLNDetectionLoss, loss_gains  # noqa: E402
from dynaloss.integrations.ultralytics.runs import ARMS, train_yolo  # noqa: E402
from dynaloss.integrations.ultralytics.targets import pad_targets, unpad_targets  # noqa: E402
from dynaloss.integrations.ultralytics.trainer import CHECKPOINT_KEY, DLNDetectionTrainer  # noqa: E402

__all__ = [
    "ARMS",
    "CHECKPOINT_KEY",
    "PART_NAMES",
    "DLNDetectionLoss",
    "DLNDetectionTrainer",
    "DetectionObjective",
    "loss_gains",
    "pad_targets",
    "scaled_config",
    "train_yolo",
    "unpad_targets",
    "write_scaled_config",
]
