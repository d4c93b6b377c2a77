"""The round follows the student onto a GPU (skipped where there is none, as in CI)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_hypergradient import LR, make_batches, make_dln, make_student

import dynaloss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_round_on_cuda_matches_cpu_in_float64() -> None:
    student, dln = make_student(batchnorm=True), make_dln()
    torch.manual_seed(0)
    cpu_teacher = dynaloss.Teacher(dln, steps=2, student_lr=LR)
    gpu_student = copy.deepcopy(student).cuda()
    torch.manual_seed(0)
    gpu_teacher = dynaloss.Teacher(copy.deepcopy(dln), steps=2, student_lr=LR)  # moved by step()
    batches, vals = make_batches(4, 8, seed=1), make_batches(1, 16, seed=2)
    cpu = cpu_teacher.step(student, iter(batches), iter(vals))
    gpu = gpu_teacher.step(gpu_student, iter(batches), iter(vals))  # CPU batches are moved to the student
    assert next(gpu_teacher.loss_fn.parameters()).is_cuda and gpu_teacher.memory[0].is_cuda
    assert gpu.val_error_after == pytest.approx(cpu.val_error_after, rel=1e-9)
    for a, b in zip(student.state_dict().values(), gpu_student.state_dict().values()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-9, atol=1e-12)
