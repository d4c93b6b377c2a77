"""Named configurations of a DLN and its teacher: the library's default, the paper's and the authors' code's."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from dynaloss.losses.class_aware import ClassAwareDLN
from dynaloss.losses.pairwise import PairwiseDLN
from dynaloss.settings import CLASS_AWARE_TEACHING, DEFAULT_DLN, DEFAULT_TEACHER
from dynaloss.teacher import Teacher
from dynaloss.teachers import make_teacher_model

__all__ = ["FAMILIES", "PRESETS", "pairwise_teacher"]


def _frozen(preset: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(
        {
            part: MappingProxyType(dict(options)) if isinstance(options, Mapping) else options
            for part, options in preset.items()
        }
    )


# The DLN families a preset can name, by the name it uses.
FAMILIES: Mapping[str, type[nn.Module]] = MappingProxyType({"class_aware": ClassAwareDLN, "pairwise": PairwiseDLN})


# What the paper and the authors' code share besides N and the mode: their rates, no trust region, no rollback,
# no sparsity prior.
_AS_PUBLISHED = {
    "student_lr": 0.1,
    "dln_lr": 1e-3,
    "teacher_lr": 1e-3,
    "anchor_strength": 0.0,
    "guard": None,
    "rollback": False,
    "sparsity": 0.0,
}

# Read-only, all the way down: a preset is a name for one configuration, not a place to store another.
# Each has four parts: "family" (a key of FAMILIES), "dln" (that family's arguments), "teacher" (Teacher's) and
# "teacher_model" (the options of the teacher model named by teacher["teacher"], e.g. LSTMTeacher's).
# - "default": the recommended configuration: ClassAwareDLN (within 1e-3 of cross-entropy at the start) taught by
#   Adam steps with a sparsity prior (dynaloss.settings.CLASS_AWARE_TEACHING, what Teacher(ClassAwareDLN(C)) takes
#   by itself); benchmarks/robust.py and docs/results.md have the measurements behind it.
# - "pairwise": the paper's pairwise MLP DLN as PairwiseDLN() builds it (warm, monotone) with Teacher()'s defaults
#   for it (dynaloss.settings).
# - "ce": the same teacher with a pairwise DLN that starts as softmax cross-entropy exactly.
# - "paper": L2T-DLN as published: random unconstrained Kaiming DLN, LSTM teacher, N = 25, stage III continuing
#   from stage I ('paper' mode), no trust region, no rollback.
# - "research": the authors' research code's round (1017137588qqcom/L2T-DLN): both stages from the same start
#   on the same batches ('research' mode), N = 15, the pair mean over all C rows, log(|g| + 1e-8) in the
#   LSTM's preprocessing and the update phi - gamma T; tests/test_research_reference.py checks one round
#   against an independent reference of it to 1e-12 in float64 (docs/modes.md lists what differs).
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "default": _frozen(
            {
                "family": "class_aware",
                "dln": {},
                "teacher": {**DEFAULT_TEACHER, **CLASS_AWARE_TEACHING},
                "teacher_model": {},
            }
        ),
        "pairwise": _frozen(
            {"family": "pairwise", "dln": DEFAULT_DLN, "teacher": DEFAULT_TEACHER, "teacher_model": {}}
        ),
        "ce": _frozen(
            {
                "family": "pairwise",
                "dln": {**DEFAULT_DLN, "init": "ce"},
                "teacher": DEFAULT_TEACHER,
                "teacher_model": {},
            }
        ),
        "paper": _frozen(
            {
                "family": "pairwise",
                "dln": {"init": "paper", "monotone": False},
                "teacher": {"teacher": "lstm", "steps": 25, "mode": "paper", **_AS_PUBLISHED},
                "teacher_model": {},
            }
        ),
        "research": _frozen(
            {
                "family": "pairwise",
                "dln": {"init": "paper", "monotone": False, "pair_mean": "all"},
                "teacher": {"teacher": "lstm", "steps": 15, "mode": "research", **_AS_PUBLISHED},
                "teacher_model": {"preprocess_eps": 1e-8, "output_sign": -1},
            }
        ),
    }
)


def pairwise_teacher(num_classes: int, preset: str = "default", **overrides: Any) -> Teacher:
    """A classification DLN and its :class:`Teacher` configured by ``preset``; the DLN is ``teacher.loss_fn``.

    The name is the paper's (a DLN over 1-vs-1 pairs): the ``'default'`` preset builds a :class:`ClassAwareDLN`
    (cross-entropy over pair margins ``z_j - z_y`` with learned class offsets, pair offsets and robustness),
    the others a :class:`PairwiseDLN` (an MLP over prediction pairs).

    Args:
        num_classes: number of classes of the DLN.
        preset: a key of :data:`PRESETS`: ``'default'``, ``'pairwise'``, ``'ce'``, ``'paper'`` or ``'research'``
            (default: ``'default'``).
        **overrides: Teacher arguments that replace the preset's (e.g. ``steps=5``, ``optimizer=opt``). A
            ``teacher=`` override replaces the preset's teacher model and its options.

    Examples::

        >>> teacher = pairwise_teacher(10, "paper", steps=5)
        >>> loss_fn = teacher.loss_fn
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    config = PRESETS[preset]
    options = {**config["teacher"], **overrides}
    if "teacher" not in overrides:
        options["teacher"] = make_teacher_model(options["teacher"], **config["teacher_model"])
    return Teacher(FAMILIES[config["family"]](num_classes, **config["dln"]), **options)
