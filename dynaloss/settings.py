"""The library's vocabulary and its recommended configuration, in one place.

Every entry point reads its defaults from here (``Teacher()``, the ``"default"`` preset, ``dynaloss train``, the
adapters' ``TeachingConfig`` and the Lightning callback), and ``tests/test_defaults.py`` pins each field, so
they cannot drift apart again.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, get_args

__all__ = [
    "DEFAULT_DLN",
    "DEFAULT_TEACHER",
    "CLASS_AWARE_TEACHING",
    "FEATURES",
    "INITS",
    "MODES",
    "PAIR_MEANS",
    "REDUCTIONS",
    "TEACHER_KINDS",
    "TEACH_EVERY",
    "Features",
    "Init",
    "Mode",
    "PairMean",
    "Reduction",
    "TeacherKind",
]

Mode = Literal["lookahead", "paper", "research"]
TeacherKind = Literal["lstm", "adam", "sgd", "rmsprop"]
Init = Literal["warm", "ce", "paper"]
Features = Literal["sigmoid", "softmax"]
Reduction = Literal["none", "mean", "sum"]
# how a sample's pair losses are averaged: over its C - 1 wrong classes, or over all C rows with the true
# class's row contributing 0 (the authors' code)
PairMean = Literal["wrong", "all"]

MODES: tuple[str, ...] = get_args(Mode)
TEACHER_KINDS: tuple[str, ...] = get_args(TeacherKind)
INITS: tuple[str, ...] = get_args(Init)
FEATURES: tuple[str, ...] = get_args(Features)
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
PAIR_MEANS: tuple[str, ...] = get_args(PairMean)

# The recommended teacher: what docs/results.md's measurements support for a drop-in into a user's loop.
# 'lookahead' leaves the user's model and optimizer untouched (their optimizer trains, the round teaches the
# DLN); N = 10 steps per stage; an anchor (trust region) of 0.05 around the DLN teaching started from; rollback
# of persistent rises on; no sparsity prior. student_lr is the unroll's SGD rate only when no optimizer= is given.
DEFAULT_TEACHER: Mapping[str, Any] = MappingProxyType(
    {
        "teacher": "lstm",
        "steps": 10,
        "student_lr": 0.1,
        "dln_lr": 1e-3,
        "teacher_lr": 1e-3,
        "mode": "lookahead",
        "anchor_strength": 0.05,
        "guard": None,
        "rollback": True,
        "sparsity": 0.0,
    }
)

# What ClassAwareDLN's parameters (logit offsets, pair offsets, GCE exponents; logit units) want instead, and what a
# Teacher takes for them unless told otherwise (a loss module's ``teaching_defaults``): a plain Adam step of
# 0.05 per round on each (the LSTM's bounded output at 1e-3 would need thousands of rounds to move an offset by
# log(100)), no trust region (logit adjustment under a long tail sits some log(ratio) from the start), no
# rollback (every parameter value is a proper loss; a rising validation error under label noise is the student
# memorising wrong labels, which is what the loss is being taught to stop, not a loss to undo). A sparsity prior
# of 0.05 on the offsets and pair offsets (a soft threshold of 0.05 * dln_lr a round toward the start): with the
# forward pair form, q's slope 9 and its ceiling 0.7 (ClassAwareDLN's defaults) it is the configuration of the
# tuned grid in docs/results.md, "A ceiling on q"; alone, with the logit form, it traded cells ("A sparsity prior
# and a faster q").
CLASS_AWARE_TEACHING: Mapping[str, Any] = MappingProxyType(
    {"teacher": "adam", "dln_lr": 0.05, "anchor_strength": 0.0, "rollback": False, "sparsity": 0.05}
)

# The recommended PairwiseDLN: warm-started as one-vs-all binary cross-entropy, sign-constrained (monotone).
DEFAULT_DLN: Mapping[str, Any] = MappingProxyType({"init": "warm", "monotone": True})

# The recommended cadence: a teacher round every TEACH_EVERY of the user's optimizer steps.
TEACH_EVERY: int = 20
