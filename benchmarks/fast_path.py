"""A pairwise DLN's loss and logit gradient, three ways side by side: forward-mode pass, table, autograd.

What a student's step asks of a fixed DLN is the loss of its logits and that loss's gradient in the logits
(forward and ``backward()``). Three ways to compute them, timed in one process, alternated call by call:

- ``forward-mode``: the MLP's value and its two slopes per row in one forward-mode pass, the features'
  chain rule by hand, the constrained matrices computed from the parameters on every call
  (``PairwiseDLN(fast=True)`` below ``dynaloss._fast_pairwise.TABLE_ROWS`` rows, forced here at every size);
- ``table``: the certified affine table of the surface (``PairSurface``, ``fast=True`` from ``TABLE_ROWS``
  rows, forced here at every size), after a warm-up that certifies the blocks the rows visit (the steady
  state between two teacher rounds; certifying is not timed);
- ``autograd``: the MLP itself and ``backward()`` through it (``PairwiseDLN(fast=False)``).

For the DLN that starts as cross-entropy (``init="ce"``, softmax features) and the warm one (``init="warm"``), at
B x C = 250, 1k, 4k, 10k, 25k and 250k rows; each call cycles through a few batches of logits spread the way a
student's are (confident and unsure samples, right and wrong). The median over the repeats is reported,
with the table's speed-up over the forward-mode pass (the rule: the table is kept only where that is at
least 1.3) and autograd's time relative to the forward-mode pass.

    OMP_NUM_THREADS=1 python benchmarks/fast_path.py --out benchmarks/results/fast_path/fast_path
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from dynaloss import _fast_pairwise as fast_pairwise
from dynaloss.harness.training import machine_info
from dynaloss.losses.pairwise import PairwiseDLN

# (batch, classes) per size: 10 classes up to 10k rows, 100 above
SIZES = ((25, 10), (100, 10), (400, 10), (1000, 10), (250, 100), (2500, 100))
ARMS = ("forward-mode", "table", "autograd")
INITS = ("ce", "warm")
# passes over the cycle before timing: one for every arm, these for the table, which certifies the blocks the
# rows visit
WARMUP_PASSES = 5


def logit_cycle(batch: int, classes: int, count: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """``count`` batches of logits as a student makes them: scales from unsure to confident, margins of both signs."""
    generator = torch.Generator().manual_seed(seed)
    cycle = []
    for index in range(count):
        target = torch.randint(classes, (batch,), generator=generator)
        scale = (0.5, 1.0, 2.0, 4.0)[index % 4]
        logits = scale * torch.randn(batch, classes, generator=generator)
        margin = torch.randn(batch, generator=generator) * 2 * scale + scale
        logits[torch.arange(batch), target] += margin
        cycle.append((logits, target))
    return cycle


def arm_call(arm: str, dln_fast: PairwiseDLN, dln_exact: PairwiseDLN) -> Callable[[Tensor, Tensor], None]:
    """One student-step's worth of the loss: forward and ``backward()`` into the logits."""
    table_rows = {"forward-mode": 10**15, "table": 0}.get(arm)
    dln = dln_exact if arm == "autograd" else dln_fast

    def call(logits: Tensor, target: Tensor) -> None:
        if table_rows is not None:
            fast_pairwise.TABLE_ROWS = table_rows
        leaf = logits.detach().requires_grad_()
        dln(leaf, target).backward()

    return call


def measure(init: str, batch: int, classes: int, repeats: int, cycle_length: int) -> dict[str, float]:
    """Median seconds per call of each arm, for one DLN and one size."""
    dln_fast = PairwiseDLN(classes, init=init)  # type: ignore[arg-type]
    dln_exact = PairwiseDLN(classes, init=init, fast=False)  # type: ignore[arg-type]
    cycle = logit_cycle(batch, classes, cycle_length, seed=batch * classes)
    calls = {arm: arm_call(arm, dln_fast, dln_exact) for arm in ARMS}
    for arm in ARMS:
        for _ in range(WARMUP_PASSES if arm == "table" else 1):
            for logits, target in cycle:
                calls[arm](logits, target)
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _ in range(repeats):
        for arm in ARMS:
            start = time.perf_counter()
            for logits, target in cycle:
                calls[arm](logits, target)
            times[arm].append((time.perf_counter() - start) / len(cycle))
    return {arm: statistics.median(values) for arm, values in times.items()}


def markdown(machine: dict[str, object], config: dict[str, object], rows: list[dict[str, object]]) -> str:
    lines = [
        "machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()),
        "",
        "config: " + ", ".join(f"{k}={v}" for k, v in config.items()),
        "",
        "| DLN | B x C | rows | forward-mode, ms | table, ms | autograd, ms | forward-mode / table "
        "| autograd / forward-mode |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ms = {arm: 1e3 * row[arm] for arm in ARMS}  # type: ignore[operator]
        lines.append(
            f"| {row['init']} | {row['batch']} x {row['classes']} | {row['rows']:,} | {ms['forward-mode']:.3f} | "
            f"{ms['table']:.3f} | {ms['autograd']:.3f} | {ms['forward-mode'] / ms['table']:.2f} | "
            f"{ms['autograd'] / ms['forward-mode']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the cycle, median (default: 5)")
    parser.add_argument("--cycle", type=int, default=4, help="batches of logits per pass (default: 4)")
    parser.add_argument("--max-rows", type=int, default=250_000, help="skip larger sizes (default: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fast_path/fast_path"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    machine = machine_info("cpu")
    config = {"repeats": args.repeats, "cycle": args.cycle, "warmup_passes": WARMUP_PASSES, "dtype": "float32"}
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print("config: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    started, kept_limit, rows = time.perf_counter(), fast_pairwise.TABLE_ROWS, []
    try:
        for init in INITS:
            for batch, classes in SIZES:
                if batch * classes > args.max_rows:
                    continue
                seconds = measure(init, batch, classes, args.repeats, args.cycle)
                rows.append({"init": init, "batch": batch, "classes": classes, "rows": batch * classes, **seconds})
                print(
                    f"{init:>4} {batch:>5} x {classes:<3}: "
                    + ", ".join(f"{a} {1e3 * s:.3f} ms" for a, s in seconds.items())
                )
    finally:
        fast_pairwise.TABLE_ROWS = kept_limit
    config["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "config": config, "rows": rows}, indent=2))
    table = markdown(machine, config, rows)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
