"""dynaloss: learnable training losses that a teacher adapts while your model trains (L2T-DLN)."""

from dynaloss.losses import MultiPartDLN, PairwiseDLN
from dynaloss.presets import PRESETS, pairwise_teacher
from dynaloss.teacher import MODES, RoundRecord, Teacher
from dynaloss.teachers import LSTMTeacher, OptimizerTeacher, TeacherModel
from dynaloss.unroll import hypergradient

__all__ = [
    "MODES",
    "PRESETS",
    "LSTMTeacher",
    "MultiPartDLN",
    "OptimizerTeacher",
    "PairwiseDLN",
    "RoundRecord",
    "Teacher",
    "TeacherModel",
    "hypergradient",
    "pairwise_teacher",
]

__version__ = "0.1.0"
