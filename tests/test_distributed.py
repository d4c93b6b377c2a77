"""Two gloo ranks, each on its shard, compute what one process computes on the union of the shards (float64).

The ranks are separate processes (tests/distributed_worker.py) that meet through a file store in ``tmp_path``:
no TCP rendezvous, so this process never opens a connection.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_setup import (
    ROUNDS,
    TEACHER_ARGS,
    WORLD_SIZE,
    cube_objective_scale,
    make_teacher_parts,
    one_round,
    round_batches,
)
from test_hypergradient import CLASSES

from dynaloss import Teacher
from dynaloss.distributed import RankMean, shard_batches

TOLERANCE = 1e-12  # float64; the ranks' mean of shard means and the union's mean differ only in rounding
WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Run the worker on every rank once; every test reads its results."""
    tmp = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    store = tmp / "store"
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(WORLD_SIZE), str(store), str(tmp)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output}"
    return [torch.load(tmp / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def max_difference(a: object, b: object) -> float:
    """The largest absolute difference between two nests of tensors and numbers (NaN equals NaN)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()  # type: ignore[union-attr]
        return max((max_difference(a[k], b[k]) for k in a), default=0.0)  # type: ignore[index]
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)  # type: ignore[arg-type]
        return max((max_difference(x, y) for x, y in zip(a, b)), default=0.0)  # type: ignore[arg-type]
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
        if not a.is_floating_point():
            return 0.0 if torch.equal(a, b) else math.inf
        same = (a == b) | (a.isnan() & b.isnan())
        return float((a - b).abs().where(~same, 0.0).max()) if a.numel() else 0.0
    if isinstance(a, float):
        return 0.0 if a == b or (math.isnan(a) and math.isnan(b)) else abs(a - b)  # type: ignore[operator]
    assert a == b
    return 0.0


def union_round() -> dict[str, object]:
    return one_round()


@pytest.mark.subprocess
def test_sharded_round_equals_the_round_on_the_union(ranks: list[dict]) -> None:
    reference = union_round()
    assert float(reference["flat_grad"].norm()) > 1e-3  # type: ignore[attr-defined]  # not vacuous
    differences = [max_difference(rank["round"], reference) for rank in ranks]
    print(f"hypergradient / DLN update / teacher gradients: max |rank - single process| = {max(differences):.3g}")
    assert max(differences) <= TOLERANCE


@pytest.mark.subprocess
def test_teacher_steps_on_ranks_equal_the_single_process_run(ranks: list[dict]) -> None:
    student, dln, model = make_teacher_parts()
    teacher = Teacher(dln, teacher=model, **TEACHER_ARGS)
    records = []
    for index in range(ROUNDS):
        train, (val,) = round_batches(index)
        if index == ROUNDS - 2:  # rank 1's shard of the validation batch held an Inf
            val = (val[0].clone(), val[1])
            val[0][val[0].shape[0] // WORLD_SIZE :, 0] = math.inf
        records.append(teacher.step(student, iter(train), iter([val])).as_dict())
    for record in records:
        record.pop("seconds")
    assert [r["skipped"] for r in records] == [False] * (ROUNDS - 2) + [True, False]

    worst = 0.0
    for rank in ranks:
        for record in rank["records"]:
            record.pop("seconds")
        worst = max(worst, max_difference(rank["records"], records))
        worst = max(worst, max_difference(rank["teacher"], teacher.state_dict()))
        worst = max(worst, max_difference(rank["student"], student.state_dict()))
    print(f"{ROUNDS} Teacher.step rounds: max |rank - single process| = {worst:.3g}")
    assert worst <= TOLERANCE
    # the ranks themselves agree bitwise (every update is computed from all-reduced values)
    assert max_difference(ranks[0]["teacher"], ranks[1]["teacher"]) == 0.0
    assert max_difference(ranks[0]["student"], ranks[1]["student"]) == 0.0


@pytest.mark.subprocess
def test_rank_mean_is_differentiable_twice(ranks: list[dict]) -> None:
    # one process with every rank's input: the ranks' derivatives are those of the sum of their objectives
    x = torch.stack(
        [torch.linspace(-1.0, 1.0, 3, dtype=torch.float64).add(0.3 * rank) for rank in range(WORLD_SIZE)]
    ).requires_grad_()
    mean = x.mean(0)
    loss = sum(cube_objective_scale(rank) * (mean**3).sum() for rank in range(WORLD_SIZE))
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    directions = torch.stack([torch.arange(1.0, 4.0, dtype=torch.float64) * (r + 1) for r in range(WORLD_SIZE)])
    (second,) = torch.autograd.grad((grad * directions).sum(), x)
    for rank, result in enumerate(ranks):
        assert torch.allclose(result["double_backward"]["grad"], grad[rank].detach(), rtol=0, atol=TOLERANCE)
        assert torch.allclose(result["double_backward"]["second"], second[rank], rtol=0, atol=TOLERANCE)
        assert result["double_backward"]["second"].abs().max() > 0.1


@pytest.mark.subprocess
def test_ranks_that_drift_apart_are_caught_on_every_rank(ranks: list[dict]) -> None:
    for rank in ranks:
        assert "ranks out of sync" in rank["desync_error"] and "DLN parameters" in rank["desync_error"]


@pytest.mark.subprocess
def test_an_iterator_ending_early_on_one_rank_raises_on_every_rank(ranks: list[dict]) -> None:
    assert "train_iter ended after 1 batches" in ranks[0]["short_iterator_error"]
    assert "another rank could not draw" in ranks[1]["short_iterator_error"]


def test_process_group_without_torch_distributed_raises() -> None:
    with pytest.raises(ValueError, match="needs an initialised torch.distributed"):
        RankMean(None)


def test_ddp_student_without_a_process_group_raises() -> None:
    student, dln, model = make_teacher_parts()
    teacher = Teacher(dln, teacher=model, **TEACHER_ARGS)
    wrapped = torch.nn.DataParallel(student)  # the same wrapper check, without a process group
    train, (val,) = round_batches(0)
    with pytest.raises(ValueError, match="wrapped in DataParallel but the Teacher has no process_group"):
        teacher.step(wrapped, iter(train), iter([val]))


@pytest.mark.subprocess
def test_ranks_add_the_same_label_counts_their_mean(ranks: list[dict]) -> None:
    """ClassAwareDLN's prior correction: each rank counts its shards, and every rank adds the ranks' mean."""
    train, (val,) = round_batches(0)
    union = [torch.bincount(torch.cat([b[1] for b in batches]), minlength=CLASSES) for batches in (train[:2], [val])]
    expected = [(counts.double() / WORLD_SIZE).round().long() for counts in union]
    for rank in ranks:
        assert [c.tolist() for c in rank["label_counts"]] == [c.tolist() for c in expected]
    assert int(expected[0].sum()) > 0


def test_shards_concatenate_to_the_batch() -> None:
    batches = [(torch.arange(6.0).view(6, 1), torch.arange(6))]
    parts = [next(shard_batches(iter(batches), rank, 3)) for rank in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), batches[0][0])
    with pytest.raises(ValueError, match="6 samples cannot be split into 4 equal shards"):
        next(shard_batches(iter(batches), 0, 4))


def free_port() -> int:
    """A port nothing listens on now (binding only: this process connects nowhere)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.subprocess
@pytest.mark.slow
def test_train_command_runs_under_torchrun(tmp_path: Path) -> None:
    """``dynaloss train`` on two gloo ranks: rank 0 writes the files, the run ends normally (about 15 s)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD_SIZE)]
    command += [
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "dynaloss.harness.cli",
        "train",
        "--data",
        "digits",
    ]
    command += ["--unroll", "2", "--total-steps", "40", "--eval-every", "20", "--device", "cpu", "--no-progress"]
    command += ["--checkpoint-every", "2", "--out", str(tmp_path)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert {p.name for p in tmp_path.iterdir()} >= {"metrics.json", "student.pt", "teacher.pt", "checkpoint.pt"}
    assert finished.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
