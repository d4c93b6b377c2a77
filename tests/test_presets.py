"""Named presets build the configuration they name."""

from __future__ import annotations

import pytest
import torch

import dynaloss


def test_paper_preset_is_the_published_configuration() -> None:
    torch.manual_seed(0)
    teacher = dynaloss.pairwise_teacher(10, "paper")
    assert teacher.loss_fn.init == "paper" and not teacher.loss_fn.monotone
    assert isinstance(teacher.model, dynaloss.LSTMTeacher)
    assert (teacher.steps, teacher.student_lr, teacher.dln_lr, teacher.mode, teacher.anchor) == (
        25,
        0.1,
        1e-3,
        "paper",
        0.0,
    )


def test_default_preset_is_warm_and_anchored_and_takes_overrides() -> None:
    teacher = dynaloss.pairwise_teacher(3, steps=4, mode="lookahead")
    assert teacher.loss_fn.init == "warm" and teacher.loss_fn.monotone and teacher.anchor > 0
    assert (teacher.steps, teacher.mode) == (4, "lookahead")


def test_unknown_preset_is_rejected() -> None:
    with pytest.raises(ValueError, match="preset must be one of"):
        dynaloss.pairwise_teacher(3, "fastest")
