"""The library needs torch and numpy only: the harness's dependencies are the ``demo`` extra (issue 14)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess  # every test runs a fresh interpreter

HARNESS = ("matplotlib", "sklearn", "mnist1d")


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_the_library_imports_none_of_the_harness_dependencies():
    # (tqdm is left out: torch imports it by itself when it is installed)
    done = run(f"import sys, dynaloss; print([m for m in {HARNESS!r} if m in sys.modules])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_student_trains_with_a_dln_and_a_teacher_without_the_harness():
    # the harness's modules made unimportable, as in a venv with no extras
    code = f"""
import sys
for name in {HARNESS + ("tqdm",)!r}:
    sys.modules[name] = None
import torch, dynaloss
torch.manual_seed(0)
student = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
loss_fn = dynaloss.PairwiseDLN(3, init="ce")
teacher = dynaloss.Teacher(loss_fn, optimizer=optimizer, steps=2, mode="lookahead")
batches = lambda: iter([(torch.randn(16, 8), torch.randint(3, (16,))) for _ in range(4)])
for it in range(6):
    x, y = torch.randn(16, 8), torch.randint(3, (16,))
    loss = loss_fn(student(x), y)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    if it % 3 == 2:
        assert not teacher.step(student, batches(), batches()).skipped
print(teacher.rounds)
"""
    done = run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


def test_the_command_line_without_the_demo_extra_says_what_to_install():
    done = run("import sys; sys.modules['matplotlib'] = None; from dynaloss._entry import main; sys.exit(main())")
    assert done.returncode == 2
    assert "needs the 'demo' extra" in done.stderr and "Traceback" not in done.stderr
