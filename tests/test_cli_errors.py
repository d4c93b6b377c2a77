"""The command line never shows a traceback for a user error, and never exits 0 on a non-finite result (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynaloss.harness.cli import CHECKPOINT, main

CE = ["train", "--data", "digits", "--loss", "ce", "--total-steps", "4", "--no-progress"]
DLN = ["train", "--data", "digits", "--unroll", "2", "--total-steps", "8", "--no-progress"]


def fails_cleanly(argv: list[str], capsys: pytest.CaptureFixture[str], code: int, *phrases: str) -> str:
    """Run ``argv``; it must exit with ``code`` and a one-line message holding ``phrases``, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04 truncated zip", b"just some text\n", "a torch file of a list"], ids=str
)
def test_resume_from_a_corrupted_or_foreign_file_is_a_one_line_error(tmp_path, capsys, content):
    # before: RuntimeError, EOFError or KeyError tracebacks
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / CHECKPOINT
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save([1, 2, 3], path)
    fails_cleanly([*CE, "--out", str(tmp_path), "--resume"], capsys, 2, str(path), "not a dynaloss train checkpoint")


def test_resume_from_a_checkpoint_with_nan_weights_is_refused(tmp_path, capsys):
    # before: it resumed, and wrote a NaN student.pt with exit status 0
    assert main([*DLN, "--out", str(tmp_path), "--checkpoint-every", "1"]) == 0
    path = tmp_path / CHECKPOINT
    payload = torch.load(path, weights_only=True)
    student = payload["parts"]["student"]
    first = next(key for key, value in student.items() if value.is_floating_point())
    student[first].view(-1)[0] = float("nan")
    torch.save(payload, path)
    fails_cleanly([*DLN, "--out", str(tmp_path), "--checkpoint-every", "1", "--resume"], capsys, 2, "NaN or Inf")


def test_a_non_finite_learning_rate_is_refused(tmp_path, capsys):
    # before: --lr inf trained a NaN student with exit status 0
    for value in ("inf", "nan", "-1"):
        fails_cleanly([*CE, "--out", str(tmp_path), "--lr", value], capsys, 2, "--lr", "finite number > 0")


def test_a_run_that_ends_with_a_non_finite_student_exits_non_zero(tmp_path, capsys):
    fails_cleanly([*CE, "--out", str(tmp_path), "--lr", "1e30"], capsys, 1, "not finite", "lower --lr")


def test_out_pointing_at_a_file_is_a_clear_error(tmp_path, capsys):
    # before: a FileExistsError traceback
    path = tmp_path / "results"
    path.write_text("not a folder")
    fails_cleanly([*CE, "--out", str(path)], capsys, 2, "is an existing file", "--out names the folder")


def test_plot_of_a_file_that_is_not_a_state_explains_what_it_expects(tmp_path, capsys):
    # before: torch's "weights-only load failed ... please file an issue" traceback
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    fails_cleanly(
        ["plot", str(path), "--out", str(tmp_path / "fig.png")], capsys, 2, "is not a teacher.pt or DLN state"
    )


def test_a_good_resume_still_works(tmp_path: Path):
    assert main([*DLN, "--out", str(tmp_path), "--checkpoint-every", "1"]) == 0
    assert main([*DLN, "--out", str(tmp_path), "--checkpoint-every", "1", "--resume"]) == 0
