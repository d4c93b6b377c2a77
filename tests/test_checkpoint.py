"""Crash-safe checkpoints: atomic writes, and a run killed mid-way and resumed ends as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dynaloss.harness.checkpoint import RunCheckpoint, restore_rng_state, rng_state, save_atomic
from dynaloss.harness.cli import CHECKPOINT, main

# the default teacher (lookahead, LSTM) on digits, with the default cosine schedule: 20 rounds of N = 2 own steps
# and a teacher round each, a checkpoint every 2 rounds
TRAIN = ["train", "--data", "digits", "--unroll", "2", "--total-steps", "40", "--eval-every", "10", "--no-progress"]


def tensors_equal(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def outcome(out: Path) -> dict[str, object]:
    """What a finished run leaves behind, without the wall times."""
    result = json.loads((out / "metrics.json").read_text())["result"]
    for record in result["rounds"]:
        record.pop("seconds")
    return {
        "steps": result["steps"],
        "accuracy": result["accuracy"],
        "rounds": result["rounds"],
        "student": torch.load(out / "student.pt", weights_only=True),
        "teacher": torch.load(out / "teacher.pt", weights_only=True),
    }


@pytest.mark.subprocess
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main([*TRAIN, "--out", str(reference)]) == 0

    argv = [*TRAIN, "--out", str(killed), "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dynaloss.harness.cli", *argv], env=env, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (killed / CHECKPOINT).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert still_running, "the run ended before it could be killed: give it more steps"
    assert not (killed / "metrics.json").exists()
    saved = torch.load(killed / CHECKPOINT, weights_only=True)
    saved_rounds = saved["rounds"]
    assert 0 < saved_rounds < 20
    # the learning-rate scheduler is saved with the optimizer: it has taken one step per student step
    assert saved["parts"]["scheduler"]["last_epoch"] == saved["run"]["result"]["student_steps"] == 2 * saved_rounds

    assert main([*argv, "--resume"]) == 0
    resumed, uninterrupted = outcome(killed), outcome(reference)
    assert resumed["accuracy"] == uninterrupted["accuracy"] and resumed["steps"] == uninterrupted["steps"]
    assert resumed["rounds"] == uninterrupted["rounds"]
    assert tensors_equal(resumed["student"], uninterrupted["student"])
    assert tensors_equal(resumed["teacher"], uninterrupted["teacher"])  # DLN, LSTM, Adam state, memory
    print(f"killed after {saved_rounds} of 20 rounds had been saved; resumed run equals the uninterrupted one bitwise")


def test_resume_with_other_settings_raises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", "digits", "--loss", "ce", "--total-steps", "4", "--no-progress", "--out", str(tmp_path)]
    assert main([*argv, "--checkpoint-every", "2"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--resume", "--lr", "0.05"])
    assert exit_info.value.code == 2
    assert "written by a run with other settings" in capsys.readouterr().err


def test_save_atomic_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = save_atomic({"value": torch.ones(2)}, tmp_path / "state.pt")

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("cannot be saved")

    with pytest.raises(RuntimeError, match="cannot be saved"):
        save_atomic({"value": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


def test_rng_state_round_trip_replays_every_generator() -> None:
    import random

    import numpy as np

    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and (first[1] == second[1]).all() and first[2] == second[2]


def test_skipped_rounds_are_not_saved(tmp_path: Path) -> None:
    class Part:
        def __init__(self) -> None:
            self.value = 0

        def state_dict(self) -> dict:
            return {"value": self.value}

        def load_state_dict(self, state: dict) -> None:
            self.value = state["value"]

    part, checkpoint = Part(), RunCheckpoint(tmp_path / "c.pt", every=1)
    part.value = 1
    assert checkpoint.after_round({"part": part}, {}, changed=True)
    part.value = 2
    assert not checkpoint.after_round({"part": part}, {}, changed=False)
    restored = Part()
    RunCheckpoint(tmp_path / "c.pt", resume=True).restore({"part": restored})
    assert restored.value == 1
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        RunCheckpoint(tmp_path / "c.pt", every=0)
