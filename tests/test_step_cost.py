"""benchmarks/step_cost.py runs end to end and writes what it promises (a smoke test: its numbers are not checked)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

from dynaloss.harness.cli import main as dynaloss_main
from dynaloss.harness.data import Dataset

CPU = torch.device("cpu")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_cost.py"


@pytest.fixture(scope="module")
def step_cost() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("step_cost", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_cost"] = module  # the Row dataclass looks its module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("step_cost", None)


def tiny_rows(step_cost: ModuleType) -> list[Any]:
    """Tiny stand-ins for the real rows: a classifier and a per-pixel net with ignored pixels and a pixel budget."""
    Row = step_cost.Row
    return [
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


def test_step_cost_times_every_arm_and_the_readme_loop(
    step_cost: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "step_cost"
    report = step_cost.run_step_cost(
        tiny_rows(step_cost),
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
            assert set(times) == set(step_cost.ARMS) and all(ms > 0 for ms in times.values())
            assert set(ratios) == set(step_cost.ARMS) - {"ce"}
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


def test_the_script_times_a_row_from_the_command_line(step_cost: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    argv = ["--rows", "mlp-40", "--repeats", "1", "--skip-e2e", "--no-progress", "--out", str(out)]
    assert step_cost.main(argv) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["end_to_end"] is None and report["machine"]["device"] == "cpu"
    (row,) = report["rows"]
    assert row["row"] == "mlp-40" and row["logits"] == [25, 10] and row["step_ms"]["ce"] > 0


def test_the_dynaloss_command_times_teacher_rounds_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        dynaloss_main(["bench", "--step-cost"])
    assert stopped.value.code == 2 and "unrecognized arguments: --step-cost" in capsys.readouterr().err
