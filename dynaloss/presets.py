"""Named configurations of a DLN and its teacher: the library's default and the paper's."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from dynaloss.losses.pairwise import PairwiseDLN
from dynaloss.teacher import Teacher

__all__ = ["PRESETS", "pairwise_teacher"]

# "paper": L2T-DLN as published (random unconstrained Kaiming DLN, LSTM teacher, N = 25, no trust region).
# "default": what the measurements in docs/results.md support (warm, monotone DLN of pinned range, anchored
# teacher, N = 10).
# "ce": the default's teacher with a DLN that starts as softmax cross-entropy exactly (softmax features), so
# a student never starts from a worse loss than the one it had.
_ANCHORED_TEACHER: Mapping[str, Any] = MappingProxyType(
    {
        "teacher": "lstm",
        "steps": 10,
        "student_lr": 0.1,
        "dln_lr": 1e-3,
        "teacher_lr": 1e-3,
        "mode": "paper",
        "anchor": 0.05,
    }
)


def _frozen(preset: dict[str, Mapping[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    return MappingProxyType({part: MappingProxyType(dict(options)) for part, options in preset.items()})


# read-only, all the way down: a preset is a name for one configuration, not a place to store another
PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "paper": _frozen(
            {
                "dln": {"init": "paper", "monotone": False},
                "teacher": {
                    "teacher": "lstm",
                    "steps": 25,
                    "student_lr": 0.1,
                    "dln_lr": 1e-3,
                    "teacher_lr": 1e-3,
                    "mode": "paper",
                    "anchor": 0.0,
                },
            }
        ),
        "default": _frozen({"dln": {"init": "warm", "monotone": True}, "teacher": _ANCHORED_TEACHER}),
        "ce": _frozen({"dln": {"init": "ce", "monotone": True}, "teacher": _ANCHORED_TEACHER}),
    }
)


def pairwise_teacher(num_classes: int, preset: str = "default", **overrides: Any) -> Teacher:
    """A :class:`PairwiseDLN` and its :class:`Teacher` configured by ``preset``; the DLN is ``teacher.loss_fn``.

    Args:
        num_classes: number of classes of the DLN.
        preset: a key of :data:`PRESETS` (default: ``'default'``).
        **overrides: Teacher arguments that replace the preset's (e.g. ``steps=5``, ``mode='lookahead'``).

    Examples::

        >>> teacher = pairwise_teacher(10, "paper", steps=5)
        >>> loss_fn = teacher.loss_fn
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    config = PRESETS[preset]
    return Teacher(PairwiseDLN(num_classes, **config["dln"]), **{**config["teacher"], **overrides})
