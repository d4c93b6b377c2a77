"""Teacher-round time and memory against plain cross-entropy steps (README, Performance).

A round and ``2N`` plain SGD steps of the same student on the same batches are timed alternately in one
process, so a busy machine slows both alike and their ratio stays meaningful (absolute seconds do not).
"""

from __future__ import annotations

import copy
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynaloss.harness.models import MNIST1DCNN, ResNet8
from dynaloss.harness.training import machine_info
from dynaloss.losses.pairwise import PairwiseDLN
from dynaloss.teacher import Teacher

__all__ = ["STUDENTS", "bench_round", "markdown_table", "run_benchmark"]

# name: (model factory, one input's shape)
STUDENTS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet8": (ResNet8, (3, 32, 32)),
    "mnist1d-cnn": (MNIST1DCNN, (1, 40)),
}


def _peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """Peak memory so far and how it was measured."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    # ru_maxrss is KiB on Linux, bytes on macOS; it never goes down, so it bounds the process, not one round
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "peak RSS of the process"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_round(
    student_name: str,
    steps: int,
    *,
    device: torch.device,
    train_batch: int = 25,
    val_batch: int = 100,
    repeats: int = 5,
    warmup: int = 2,
    checkpoint: bool = False,
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Median seconds of a ``Teacher.step`` round and of ``2N`` plain CE steps, measured alternately.

    The paper's configuration: a :class:`~dynaloss.PairwiseDLN` (``4 -> 40 x 4 -> 1``), the LSTM teacher,
    ``mode='paper'``, fp32, random inputs of the student's shape and 10 classes.

    Returns:
        ``{"round_s", "plain_s", "ratio", "peak_mib", "memory", ...}`` with the configuration.
    """
    make_student, shape = STUDENTS[student_name]
    torch.manual_seed(seed)
    student = make_student().to(device)
    plain_student = copy.deepcopy(student)
    teacher = Teacher(
        PairwiseDLN(10).to(device), steps=steps, mode="paper", checkpoint=checkpoint, autocast_dtype=autocast_dtype
    )
    generator = torch.Generator().manual_seed(seed)
    train = [
        (torch.randn(train_batch, *shape, generator=generator), torch.randint(10, (train_batch,), generator=generator))
        for _ in range(2 * steps)
    ]
    train = [(x.to(device), y.to(device)) for x, y in train]
    val = [(torch.randn(val_batch, *shape, generator=generator).to(device), torch.randint(10, (val_batch,)).to(device))]
    optimizer = torch.optim.SGD(plain_student.parameters(), lr=teacher.student_lr)

    def one_round() -> None:
        record = teacher.step(student, iter(train), iter(val))
        if record.skipped:
            raise RuntimeError(f"a benchmark round was skipped: {record.reason}")

    def plain_steps() -> None:
        for x, y in train:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(plain_student(x), y).backward()
            optimizer.step()

    rounds, plains = [], []
    for index in range(warmup + repeats):
        timings = []
        for run in (one_round, plain_steps):
            _sync(device)
            started = time.perf_counter()
            run()
            _sync(device)
            timings.append(time.perf_counter() - started)
        if index >= warmup:
            rounds.append(timings[0])
            plains.append(timings[1])
    round_s, plain_s = statistics.median(rounds), statistics.median(plains)
    peak, how = _peak_memory_mib(device)
    return {
        "student": student_name,
        "N": steps,
        "train_batch": train_batch,
        "val_batch": val_batch,
        "checkpoint": checkpoint,
        "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype).removeprefix("torch."),
        "repeats": repeats,
        "round_s": round_s,
        "plain_s": plain_s,
        "ratio": round_s / plain_s,
        "peak_mib": peak,
        "memory": how,
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table, one row per configuration."""
    lines = [
        "| student | N | memory option | s / round | 2N plain CE steps, s | round / plain | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        option = ", ".join(
            part for part in ("checkpoint" if row["checkpoint"] else "", row["autocast_dtype"] or "") if part
        )
        lines.append(
            f"| {row['student']} | {row['N']} | {option or 'none'} | {row['round_s']:.4f} | {row['plain_s']:.4f} "
            f"| {row['ratio']:.2f} | {row['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


def run_benchmark(
    student_name: str,
    unrolls: Sequence[int],
    *,
    device: torch.device,
    out: Path,
    repeats: int = 5,
    checkpoint: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> list[dict[str, Any]]:
    """Measure every ``N`` in ``unrolls``, print the machine, configuration and table, write JSON and Markdown.

    Args:
        out: path prefix: ``<out>.json`` and ``<out>.md`` are written.
    """
    machine = machine_info(device)
    config = {
        "student": student_name,
        "N": list(unrolls),
        "train_batch": 25,
        "val_batch": 100,
        "dln": "PairwiseDLN 4->40x4->1",
        "teacher": "lstm",
        "mode": "paper",
        "dtype": "float32",
        "checkpoint": checkpoint,
        "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype).removeprefix("torch."),
        "repeats": repeats,
    }
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print("config:  " + ", ".join(f"{k}={v}" for k, v in config.items()), flush=True)
    rows = []
    for steps in unrolls:
        rows.append(
            bench_round(
                student_name,
                steps,
                device=device,
                repeats=repeats,
                checkpoint=checkpoint,
                autocast_dtype=autocast_dtype,
            )
        )
        print(f"N={steps}: {rows[-1]['round_s']:.4f} s/round, ratio {rows[-1]['ratio']:.2f}", flush=True)
    table = markdown_table(rows)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "config": config, "rows": rows}, indent=2))
    header = "machine: " + ", ".join(f"{k}={v}" for k, v in machine.items())
    out.with_suffix(".md").write_text(f"{header}\n\n{table}\n")
    return rows
