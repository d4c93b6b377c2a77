"""What tests/test_distributed.py and its worker processes share: models, teacher settings and batches."""

from __future__ import annotations

import torch
from test_hypergradient import make_batches, make_dln, make_student
from torch import nn

import dynaloss
from dynaloss._batches import as_batch
from dynaloss._round import compute_round
from dynaloss._unroll import default_val_loss
from dynaloss.distributed import RankMean, shard_batches

WORLD_SIZE = 2
ROUNDS = 5  # committed rounds, and (the one before last) a round that one rank's Inf makes every rank skip
TEACHER_ARGS = {"steps": 2, "student_lr": 0.3, "dln_lr": 0.5, "anchor_strength": 0.05, "mode": "paper"}


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


def shards(batches: list, rank: int, world: int) -> list:
    return list(shard_batches(iter(batches), rank, world))


def one_round(sync: RankMean | None = None, rank: int = 0, world: int = 1) -> dict[str, object]:
    """One round as a pure computation on ``rank``'s shard of the shared inputs (the union when ``world == 1``)."""
    student, dln, model = make_teacher_parts()
    first, second, val = make_round_inputs()
    cpu = torch.device("cpu")
    outcome = compute_round(
        student,
        dln,
        model,
        None,
        [as_batch(b, "first", cpu) for b in shards(first, rank, world)],
        [as_batch(b, "second", cpu) for b in shards(second, rank, world)],
        as_batch(shards([val], rank, world)[0], "val", cpu),
        student_lr=TEACHER_ARGS["student_lr"],
        dln_lr=TEACHER_ARGS["dln_lr"],
        val_loss=default_val_loss(dln),
        **({} if sync is None else {"sync": sync}),
    )
    return {
        "flat_grad": outcome.flat_grad,
        "new_phi": outcome.new_phi,
        "teacher_grads": outcome.teacher_grads,
        "error_before": outcome.error_before,
        "error_after": outcome.error_after,
    }
