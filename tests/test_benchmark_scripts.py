"""The benchmark scripts run and write what they promise (a smoke test: their numbers are not checked)."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = "benchmarks/results/"


def cited_results(*pages: Path) -> set[str]:
    """Every ``benchmarks/results/...`` path or pattern the pages name, with ``{a,b}`` expanded."""
    found: set[str] = set()
    for page in pages:
        for cited in re.findall(r"benchmarks/results/[\w.*{},/-]+", page.read_text()):
            cited = cited.rstrip(".,)")
            braces = re.search(r"\{([^}]*)\}", cited)
            options = braces.group(1).split(",") if braces else [""]
            found |= {cited.replace(braces.group(0), o) if braces else cited for o in options}
    return found


def names(cited: str, path: str) -> bool:
    """A page's citation names a file: the path itself, a glob, an ``--out`` prefix (OUT.json) or a folder."""
    return path == cited or fnmatch.fnmatch(path, cited) or path.startswith((cited + ".", cited.rstrip("/") + "/"))


def result_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / RESULTS).rglob("*") if p.is_file())


def test_every_result_file_is_cited_by_the_page_that_shows_its_table() -> None:
    # one current result per table: a file no page cites is a stale one (its story goes to docs/history.md)
    cited = cited_results(ROOT / "README.md", ROOT / "docs" / "results.md", BENCHMARKS / "README.md")
    uncited = [path for path in result_files() if not any(names(c, path) for c in cited)]
    assert uncited == [], "cite each as its table's result in docs/results.md or README.md, or delete it"


def test_every_result_the_readme_and_results_page_cite_exists() -> None:
    files = result_files()
    cited = cited_results(ROOT / "README.md", ROOT / "docs" / "results.md")
    assert cited and [c for c in sorted(cited) if not any(names(c, path) for path in files)] == []


def test_the_benchmark_protocol_names_every_script() -> None:
    protocol = (BENCHMARKS / "README.md").read_text()
    scripts = [p.name for p in BENCHMARKS.iterdir() if p.suffix in (".py", ".sh")]
    assert scripts and [name for name in scripts if f"`{name}`" not in protocol] == []


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


def test_fast_path_times_every_arm_and_leaves_the_table_size_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynaloss import _fast_pairwise as fast_pairwise

    out, kept = tmp_path / "fast_path", fast_pairwise.TABLE_ROWS
    argv = ["fast_path.py", "--repeats", "1", "--cycle", "1", "--max-rows", "250", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCHMARKS / "fast_path.py"), run_name="__main__")
    result = json.loads(out.with_suffix(".json").read_text())
    assert [(row["init"], row["rows"]) for row in result["rows"]] == [("ce", 250), ("warm", 250)]
    assert all(row[arm] > 0 for row in result["rows"] for arm in ("forward-mode", "table", "autograd"))
    assert "machine:" in out.with_suffix(".md").read_text() and fast_pairwise.TABLE_ROWS == kept


@pytest.mark.subprocess
def test_user_loop_writes_every_cell_and_resumes_without_rerunning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # imported as a module (not run as __main__) so that worker processes can find run_job by name
    spec = importlib.util.spec_from_file_location("user_loop", BENCHMARKS / "user_loop.py")
    assert spec is not None and spec.loader is not None
    user_loop = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "user_loop", user_loop)
    spec.loader.exec_module(user_loop)
    out = tmp_path / "grid"
    argv = [
        *("--students", "mlp", "--data", "digits", "--recipes", "sgd", "--seeds", "2", "--steps", "40"),
        *("--teach-every", "20", "--eval-every", "20", "--tune-holdout", "0.2", "--out", str(out)),
    ]
    assert user_loop.main([*argv, "--jobs", "2"]) == 0
    lines = (out / "runs.jsonl").read_text().splitlines()
    # tune: 4 arms x 3 rates; seeds: 4 arms x 2 seeds; ce-time: 2 seeds
    assert len(lines) == 12 + 8 + 2
    report = json.loads((out / "user_loop.json").read_text())
    assert {"machine", "config", "tuning", "rows", "grid_averages", "runs"} <= set(report)
    assert report["config"]["seed_list"] == [0, 1]
    arms = {row["arm"] for row in report["rows"]}
    assert arms == {"ce", "dln-fixed", "dln-taught-K20", "paper", "ce-time"}
    assert all(len(row["finals"]) == 2 and 0.0 <= row["mean"] <= 1.0 for row in report["rows"])
    # the taught arm's lr was picked on the tune phase's held-out split, never on the test set
    tuned = {t["arm"]: t for t in report["tuning"]}
    assert tuned["dln-taught-K20"]["tuned"] and len(tuned["dln-taught-K20"]["scores"]) == 3
    table = (out / "user_loop.md").read_text()
    assert "machine:" in table and "| mlp | digits | sgd | ce-time |" in table

    assert user_loop.main([*argv, "--jobs", "1"]) == 0  # a re-run finds every job done
    assert (out / "runs.jsonl").read_text().splitlines() == lines
