"""dynaloss: learnable training losses that a teacher adapts while your model trains (L2T-DLN)."""

from dynaloss._streams import forever
from dynaloss._unroll import hypergradient
from dynaloss.losses import ClassAwareDLN, MultiPartDLN, PairwiseDLN
from dynaloss.presets import PRESETS, pairwise_teacher
from dynaloss.teacher import MODES, RoundRecord, Teacher, teaching_defaults
from dynaloss.teachers import LSTMTeacher, OptimizerTeacher, TeacherModel

__all__ = [
    "MODES",
    "PRESETS",
    "ClassAwareDLN",
    "LSTMTeacher",
    "MultiPartDLN",
    "OptimizerTeacher",
    "PairwiseDLN",
    "RoundRecord",
    "Teacher",
    "TeacherModel",
    "forever",
    "hypergradient",
    "pairwise_teacher",
    "teaching_defaults",
]

__version__ = "0.1.0"
