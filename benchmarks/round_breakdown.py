"""Where a teacher round's time goes: its parts, timed one by one in one process, against 2N plain CE steps.

A round (``mode="paper"``) is: stage I, N differentiable SGD steps with the DLN; the hypergradient, the
validation error's backward through them; the LSTM teacher's forward over every DLN coordinate; stage III,
N more differentiable steps with the updated DLN; and the teacher's gradient, the backward of stage III's
validation error through those steps, the DLN update and the LSTM. This script runs the same library
functions the round runs (:mod:`dynaloss._unroll`, the LSTM teacher), part by part, and adds two references:
2N plain CE steps (what the ratio divides by) and stage I + hypergradient with a one-parameter loss (a
temperature on cross-entropy), the student's own second-order cost without the DLN's.

    OMP_NUM_THREADS=1 python benchmarks/round_breakdown.py --unroll 10 --repeats 21
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynaloss._batches import as_batch
from dynaloss._unroll import default_val_loss, dln_parameters, student_state, unroll, validation_error
from dynaloss._update_rules import PlainSGD
from dynaloss.harness.models import MNIST1DCNN
from dynaloss.harness.training import machine_info
from dynaloss.losses.pairwise import PairwiseDLN
from dynaloss.teachers.lstm import LSTMTeacher


class TemperedCrossEntropy(nn.Module):
    """``CE(t * z, y)`` with one learnable ``t``: the cheapest loss a teacher could teach."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.cross_entropy(logits * self.temperature, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unroll", type=int, default=10, help="N (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=21, help="timed repeats, median reported")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/round_breakdown_cpu"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    steps, lr = args.unroll, 0.1
    student, dln, lstm = MNIST1DCNN(), PairwiseDLN(10), LSTMTeacher()
    plain_student = copy.deepcopy(student)
    generator = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")

    def batch(size: int) -> object:
        return as_batch((torch.randn(size, 1, 40, generator=generator), torch.randint(10, (size,))), "b", cpu)

    first, second, val = [batch(25) for _ in range(steps)], [batch(25) for _ in range(steps)], batch(100)
    val_loss = default_val_loss(dln)
    optimizer = torch.optim.SGD(plain_student.parameters(), lr=lr)
    state: dict[str, object] = {}

    def stage_one() -> None:
        state["phi"] = phi = dln_parameters(dln)
        state["end"] = unroll(student, student_state(student), dln, phi, first, rule=PlainSGD(lr))

    def hypergradient() -> None:
        error = validation_error(student, state["end"], val, val_loss)  # type: ignore[arg-type]
        grads = torch.autograd.grad(error, list(state["phi"].values()))  # type: ignore[union-attr]
        state["grad"] = torch.cat([g.flatten() for g in grads])

    def lstm_forward() -> None:
        grad: Tensor = state["grad"]  # type: ignore[assignment]
        direction, _ = lstm(grad, lstm.initial_memory(grad.numel(), like=grad))
        flat = torch.cat([p.detach().flatten() for p in dln.parameters()]) + 1e-3 * direction
        sizes = [p.numel() for p in dln.parameters()]
        names = [n for n, _ in dln.named_parameters()]
        state["new_phi"] = {n: t.view_as(p) for n, t, p in zip(names, flat.split(sizes), dln.parameters())}

    def stage_three() -> None:
        start = state["end"].detached()  # type: ignore[attr-defined]
        state["end3"] = unroll(student, start, dln, state["new_phi"], second, rule=PlainSGD(lr))  # type: ignore[arg-type]

    def teacher_gradient() -> None:
        error = validation_error(student, state["end3"], val, val_loss)  # type: ignore[arg-type]
        torch.autograd.grad(error, list(lstm.parameters()))

    tempered = TemperedCrossEntropy()

    def student_only() -> None:
        phi = dln_parameters(tempered)
        end = unroll(student, student_state(student), tempered, phi, first, rule=PlainSGD(lr))
        torch.autograd.grad(validation_error(student, end, val, F.cross_entropy), list(phi.values()))

    def plain() -> None:
        for b in [*first, *second]:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(plain_student(b.inputs), b.targets).backward()
            optimizer.step()

    parts: dict[str, Callable[[], None]] = {
        "stage I: N differentiable steps with the DLN": stage_one,
        "hypergradient: backward through stage I": hypergradient,
        "LSTM teacher forward (every DLN coordinate)": lstm_forward,
        "stage III: N differentiable steps with the updated DLN": stage_three,
        "teacher gradient: backward through stage III, the update and the LSTM": teacher_gradient,
        "reference: 2N plain CE steps": plain,
        "reference: stage I + hypergradient with a one-parameter loss": student_only,
    }
    times: dict[str, list[float]] = {name: [] for name in parts}
    for repeat in range(args.repeats + 2):
        for name, part in parts.items():
            started = time.perf_counter()
            part()
            if repeat >= 2:
                times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}
    plain_s = median["reference: 2N plain CE steps"]
    round_parts = list(parts)[:5]
    round_s = sum(median[name] for name in round_parts)
    machine = machine_info(cpu)
    lines = [
        f"machine: {', '.join(f'{k}={v}' for k, v in machine.items())}",
        f"config: mnist1d-cnn student, batch 25 / val 100, N = {steps}, PairwiseDLN(10), LSTM teacher, fp32, "
        f"median of {args.repeats}",
        "",
        "| part | ms | share of the round | in units of 2N plain steps |",
        "|---|---|---|---|",
    ]
    for name in parts:
        share = f"{median[name] / round_s:.0%}" if name in round_parts else ""
        lines.append(f"| {name} | {median[name] * 1000:.1f} | {share} | {median[name] / plain_s:.2f} |")
    lines.append(f"| **sum of the round's parts** | **{round_s * 1000:.1f}** | 100% | **{round_s / plain_s:.2f}** |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table + "\n")
    payload = {"machine": machine, "N": steps, "repeats": args.repeats, "median_s": median, "round_s": round_s}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
