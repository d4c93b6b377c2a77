"""The README's loop, as examples/plain_loop.py runs it, works end to end (a short run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.subprocess
@pytest.mark.parametrize("loss", ["dln", "ce"])
def test_plain_loop_runs(loss: str) -> None:
    pytest.importorskip("mnist1d")
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plain_loop.py"), "--iterations", "45", "--loss", loss],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "final test accuracy" in done.stdout
    assert ("q = [" in done.stdout) == (loss == "dln")
