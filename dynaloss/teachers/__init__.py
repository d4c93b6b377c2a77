"""Teacher models: what turns the DLN's hypergradient into a DLN update."""

from __future__ import annotations

from typing import Any

from dynaloss.settings import TEACHER_KINDS
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


def make_teacher_model(teacher: str | TeacherModel, **options: Any) -> TeacherModel:
    """A teacher model from its name (``'lstm'``, ``'adam'``, ``'sgd'``, ``'rmsprop'``) and options, or as given.

    Args:
        teacher: a name of :data:`dynaloss.settings.TEACHER_KINDS`, or a :class:`TeacherModel` (returned as is).
        **options: the named model's arguments (e.g. :class:`LSTMTeacher`'s ``output_sign``).
    """
    if isinstance(teacher, TeacherModel):
        if options:
            raise ValueError(
                f"teacher is a {type(teacher).__name__} already built: options {sorted(options)} do not apply"
            )
        return teacher
    if teacher == "lstm":
        return LSTMTeacher(**options)
    if isinstance(teacher, str) and teacher in OPTIMIZER_TEACHERS:
        return OptimizerTeacher(teacher, **options)
    raise ValueError(f"teacher must be one of {TEACHER_KINDS} or a TeacherModel, got {teacher!r}")
