"""Rollback: a persistent rise of the validation error under teaching is detected and undone, on by default."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

import dynaloss
from dynaloss._rollback import Learned, Rollback, Snapshot
from dynaloss.teachers import TeacherModel


def snap(round: int) -> Snapshot:
    """A stand-in snapshot: the watch compares errors, never what a snapshot holds."""
    return Snapshot(round, {"w": torch.full((2,), float(round))}, {}, None)


def test_a_rise_over_the_window_returns_the_state_at_the_start_of_the_best_window() -> None:
    watch = Rollback(window=2, rise=0.5)
    assert watch.observe(1.0, snap(0)) is None  # not a full window yet
    assert watch.observe(0.8, snap(1)) is None  # first window: mean 0.9, best so far; it began at 0
    assert watch.observe(0.6, snap(2)) is None  # mean 0.7: best, its window began at 1
    assert watch.observe(1.2, snap(3)) is None  # mean 0.9 <= 0.7 + 0.5 * 0.7
    target = watch.observe(1.6, snap(4))  # mean 1.4 > 1.05: back to where the best window began
    assert target is not None and target.round == 1
    assert watch.count == 1 and watch.best == math.inf and not watch.recent  # the watch starts over


def test_before_a_full_window_the_fallback_is_where_teaching_started() -> None:
    watch = Rollback(window=3, rise=0.5)
    for error, round in [(0.3, 0), (5.0, 1), (9.0, 2)]:
        assert watch.observe(error, snap(round)) is None
    assert watch.best_state is not None and watch.best_state.round == 0  # the first window's first round


def test_tiny_errors_do_not_roll_back_on_noise() -> None:
    """Late in training the error is ~1e-3: a rise is measured against a quarter of the first window's mean."""
    watch = Rollback(window=2, rise=0.5)
    for round, error in enumerate([2.0, 2.0, 1e-3, 1e-3, 3e-3, 3e-3]):  # tripled, but far below 0.25 * 2.0
        assert watch.observe(error, snap(round)) is None
    assert watch.count == 0


def test_non_finite_errors_are_ignored_and_state_round_trips() -> None:
    watch = Rollback(window=2)
    watch.observe(1.0, snap(0))
    watch.observe(math.nan, snap(1))
    assert len(watch.recent) == 1
    copy = Rollback(window=2)
    copy.load_state_dict(watch.state_dict())
    assert repr(copy.state_dict()) == repr(watch.state_dict())
    assert copy.best_state is not None and copy.best_state.round == 0
    with pytest.raises(ValueError, match="'recent'"):
        copy.load_state_dict({**watch.state_dict(), "recent": "x"})
    with pytest.raises(ValueError, match="rollback snapshot"):
        copy.load_state_dict({**watch.state_dict(), "best_state": {"x": 1}})


def test_a_snapshot_holds_exactly_the_dln_the_teacher_model_and_its_optimizer_and_restores_them() -> None:
    teacher = dynaloss.Teacher(dynaloss.PairwiseDLN(3), teacher="lstm")
    learned = Learned(teacher.loss_fn, teacher.teacher_model, teacher.teacher_optimizer)
    snapshot = learned.snapshot(7)
    assert set(snapshot.as_dict()) == {"round", "loss_fn", "teacher_model", "teacher_optimizer"}
    assert Snapshot.from_dict(snapshot.as_dict()).round == 7
    with torch.no_grad():
        for p in [*teacher.loss_fn.parameters(), *teacher.teacher_model.parameters()]:
            p.add_(1.0)
    learned.restore(snapshot)
    for restored, saved in ((teacher.loss_fn, snapshot.loss_fn), (teacher.teacher_model, snapshot.teacher_model)):
        for name, value in restored.state_dict().items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, saved[name], rtol=0, atol=0)
            else:  # extra state: the DLN's kind
                assert value == saved[name]


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"window": 0}, "window"), ({"rise": -1.0}, "rise"), ({"slowdown": 2.0}, "slowdown")]
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Rollback(**kwargs)


def test_teacher_rejects_a_bad_rollback_argument() -> None:
    with pytest.raises(TypeError, match="rollback must be a bool"):
        dynaloss.Teacher(dynaloss.PairwiseDLN(3), rollback="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ a collapse, reproduced
class Ascend(TeacherModel):
    """A teacher that walks the DLN *up* the validation error's hypergradient: a collapse on demand."""

    def initial_memory(self, num_coordinates: int, *, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ()

    def forward(self, grad: torch.Tensor, memory: tuple[torch.Tensor, ...]):
        return torch.sign(grad), memory


def drop_in_run(rollback: bool) -> tuple[float, list[dynaloss.RoundRecord]]:
    """The README's loop (user's SGD with momentum, lookahead rounds every 5 steps) with the ascending teacher."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=generator) * 2
    y = torch.randint(3, (600,), generator=generator)
    x = centers[y] + torch.randn(600, 8, generator=generator)
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    dln = dynaloss.PairwiseDLN(3, monotone=False)
    teacher = dynaloss.Teacher(
        dln,
        teacher=Ascend(),
        steps=2,
        optimizer=optimizer,
        dln_lr=1e-3,
        mode="lookahead",
        anchor_strength=0.0,
        rollback=rollback,
    )

    def batches(low: int, high: int, size: int):
        while True:
            order = torch.randperm(high - low, generator=generator) + low
            for start in range(0, high - low - size + 1, size):
                yield x[order[start : start + size]], y[order[start : start + size]]

    train, val = batches(0, 400, 20), batches(400, 500, 100)
    records = []
    for iteration in range(1, 401):
        inputs, targets = next(train)
        loss = dln(student(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if iteration % 5 == 0:
            records.append(teacher.step(student, train, val))
    with torch.no_grad():
        accuracy = float((student(x[500:]).argmax(1) == y[500:]).float().mean())
    return accuracy, records


def test_rollback_undoes_a_collapse_that_wrecks_the_student_without_it(caplog: pytest.LogCaptureFixture) -> None:
    wrecked, records = drop_in_run(rollback=False)
    assert wrecked < 0.5 and not any(r.rolled_back for r in records)  # the collapse reproduces
    with caplog.at_level(logging.WARNING, logger="dynaloss"):
        kept, records = drop_in_run(rollback=True)
    assert kept > 0.9
    rolled = [r for r in records if r.rolled_back]
    assert rolled and all("rollback" in (r.reason or "") for r in rolled)
    assert sum("rollback:" in message for message in caplog.messages) == len(rolled)
