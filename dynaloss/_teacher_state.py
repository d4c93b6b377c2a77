"""A :class:`dynaloss.Teacher`'s saved state: what :meth:`~dynaloss.Teacher.state_dict` holds, and the check of a
state against a teacher before :meth:`~dynaloss.Teacher.load_state_dict` writes any of it."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from dynaloss._checks import check_positive_float
from dynaloss._state import check_finite_state, check_state_dict
from dynaloss._unroll import dln_parameters
from dynaloss.teachers.base import Memory

if TYPE_CHECKING:
    from dynaloss.teacher import Teacher

__all__ = ["STATE_KEYS", "CheckedState", "check_teacher_state", "teacher_state"]

# Teacher.state_dict()'s keys, all of which load_state_dict requires
STATE_KEYS = (
    "loss_fn",
    "teacher_model",
    "teacher_optimizer",
    "memory",
    "anchor_point",
    "rounds",
    "dln_lr",
    "rollback",
)


class CheckedState(NamedTuple):
    """A state that fits the teacher, with the values the teacher keeps itself (on the DLN's device)."""

    memory: Memory | None
    anchor_point: Tensor | None
    rounds: int
    dln_lr: float


def check_teacher_state(teacher: Teacher, state: object) -> CheckedState:
    """Check ``state`` (``Teacher.state_dict()``'s output) against ``teacher``; nothing is written.

    Checked: every key of :data:`STATE_KEYS`; the DLN's and the teacher model's keys, shapes and extra state
    (e.g. ``num_classes``); the teacher optimizer state's structure and shapes; the memory's and the anchor
    point's shapes; the round count, ``dln_lr`` and the rollback state; every tensor finite.

    Returns:
        The memory, anchor point (copied to the DLN's device), round count and ``dln_lr`` to keep.

    Raises:
        TypeError, ValueError: naming the entry that does not fit.
    """
    loss_fn, teacher_model, teacher_optimizer = teacher.loss_fn, teacher.teacher_model, teacher.teacher_optimizer
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping (Teacher.state_dict()'s output), got {type(state).__name__}")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"state is missing {missing}; pass the output of Teacher.state_dict()")
    if (state["teacher_optimizer"] is None) != (teacher_optimizer is None):
        raise ValueError("state['teacher_optimizer'] comes from a teacher of another kind (learnable vs fixed rule)")
    rounds = state["rounds"]
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"state['rounds'] must be an int >= 0, got {rounds!r}")
    check_state_dict(loss_fn, state["loss_fn"], "state['loss_fn']")
    check_state_dict(teacher_model, state["teacher_model"], "state['teacher_model']")
    if teacher_optimizer is not None:
        _check_optimizer_state(teacher_optimizer, teacher_model, state["teacher_optimizer"])
    reference = next(loss_fn.parameters())
    coordinates = sum(p.numel() for p in dln_parameters(loss_fn).values())
    memory = state["memory"]
    if memory is not None:
        expected = teacher_model.initial_memory(coordinates, like=reference)
        _check_tensors(memory, [m.shape for m in expected], "state['memory']")
    point = state["anchor_point"]
    if point is not None:
        _check_tensors([point], [torch.Size([coordinates])], "state['anchor_point']")
    dln_lr = check_positive_float(state["dln_lr"], "state['dln_lr']")
    if teacher.rollback is not None and state["rollback"] is not None:
        copy.deepcopy(teacher.rollback).load_state_dict(
            copy.deepcopy(state["rollback"])
        )  # raises ValueError if it does not fit
    return CheckedState(
        memory=None if memory is None else tuple(m.to(reference.device).clone() for m in memory),
        anchor_point=None if point is None else point.to(reference.device).clone(),
        rounds=rounds,
        dln_lr=dln_lr,
    )


def _check_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, state: object) -> None:
    """Raise ``ValueError`` if the teacher model's ``optimizer`` would not load ``state`` (tried on a copy)."""
    check_finite_state(state, "state['teacher_optimizer']")
    trial = torch.optim.Adam(copy.deepcopy(model).parameters(), **optimizer.defaults)
    try:
        trial.load_state_dict(state)  # type: ignore[arg-type]
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"state['teacher_optimizer'] does not fit the teacher's Adam: {error!r}") from None
    for group in trial.param_groups:  # torch checks the groups' sizes, not the moments' shapes
        for param in group["params"]:
            for key, value in trial.state.get(param, {}).items():
                if isinstance(value, Tensor) and value.dim() and value.shape != param.shape:
                    raise ValueError(
                        f"state['teacher_optimizer'] holds {key!r} of shape {tuple(value.shape)} for a teacher "
                        f"parameter of shape {tuple(param.shape)}"
                    )


def _check_tensors(values: object, shapes: Sequence[torch.Size], name: str) -> None:
    """Raise ``ValueError`` unless ``values`` is a sequence of finite floating tensors of exactly ``shapes``."""
    if not isinstance(values, (list, tuple)) or len(values) != len(shapes):
        count = len(values) if isinstance(values, (list, tuple)) else "?"
        raise ValueError(f"{name} must be {len(shapes)} tensors, got {type(values).__name__} of {count}")
    for index, (value, shape) in enumerate(zip(values, shapes)):
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.shape != shape:
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name}[{index}] must be a floating tensor of shape {tuple(shape)}, got {got}")
    check_finite_state(list(values), name)


def teacher_state(teacher: Teacher) -> dict[str, Any]:
    """``teacher``'s state dict, keyed by :data:`STATE_KEYS` (the DLN's and teacher model's tensors are live)."""
    optimizer, memory, point, rollback = (
        teacher.teacher_optimizer,
        teacher.memory,
        teacher.anchor_point,
        teacher.rollback,
    )
    return {
        "loss_fn": teacher.loss_fn.state_dict(),
        "teacher_model": teacher.teacher_model.state_dict(),
        "teacher_optimizer": None if optimizer is None else optimizer.state_dict(),
        "memory": None if memory is None else [m.clone() for m in memory],
        "anchor_point": None if point is None else point.clone(),
        "rounds": teacher.rounds,
        "dln_lr": teacher.dln_lr,
        "rollback": None if rollback is None else copy.deepcopy(rollback.state_dict()),
    }
