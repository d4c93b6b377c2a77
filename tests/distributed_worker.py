"""One rank of tests/test_distributed.py: a gloo process group over a file store (no TCP rendezvous).

Run as ``python distributed_worker.py RANK WORLD_SIZE STORE_FILE OUT_DIR``; writes ``OUT_DIR/rank{RANK}.pt``.
The batches are the ones the test's single-process reference uses, each cut into ``WORLD_SIZE`` equal shards.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from distributed_setup import (
    ROUNDS,
    TEACHER_ARGS,
    cube_objective_scale,
    make_teacher_parts,
    one_round,
    round_batches,
    shards,
)
from test_hypergradient import CLASSES
from torch.nn.parallel import DistributedDataParallel

from dynaloss import ClassAwareDLN, Teacher
from dynaloss.distributed import RankMean


def double_backward(sync: RankMean, rank: int) -> dict[str, torch.Tensor]:
    """First and second derivatives through the rank mean, for the test's single-process reference."""
    x = torch.linspace(-1.0, 1.0, 3, dtype=torch.float64).add(0.3 * rank).requires_grad_()
    (mean,) = sync.mean([x])
    loss = cube_objective_scale(rank) * (mean**3).sum()
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    direction = torch.arange(1.0, 4.0, dtype=torch.float64) * (rank + 1)
    (second,) = torch.autograd.grad((grad * direction).sum(), x)
    return {"grad": grad.detach(), "second": second}


def main() -> None:
    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    sync = RankMean(dist.group.WORLD)
    results: dict[str, object] = {"double_backward": double_backward(sync, rank)}

    # one round as a pure computation: hypergradient, DLN update, teacher gradients
    results["round"] = one_round(sync, rank, world)

    # several committed rounds through Teacher.step with a DDP-wrapped student; one of them with an Inf on rank 1
    student, dln, model = make_teacher_parts()
    teacher = Teacher(dln, teacher=model, process_group=dist.group.WORLD, **TEACHER_ARGS)
    wrapped = DistributedDataParallel(student)
    records = []
    for index in range(ROUNDS):
        train, (val,) = round_batches(index)
        train, val = shards(train, rank, world), shards([val], rank, world)[0]
        if index == ROUNDS - 2 and rank == 1:
            val = (val[0].clone().index_fill_(1, torch.tensor([0]), math.inf), val[1])
        records.append(teacher.step(wrapped, iter(train), iter([val])).as_dict())
    results["records"] = records
    # copies: the state dicts share storage with the modules, which the checks below change
    results["teacher"] = copy.deepcopy(teacher.state_dict())
    results["student"] = copy.deepcopy(student.state_dict())

    # a rank whose DLN was changed behind the teacher's back is caught, on every rank
    with torch.no_grad():
        if rank == 1:
            next(teacher.loss_fn.parameters()).add_(1e-3)
    train, (val,) = round_batches(ROUNDS)
    try:
        teacher.step(wrapped, iter(shards(train, rank, world)), iter(shards([val], rank, world)))
        results["desync_error"] = None
    except RuntimeError as error:
        results["desync_error"] = str(error)

    # an iterator that ends early on one rank: every rank raises instead of waiting in a collective
    train, (val,) = round_batches(ROUNDS + 1)
    train = shards(train, rank, world)[: 1 if rank == 0 else None]
    try:
        teacher.step(wrapped, iter(train), iter(shards([val], rank, world)))
        results["short_iterator_error"] = None
    except ValueError as error:
        results["short_iterator_error"] = str(error)

    # ClassAwareDLN's label counts: every rank adds the ranks' mean counts, so the ranks keep one loss
    student, _, _ = make_teacher_parts()
    aware = ClassAwareDLN(CLASSES).double()
    counting = Teacher(aware, process_group=dist.group.WORLD, steps=2)
    train, (val,) = round_batches(0)
    counting.step(DistributedDataParallel(student), iter(shards(train, rank, world)), iter(shards([val], rank, world)))
    results["label_counts"] = (aware.train_label_counts.clone(), aware.target_label_counts.clone())

    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
