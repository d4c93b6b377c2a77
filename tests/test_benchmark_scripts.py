"""The benchmark scripts run and write what they promise (a smoke test: their numbers are not checked)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_round_breakdown_times_every_part_of_a_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "breakdown"
    argv = ["round_breakdown.py", "--unroll", "2", "--repeats", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCHMARKS / "round_breakdown.py"), run_name="__main__")
    result = json.loads(out.with_suffix(".json").read_text())
    parts = result["median_s"]
    assert len(parts) == 7 and all(seconds > 0 for seconds in parts.values())
    round_parts = [name for name in parts if not name.startswith("reference")]
    assert result["round_s"] == pytest.approx(sum(parts[name] for name in round_parts))
    table = out.with_suffix(".md").read_text()
    assert "machine:" in table and all(name in table for name in parts)
