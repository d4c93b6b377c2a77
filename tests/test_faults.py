"""Failed rounds (out of memory, a loss explosion, NaN batches) are skipped with a warning; a run that keeps
failing stops with a clear error and keeps its last good checkpoint."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import pytest
import torch
from test_bad_input import assert_identical, dln3, make_batches, make_student, snapshot, trained

import dynaloss.harness.cli
from dynaloss import PairwiseDLN, Teacher
from dynaloss.harness.checkpoint import RunCheckpoint
from dynaloss.harness.data import EpochSplit, load_digits
from dynaloss.harness.training import train_dln


class RunsOutOfMemory(PairwiseDLN):
    """A DLN whose forward fails as a CUDA allocation would, once ``armed``."""

    armed = False

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        if self.armed:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(*args, **kwargs)  # type: ignore[arg-type]


def all_finite(teacher: Teacher) -> bool:
    tensors = [*teacher.loss_fn.parameters(), *teacher.teacher_model.parameters(), *(teacher.memory or ())]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def test_out_of_memory_round_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    student, teacher = make_student(), Teacher(RunsOutOfMemory(3, init="paper", hidden=4, depth=1), steps=2)
    assert not teacher.step(student, iter(make_batches(4)), iter(make_batches(1, seed=1))).skipped
    before = snapshot(student, teacher)
    teacher.loss_fn.armed = True
    with caplog.at_level(logging.WARNING, logger="dynaloss"):
        record = teacher.step(student, iter(make_batches(4, seed=2)), iter(make_batches(1, seed=3)))
    assert record.skipped and "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)" in record.reason
    assert "teacher round 1 skipped: out of memory" in caplog.text
    assert_identical(before, snapshot(student, teacher))
    teacher.loss_fn.armed = False
    assert not teacher.step(student, iter(make_batches(4, seed=4)), iter(make_batches(1, seed=5))).skipped


def test_loss_explosion_is_skipped_and_nothing_takes_a_non_finite_value(caplog: pytest.LogCaptureFixture) -> None:
    student, teacher = trained()
    before = snapshot(student, teacher)
    teacher.student_lr = 1e38  # the unrolled steps overflow float32: the student's weights become Inf
    with caplog.at_level(logging.WARNING, logger="dynaloss"):
        record = teacher.step(student, iter(make_batches(4, seed=2)), iter(make_batches(1, seed=3)))
    assert record.skipped and "NaN or Inf" in record.reason and "skipped" in caplog.text
    assert_identical(before, snapshot(student, teacher))
    assert all_finite(teacher)


def nan_after(batches: int, source: EpochSplit) -> itertools.chain:
    """The split's train stream, its inputs NaN from the ``batches``-th batch on."""
    poisoned = ((x.clone().fill_(math.nan), y) for x, y in source.train_batches())
    return itertools.chain(itertools.islice(source.train_batches(), batches), poisoned)


def test_consecutive_failures_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path: Path) -> None:
    data = load_digits()
    split = EpochSplit(data.x_train, data.y_train, seed=0)
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    teacher = Teacher(PairwiseDLN(10, init="paper", hidden=4, depth=1), steps=1, mode="paper")
    checkpoint = RunCheckpoint(tmp_path / "checkpoint.pt", every=1)
    result = train_dln(
        student,
        teacher,
        split,
        total_steps=100,
        evaluate=lambda model: 0.0,
        eval_every=100,
        progress=False,
        max_failures=3,
        checkpoint=checkpoint,
        batches=(nan_after(4, split), split.val_batches()),  # two good rounds of 2N = 2 batches
    )
    assert result.stopped == "3 teacher rounds in a row were skipped (non-finite values or out of memory)"
    assert [r["skipped"] for r in result.rounds] == [False, False, True, True, True]
    assert all_finite(teacher)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["rounds"] == 2 and saved["run"]["result"]["student_steps"] == 4
    assert_identical(saved["parts"]["teacher"]["loss_fn"], teacher.loss_fn.state_dict())


def test_cli_exits_with_an_error_when_every_round_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = load_digits()
    poisoned = data._replace(x_train=torch.full_like(data.x_train, math.nan))
    monkeypatch.setattr(dynaloss.harness.cli, "load_dataset", lambda name, data_dir=None: poisoned)
    # paper mode: the rounds alone touch the data (in lookahead mode the run's own steps meet the NaN inputs first,
    # and the DLN refuses them: a ValueError, exit status 2)
    argv = ["train", "--data", "digits", "--mode", "paper", "--unroll", "1", "--total-steps", "20"]
    argv += ["--max-failures", "2", "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        dynaloss.harness.cli.main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 1
    assert "training stopped: 2 teacher rounds in a row were skipped" in capsys.readouterr().err
    assert (tmp_path / "metrics.json").is_file()


def test_skipped_round_leaves_a_fresh_teacher_finite() -> None:
    student, teacher = make_student(), Teacher(dln3(), steps=2)
    train = make_batches(4)
    train[0][0].fill_(math.inf)
    assert teacher.step(student, iter(train), iter(make_batches(1, seed=1))).skipped
    assert teacher.memory is None and all_finite(teacher)
