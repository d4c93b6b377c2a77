"""Named presets build the configuration they name."""

from __future__ import annotations

import pytest
import torch

import dynaloss


def test_paper_preset_is_the_published_configuration() -> None:
    torch.manual_seed(0)
    teacher = dynaloss.pairwise_teacher(10, "paper")
    assert teacher.loss_fn.init == "paper" and not teacher.loss_fn.monotone
    assert isinstance(teacher.teacher_model, dynaloss.LSTMTeacher)
    assert (teacher.steps, teacher.student_lr, teacher.dln_lr, teacher.mode, teacher.anchor_strength) == (
        25,
        0.1,
        1e-3,
        "paper",
        0.0,
    )


def test_pairwise_preset_is_warm_and_anchored_and_takes_overrides() -> None:
    teacher = dynaloss.pairwise_teacher(3, "pairwise", steps=4, mode="lookahead")
    assert teacher.loss_fn.init == "warm" and teacher.loss_fn.monotone and teacher.anchor_strength > 0
    assert (teacher.steps, teacher.mode) == (4, "lookahead")


def test_default_preset_starts_within_its_forward_weights_of_cross_entropy_and_takes_overrides() -> None:
    teacher = dynaloss.pairwise_teacher(3, steps=4, dln_lr=0.1)
    logits, target = torch.randn(16, 3), torch.randint(3, (16,))
    # the forward pair weights start at 1e-3: -log(p_y + 1e-3 (1 - p_y)), cross-entropy but for implausible labels
    p_y = torch.softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(teacher.loss_fn(logits, target), -torch.log(p_y + 1e-3 * (1 - p_y)).mean())
    assert (teacher.steps, teacher.dln_lr) == (4, 0.1)


def test_unknown_preset_is_rejected() -> None:
    with pytest.raises(ValueError, match="preset must be one of"):
        dynaloss.pairwise_teacher(3, "fastest")


def test_ce_preset_starts_as_cross_entropy_and_follows_the_optimizer() -> None:
    torch.manual_seed(0)
    student = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    teacher = dynaloss.pairwise_teacher(3, "ce", optimizer=optimizer, mode="lookahead")
    assert teacher.student_optimizer is optimizer
    logits, target = torch.randn(16, 3), torch.randint(3, (16,))
    torch.testing.assert_close(teacher.loss_fn(logits, target), torch.nn.functional.cross_entropy(logits, target))


def test_presets_are_read_only_at_every_level() -> None:
    # a preset is a name for one configuration: writing into it would change every later pairwise_teacher()
    import pytest

    from dynaloss import PRESETS

    with pytest.raises(TypeError):
        PRESETS["mine"] = PRESETS["default"]  # type: ignore[index]
    with pytest.raises(TypeError):
        PRESETS["default"]["teacher"]["steps"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        PRESETS["ce"]["dln"]["init"] = "warm"  # type: ignore[index]
