"""The training loops' learning-rate schedule (torch's CosineAnnealingLR, stepped once per student step), their
``total_steps`` budget, and the deprecated spellings of the schedule."""

from __future__ import annotations

import math

import pytest
import torch

import dynaloss
from dynaloss.harness.training import LR_FLOOR, load_dataset, make_split, make_student, train_ce, train_dln


def closed_form_cosine(lr: float, total: int, step: int, floor: float = LR_FLOOR) -> float:
    """The half cosine from ``lr`` to ``floor`` over ``total`` steps, written out (what cosine_schedule was)."""
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def digits() -> tuple:
    data = load_dataset("digits")
    return data, make_split("digits", data, val_ratio=0.5, seed=0)


def quiet(total_steps: int) -> dict:
    return {"total_steps": total_steps, "eval_every": total_steps, "evaluate": lambda model: 0.0, "progress": False}


@pytest.fixture
def sgd_rates(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The learning rate of every ``torch.optim.SGD.step`` taken while the test runs."""
    rates: list[float] = []
    original = torch.optim.SGD.step

    def recording(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        rates.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    return rates


@pytest.fixture
def round_rates(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``teacher.student_lr`` at the start of every ``Teacher.step`` round."""
    rates: list[float] = []
    original = dynaloss.Teacher.step

    def recording(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        rates.append(self.student_lr)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(dynaloss.Teacher, "step", recording)
    return rates


def test_cosine_in_train_ce_is_the_closed_form_to_rounding_and_ends_at_the_floor(sgd_rates: list[float]) -> None:
    data, split = digits()
    total = 12
    train_ce(make_student("digits", data.num_classes, seed=0), split, lr=0.1, lr_schedule="cosine", **quiet(total))
    assert len(sgd_rates) == total
    for step, rate in enumerate(sgd_rates):
        assert math.isclose(rate, closed_form_cosine(0.1, total, step), rel_tol=1e-12), step
    assert all(a > b for a, b in zip(sgd_rates, sgd_rates[1:])) and sgd_rates[-1] > LR_FLOOR


@pytest.mark.parametrize(("mode", "per_round"), [("paper", 4), ("lookahead", 2)])
def test_cosine_in_train_dln_steps_once_per_student_step(
    mode: str, per_round: int, round_rates: list[float], sgd_rates: list[float]
) -> None:
    data, split = digits()
    total = 16
    teacher = dynaloss.Teacher(dynaloss.PairwiseDLN(data.num_classes), steps=2, student_lr=0.1, mode=mode)
    student = make_student("digits", data.num_classes, seed=0)
    result = train_dln(student, teacher, split, lr_schedule="cosine", **quiet(total))
    assert result.student_steps == total and not any(r["skipped"] for r in result.rounds)
    # a round's rate is the schedule's at the student steps taken before it: 2N of them a 'paper' round, N lookahead
    expected = [closed_form_cosine(0.1, total, step) for step in range(0, total, per_round)]
    assert len(round_rates) == len(expected)
    for rate, want in zip(round_rates, expected):
        assert math.isclose(rate, want, rel_tol=1e-12)
    if mode == "lookahead":  # the run's own N SGD steps before each round share the round's rate
        assert sgd_rates == [rate for rate in round_rates for _ in range(per_round)]
    assert teacher.student_lr >= LR_FLOOR


def test_constant_is_the_default_and_leaves_the_rate(sgd_rates: list[float]) -> None:
    data, split = digits()
    train_ce(make_student("digits", data.num_classes, seed=0), split, lr=0.05, **quiet(5))
    assert sgd_rates == [0.05] * 5
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        train_ce(make_student("digits", 10, seed=0), split, lr=0.1, lr_schedule="linear", **quiet(2))  # type: ignore[arg-type]


@pytest.mark.parametrize("arm", ["ce", "dln"])
def test_the_budget_is_total_steps_and_steps_is_no_alias(arm: str) -> None:
    data, split = digits()
    student = make_student("digits", data.num_classes, seed=0)
    common = {"eval_every": 4, "evaluate": lambda model: 0.0, "progress": False}
    if arm == "ce":
        result = train_ce(student, split, lr=0.1, total_steps=4, **common)
    else:
        teacher = dynaloss.Teacher(dynaloss.PairwiseDLN(data.num_classes), steps=2, mode="paper")
        result = train_dln(student, teacher, split, total_steps=4, **common)
    assert result.student_steps == 4
    with pytest.raises(TypeError, match="steps"):
        train_ce(student, split, lr=0.1, steps=4, **common)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="missing the keyword argument total_steps"):
        train_ce(student, split, lr=0.1, **common)


def test_cosine_schedule_is_deprecated_and_still_drives_a_run(sgd_rates: list[float]) -> None:
    with pytest.warns(DeprecationWarning, match="cosine_schedule is deprecated"):
        schedule = dynaloss.harness.training.cosine_schedule(0.1, 8)
    assert schedule(0) == pytest.approx(0.1) and schedule(8) == pytest.approx(LR_FLOOR) == schedule(500)
    data, split = digits()
    with pytest.warns(DeprecationWarning, match="lr_schedule= as a function of the step is deprecated"):
        train_ce(make_student("digits", data.num_classes, seed=0), split, lr=0.1, lr_schedule=schedule, **quiet(8))
    for step, rate in enumerate(sgd_rates):
        assert math.isclose(rate, schedule(step), rel_tol=1e-12)


@pytest.mark.parametrize("arm", ["ce", "dln"])
def test_a_zero_rate_from_a_step_function_freezes_the_student(arm: str) -> None:
    data, split = digits()
    student = make_student("digits", data.num_classes, seed=0)
    before = [p.detach().clone() for p in student.parameters()]
    with pytest.warns(DeprecationWarning, match="lr_schedule= as a function"):
        if arm == "ce":
            train_ce(student, split, lr=0.1, lr_schedule=lambda step: 0.0, **quiet(4))
        else:
            teacher = dynaloss.Teacher(dynaloss.PairwiseDLN(data.num_classes), steps=2, student_lr=0.1, mode="paper")
            result = train_dln(student, teacher, split, lr_schedule=lambda step: 0.0, **quiet(4))
            # at rate 0 a round learns nothing: skipped (issue 22), its steps counted, so the run is not stopped
            assert result.rounds and all("learned nothing" in r["reason"] for r in result.rounds)
            assert result.student_steps == 4 and not result.stopped
            assert teacher.student_lr == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))
