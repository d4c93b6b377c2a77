"""Progress reports: tqdm's bar on a terminal, a line at every tenth of the run anywhere else."""

from __future__ import annotations

import io

import pytest
import torch

from dynaloss.harness.data import Dataset
from dynaloss.harness.progress import LINES, LineProgress, progress
from dynaloss.harness.training import make_split, train_ce


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_a_long_loop_writes_one_line_per_tenth_without_a_terminal() -> None:
    stream = io.StringIO()
    with progress(1000, "train", stream=stream) as bar:
        for step in range(1000):
            bar.update(1)
            if step % 100 == 0:
                bar.set_postfix_str(f"test acc {step / 10:.1f} %")
    written = stream.getvalue()
    assert len(lines(written)) == LINES < 100 and "\r" not in written
    assert lines(written)[0].startswith("train: 100/1000 steps, ") and lines(written)[0].endswith("test acc 0.0 %")
    assert lines(written)[-1].startswith("train: 1000/1000 steps")


def test_a_terminal_gets_tqdm_and_a_disabled_report_writes_nothing() -> None:
    terminal = Terminal()
    with progress(5, "train", stream=terminal) as bar:
        bar.update(5)
    assert "\r" in terminal.getvalue() and "5/5" in terminal.getvalue()
    silent = io.StringIO()
    with progress(5, "train", enabled=False, stream=silent) as bar:
        bar.update(5)
        bar.set_postfix(loss="0.1")
    assert silent.getvalue() == ""


def test_a_resumed_or_stopped_run_reports_where_it_stands() -> None:
    stream = io.StringIO()
    with LineProgress(100, "resumed", initial=50, stream=stream) as bar:
        bar.update(5)  # no new tenth passed since the start
        assert stream.getvalue() == ""
        bar.update(5)
        bar.set_postfix(loss=0.25, rounds=3)
        bar.update(3)  # stops at 63 %
    first, last = lines(stream.getvalue())  # the tenth it passed, then where it stopped
    assert first.startswith("resumed: 60/100 steps")
    assert last.startswith("resumed: 63/100 steps") and last.endswith("loss=0.25, rounds=3")
    unknown = io.StringIO()
    with LineProgress(0, "jobs", unit="job", stream=unknown) as bar:
        bar.update(7)
    assert lines(unknown.getvalue())[0].startswith("jobs: 7 jobs")


def test_a_training_arm_logs_fewer_than_100_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 4, generator=generator), torch.randint(3, (200,), generator=generator)
    split = make_split("digits", Dataset(x, y, x, y), val_ratio=0.5, seed=0)
    student = torch.nn.Linear(4, 3)
    train_ce(student, split, total_steps=500, lr=0.1, evaluate=lambda model: 0.0, eval_every=500, progress=True)
    err = capsys.readouterr().err  # pytest's capture is no terminal
    assert 0 < len(lines(err)) < 100 and "\r" not in err
