"""The :class:`dynaloss.Teacher`'s checks: of its loss and student, and of its settings, on every assignment.

A setting's check is the one the constructor runs too, so a value the constructor refuses cannot be assigned
later; the teacher's state is read-only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dynaloss._checks import check_not_compiled, check_optimizer_excludes, check_positive_float
from dynaloss._rollback import Rollback
from dynaloss._unroll import dln_parameters
from dynaloss.distributed import unwrap_data_parallel
from dynaloss.settings import MODES

if TYPE_CHECKING:
    from dynaloss.teacher import Teacher

__all__ = [
    "AUTOCAST_DTYPES",
    "Checked",
    "ReadOnly",
    "check_anchor_strength",
    "check_autocast",
    "check_guard",
    "check_loss_fn",
    "check_mode",
    "check_rollback",
    "check_sparsity",
    "check_student",
    "check_student_lr",
    "check_val_loss",
]

AUTOCAST_DTYPES = (None, torch.bfloat16, torch.float16)


class Checked:
    """A setting checked by ``check(value, name)`` on every assignment, the constructor's included."""

    def __init__(self, check: Any) -> None:
        self.check = check

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.slot, self.check(value, self.name))


class ReadOnly:
    """What a teacher learns or counts: assignment raises ``AttributeError``; the owner writes ``_<name>``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(
            f"Teacher.{self.name} is the teacher's state, changed by step() and load_state_dict(), not by assignment"
        )


def check_val_loss(value: object, name: str) -> Any:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


def check_autocast(value: object, name: str) -> torch.dtype | None:
    if value is not None and not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype or None, got {type(value).__name__}")
    if value not in AUTOCAST_DTYPES:
        raise ValueError(f"{name} must be one of {AUTOCAST_DTYPES}, got {value}")
    return value


def check_mode(value: object, name: str) -> str:
    if value not in MODES:
        raise ValueError(f"{name} must be one of {MODES}, got {value!r}")
    return value  # type: ignore[return-value]


def check_anchor_strength(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_non_negative_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def check_sparsity(value: object, name: str) -> float:
    """A finite number ``>= 0``: the soft threshold of a round, in units of ``dln_lr`` (0: off)."""
    return _check_non_negative_float(value, name)


def check_student_lr(value: object, name: str) -> float:
    """A finite rate ``>= 0``: at 0 (a schedule's warm-up, say) the student does not move in the unroll, and
    the round is skipped as one that learned nothing."""
    return _check_non_negative_float(value, name)


def check_guard(value: object, name: str) -> float | None:
    return None if value is None else check_positive_float(value, name)


def check_loss_fn(loss_fn: object) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``loss_fn`` is a module a teacher can teach: a scalar loss with
    parameters to teach, not ``torch.compile``'d."""
    if not isinstance(loss_fn, nn.Module):
        raise TypeError(f"loss_fn must be a torch.nn.Module, got {type(loss_fn).__name__}")
    if getattr(loss_fn, "reduction", None) == "none":
        raise ValueError(
            f"loss_fn ({type(loss_fn).__name__}) has reduction='none': each unrolled step differentiates one "
            "scalar loss, so build the DLN the teacher teaches with reduction='mean' or 'sum'"
        )
    check_not_compiled(loss_fn, "loss_fn")
    dln_parameters(loss_fn)  # raises if there is nothing to teach


def check_rollback(rollback: object) -> Rollback | None:
    """The watch ``Teacher(rollback=)`` asks for: ``True`` a default :class:`Rollback`, ``False`` none."""
    if not isinstance(rollback, (bool, Rollback)):
        raise TypeError(f"rollback must be a bool or a dynaloss._rollback.Rollback, got {type(rollback).__name__}")
    return Rollback() if rollback is True else (rollback or None)


def check_student(student: object, teacher: Teacher) -> nn.Module:
    """The module ``teacher``'s round unrolls (a data-parallel wrapper's), once it passes the round's checks.

    Raises:
        RuntimeError: called under ``torch.inference_mode()``.
        TypeError: not a module, or a ``torch.compile``'d one.
        ValueError: a data-parallel wrapper without a ``process_group``, or a student optimizer that holds the
            DLN's parameters.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "Teacher.step differentiates through the student's steps, which torch.inference_mode() forbids: "
            "call it outside inference mode (torch.no_grad() is fine)"
        )
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    if teacher.sync is None and student is not unwrap_data_parallel(student):
        raise ValueError(
            f"student is wrapped in {type(student).__name__} but the Teacher has no process_group: pass "
            "process_group=torch.distributed.group.WORLD so the unrolled steps average over the ranks"
        )
    student = unwrap_data_parallel(student)
    check_not_compiled(student, "student")
    if teacher.student_optimizer is not None:  # param groups may have been added since it was assigned
        check_optimizer_excludes(teacher.student_optimizer, teacher.loss_fn)
    return student
