"""The training loops' learning-rate schedule: every arm follows the same one, set before each step or round."""

from __future__ import annotations

import math

import pytest
import torch

import dynaloss
from dynaloss.training import cosine_schedule, load_dataset, make_split, make_student, train_ce, train_dln


def test_cosine_schedule_falls_from_lr_to_its_floor() -> None:
    schedule = cosine_schedule(0.1, 100, floor=1e-3)
    values = [schedule(step) for step in range(0, 101, 10)]
    assert values[0] == pytest.approx(0.1) and values[-1] == pytest.approx(1e-3)
    assert values[5] == pytest.approx(1e-3 + (0.1 - 1e-3) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert all(a > b for a, b in zip(values, values[1:]))
    assert schedule(500) == pytest.approx(1e-3)  # past the budget it stays at the floor


def _digits_run(arm: str, lr_schedule):  # type: ignore[no-untyped-def]
    data = load_dataset("digits")
    student = make_student("digits", data.num_classes, seed=0)
    before = [p.detach().clone() for p in student.parameters()]
    split = make_split("digits", data, val_ratio=0.5, seed=0)
    common = {"steps": 4, "eval_every": 4, "evaluate": lambda model: 0.0, "progress": False}
    teacher = None
    if arm == "ce":
        train_ce(student, split, lr=0.1, lr_schedule=lr_schedule, **common)
    else:
        teacher = dynaloss.Teacher(dynaloss.PairwiseDLN(data.num_classes), steps=2, student_lr=0.1)
        result = train_dln(student, teacher, split, lr_schedule=lr_schedule, **common)
        assert result.rounds and not any(r["skipped"] for r in result.rounds)  # committed, not skipped
    moved = any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    return moved, teacher


@pytest.mark.parametrize("arm", ["ce", "dln"])
def test_the_schedule_sets_the_students_learning_rate(arm: str) -> None:
    moved, _ = _digits_run(arm, None)
    assert moved
    frozen, teacher = _digits_run(arm, lambda step: 0.0)  # a zero learning rate: the student must not move
    assert not frozen
    if teacher is not None:
        assert teacher.student_lr == 0.0
