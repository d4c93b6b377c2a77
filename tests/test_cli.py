"""The ``dynaloss`` command end to end, in-process: demo, train, plot, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynaloss.harness.cli import DEMO_LRS, main, parser_defaults
from dynaloss.presets import PRESETS
from dynaloss.settings import DEFAULT_DLN, DEFAULT_TEACHER, TEACH_EVERY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quick_demo_trains_three_arms_at_the_tuned_rate_and_draws_the_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    config, arms, tuning = results["config"], results["arms"], results["tuning"]
    assert set(arms) == {"CE", "GCE", "dynaloss"}
    assert {arm["student_steps"] for arm in arms.values()} == {config["total_steps"]}
    assert arms["CE"]["steps"] == arms["GCE"]["steps"] == arms["dynaloss"]["steps"]  # evaluated at the same steps
    # the rate is CE's best on held-out trusted samples, never on the test set
    assert tuning["picked_lr"] in config["tune_lrs"] and set(tuning["scores"]) == {str(lr) for lr in DEMO_LRS}
    assert tuning["scores"][str(tuning["picked_lr"])] == max(tuning["scores"].values())
    # the README's loop: a round after the first step and every TEACH_EVERY steps after it
    assert len(arms["dynaloss"]["rounds"]) == -(-config["total_steps"] // TEACH_EVERY)
    assert len(arms["CE"]["rounds"]) == len(arms["GCE"]["rounds"]) == 0
    assert config["teacher"] == dict(PRESETS["default"]["teacher"]) and config["dln"]["preset"] == "default"
    assert set(results["taught_dln"]) == {"offsets", "robustness", "q", "prior_correction", "pair_weights"}
    pair_weights = torch.tensor(results["taught_dln"]["pair_weights"])  # the default's forward form: eps in (0, 1]
    assert pair_weights.shape == (10, 10) and bool((pair_weights.diagonal() == 1).all())
    assert 0 < float(pair_weights.min()) and float(pair_weights.max()) <= 1
    for name in ("sample_weight.png", "loss_surface.png", "accuracy.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    captured = capsys.readouterr()
    assert "machine:" in captured.out and "torch=" in captured.out and "every arm trains at lr" in captured.out
    assert "pair weights, the 5 largest: label" in captured.out
    table = captured.out[captured.out.index("test acc %") :]
    assert all(name in table for name in ("CE", "GCE (q = 0.7)", "dynaloss"))
    # stderr is no terminal here: about one progress line per tenth of each run, not a bar rewritten in place
    assert 0 < captured.err.count("\n") < 100 and "\r" not in captured.err


def test_train_and_demo_defaults_are_the_librarys() -> None:
    assert parser_defaults("train") == {**DEFAULT_TEACHER, **DEFAULT_DLN}
    # the demo runs the README's dynaloss.pairwise_teacher(C, optimizer=optimizer): the "default" preset
    assert parser_defaults("demo") == {**PRESETS["default"]["teacher"], **PRESETS["default"]["dln"]}


@pytest.mark.parametrize(("mode", "rounds"), [("paper", 2), ("lookahead", 4), ("research", 4)])
def test_train_on_digits_saves_metrics_student_and_teacher(tmp_path: Path, mode: str, rounds: int) -> None:
    argv = ["train", "--data", "digits", "--loss", "dln", "--mode", mode, "--teacher", "adam", "--unroll", "2"]
    argv += ["--total-steps", "8", "--eval-every", "4", "--out", str(tmp_path), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["result"]["student_steps"] == 8 and metrics["result"]["steps"] == [0, 4, 8]
    assert len(metrics["result"]["rounds"]) == rounds  # 2N student steps a round in paper mode, N otherwise
    teacher_state = torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert {"loss_fn", "teacher_model", "memory", "rounds"} <= set(teacher_state)
    assert "net.1.weight" in torch.load(tmp_path / "student.pt", weights_only=True)

    assert main(["plot", str(tmp_path / "teacher.pt"), "--out", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("loss", ["ce", "dln"])
def test_the_cosine_schedule_is_the_default_and_reaches_the_student(tmp_path: Path, loss: str) -> None:
    argv = ["train", "--data", "digits", "--loss", loss, "--unroll", "2", "--total-steps", "8", "--no-progress"]
    students = {}
    for schedule in ("default", "constant"):
        out = tmp_path / schedule
        assert main([*argv, "--out", str(out)] + (["--lr-schedule", schedule] if schedule != "default" else [])) == 0
        assert json.loads((out / "metrics.json").read_text())["config"]["lr_schedule"] == schedule.replace(
            "default", "cosine"
        )
        students[schedule] = torch.load(out / "student.pt", weights_only=True)
    # the first step has the same lr under both; the later, smaller cosine steps must leave another student
    assert not torch.equal(students["default"]["net.1.weight"], students["constant"]["net.1.weight"])


def test_train_with_cross_entropy(tmp_path: Path) -> None:
    argv = ["train", "--data", "digits", "--loss", "ce", "--total-steps", "5", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["result"]["student_steps"] == 5
    assert not (tmp_path / "teacher.pt").exists()


def test_missing_cifar_directory_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-cifar-here"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "cifar10", "--data-dir", str(missing), "--out", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2
    assert str(missing) in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["train", "--data", "cifar100", "--out", str(tmp_path), "--no-progress"])
    assert "--data-dir is required for cifar100" in capsys.readouterr().err


def test_bad_arguments_and_missing_files_exit_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = [
        ["train", "--val-ratio", "1.5"],
        ["demo", "--total-steps", "0"],
        ["demo", "--steps", "0"],
        ["train", "--seed", "-1"],
        ["demo", "--device", "gpu"],
    ]
    if not torch.cuda.is_available():
        bad.append(["demo", "--device", "cuda"])
    for argv in [*bad, ["plot", str(tmp_path / "none.pt")]]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "none.pt" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "monotone"), [([], True), (["--init", "paper", "--unconstrained"], False)])
def test_train_builds_the_constrained_dln_unless_asked_for_the_papers(
    tmp_path: Path, flags: list[str], monotone: bool
) -> None:
    argv = ["train", "--data", "digits", "--unroll", "2", "--total-steps", "4", "--eval-every", "4", *flags]
    assert main([*argv, "--out", str(tmp_path), "--device", "cpu", "--no-progress"]) == 0
    state = torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert state["loss_fn"]["_extra_state"]["monotone"] is monotone


def test_bench_writes_round_time_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "round_time"
    argv = ["bench", "--student", "mnist1d-cnn", "--unroll", "1", "--repeats", "1", "--device", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["N"] == 1 and row["round_s"] > 0 and row["ratio"] == row["round_s"] / row["plain_s"]
    assert "round / plain" in out.with_suffix(".md").read_text()
    assert "machine:" in capsys.readouterr().out
