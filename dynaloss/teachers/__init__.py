"""Teacher models: what turns the DLN's hypergradient into a DLN update."""

from __future__ import annotations

from dynaloss.teachers.base import TeacherModel
from dynaloss.teachers.lstm import LSTMTeacher, preprocess_gradient
from dynaloss.teachers.optim import OPTIMIZER_TEACHERS, OptimizerTeacher

__all__ = [
    "OPTIMIZER_TEACHERS",
    "LSTMTeacher",
    "OptimizerTeacher",
    "TeacherModel",
    "make_teacher_model",
    "preprocess_gradient",
]

TEACHER_KINDS = ("lstm", *OPTIMIZER_TEACHERS)


def make_teacher_model(teacher: str | TeacherModel) -> TeacherModel:
    """A teacher model from its name (``'lstm'``, ``'adam'``, ``'sgd'``, ``'rmsprop'``) or as given."""
    if isinstance(teacher, TeacherModel):
        return teacher
    if teacher == "lstm":
        return LSTMTeacher()
    if isinstance(teacher, str) and teacher in OPTIMIZER_TEACHERS:
        return OptimizerTeacher(teacher)
    raise ValueError(f"teacher must be one of {TEACHER_KINDS} or a TeacherModel, got {teacher!r}")
