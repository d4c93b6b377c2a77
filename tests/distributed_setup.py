"""What tests/test_distributed.py and its worker processes share: models, teacher settings and batches."""

from __future__ import annotations

import torch
from test_hypergradient import make_batches, make_dln, make_student
from torch import nn

import dynaloss

WORLD_SIZE = 2
ROUNDS = 5  # committed rounds, and (the one before last) a round that one rank's Inf makes every rank skip
TEACHER_ARGS = {"steps": 2, "student_lr": 0.3, "dln_lr": 0.5, "anchor": 0.05, "mode": "paper"}


def make_teacher_parts() -> tuple[nn.Module, dynaloss.PairwiseDLN, dynaloss.LSTMTeacher]:
    """A float64 student (no BatchNorm: per-shard batch statistics are not the union's), DLN and LSTM."""
    student, dln = make_student(seed=40), make_dln(seed=41)
    torch.manual_seed(42)
    return student, dln, dynaloss.LSTMTeacher(hidden_size=5, num_layers=2).double()


def make_round_inputs() -> tuple[list, list, tuple]:
    """Stage I's and stage III's global batches (8 samples each) and a validation batch of 16."""
    return make_batches(2, 8, seed=43), make_batches(2, 8, seed=44), make_batches(1, 16, seed=45)[0]


def round_batches(index: int) -> tuple[list, list]:
    """The ``2N`` global train batches and the validation batch of the ``index``-th Teacher.step round."""
    return make_batches(4, 8, seed=100 + index), make_batches(1, 16, seed=200 + index)


def cube_objective_scale(rank: int) -> float:
    """Each rank's weight in the double-backward check's objective ``c_r * sum(mean(x) ** 3)``."""
    return 1.0 + 2.0 * rank
