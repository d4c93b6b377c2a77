"""The step-cost benchmark runs end to end and writes what it promises (a smoke test: its numbers are not checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dynaloss.harness.cli import main
from dynaloss.harness.data import Dataset
from dynaloss.harness.step_cost import ARMS, Row, measure_end_to_end, run_step_cost

CPU = torch.device("cpu")
# tiny stand-ins for the real rows: a classifier and a per-pixel net with ignored pixels and a pixel budget
TINY_ROWS = [
    Row("tiny-mlp", "MLP 8-5", lambda: nn.Linear(8, 5), (8,), 4, 5, steps_per_block=2),
    Row(
        "tiny-pixel",
        "FCN 3-4",
        lambda: nn.Conv2d(3, 4, 3, padding=1),
        (3, 6, 6),
        2,
        4,
        spatial=(6, 6),
        ignore_index=255,
        ignore_share=0.2,
        max_pixels=8,
    ),
]


def _tiny_mnist1d_like() -> Dataset:
    """400 random length-40 series in 10 classes: enough for a val quarter of one 100-sample batch."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 1, 40, generator=generator), torch.randint(10, (400,), generator=generator)
    return Dataset(x, y, x[:10], y[:10])


def test_step_cost_times_every_arm_and_the_readme_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "step_cost"
    report = run_step_cost(
        TINY_ROWS,
        device=CPU,
        out=out,
        repeats=1,
        e2e_steps=4,
        e2e_every=2,
        e2e_unroll=1,
        e2e_data=_tiny_mnist1d_like(),
        progress=False,
    )
    assert json.loads(out.with_suffix(".json").read_text()) == report
    assert {"machine", "config", "rows", "end_to_end"} <= set(report)
    assert [row["row"] for row in report["rows"]] == ["tiny-mlp", "tiny-pixel"]
    for row in report["rows"]:
        for measured in ("step", "loss"):
            times, ratios = row[f"{measured}_ms"], row[f"{measured}_ratio"]
            assert set(times) == set(ARMS) and all(ms > 0 for ms in times.values())
            assert set(ratios) == set(ARMS) - {"ce"}
            assert all(ratios[arm] == times[arm] / times["ce"] for arm in ratios)
    assert report["rows"][1]["logits"] == [2, 4, 6, 6] and report["rows"][1]["max_pixels"] == 8

    e2e = report["end_to_end"]
    assert e2e["steps"] == 4 and e2e["rounds"] == 2  # a round at iterations 0 and 2
    assert e2e["ce_s"] > 0 and e2e["taught_s"] > 0 and e2e["ratio"] == e2e["taught_s"] / e2e["ce_s"]
    assert 0 < e2e["rounds_s"] < e2e["taught_s"] and e2e["rounds_share"] == e2e["rounds_s"] / e2e["taught_s"]

    table = out.with_suffix(".md").read_text()
    assert table.startswith("machine:") and "config:" in table
    assert "| step ms | step / CE |" in table and "| FCN 3-4 | 2x4x6x6 | PairwiseDLN warm, exact MLP |" in table
    assert '| README loop (DLN init="ce", K = 2, N = 1) | 4 |' in table and "| outside rounds / CE |" in table
    printed = capsys.readouterr().out
    assert "machine:" in printed and "config:" in printed and "| share in rounds |" in printed


def test_bench_step_cost_is_reachable_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    argv = ["bench", "--step-cost", "--rows", "mlp-40", "--repeats", "1", "--skip-e2e", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["end_to_end"] is None and report["machine"]["device"] == "cpu"
    (row,) = report["rows"]
    assert row["row"] == "mlp-40" and row["logits"] == [25, 10] and row["step_ms"]["ce"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--step-cost", "--unroll", "3"], "--unroll cannot be used with --step-cost"),
        (["--rows", "mlp-40", "--skip-e2e"], "--rows, --skip-e2e need --step-cost"),
    ],
)
def test_bench_refuses_an_option_of_the_other_measurement(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["bench", *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_measure_end_to_end_takes_total_steps() -> None:
    new = measure_end_to_end(device=CPU, total_steps=2, every=2, unroll=1, data=_tiny_mnist1d_like())
    assert new["steps"] == 2 and new["rounds"] == 1
    with pytest.raises(TypeError, match="steps"):
        measure_end_to_end(device=CPU, steps=2, every=2, unroll=1, data=_tiny_mnist1d_like())  # type: ignore[call-arg]
