"""Does it teach? CE vs L2T-DLN arms at an equal number of student SGD steps, over seeds (docs/results.md).

Every arm of a (data set, seed) pair starts from the same student weights and reads the same epoch-wise
train/val re-split stream; every arm takes exactly ``--steps`` student SGD steps. Prints the machine, the
configuration and a Markdown table (mean ± std of the final and the best test accuracy, seconds), and
writes the same as JSON and Markdown.

    OMP_NUM_THREADS=1 python benchmarks/accuracy.py --arms ce dln-fixed dln --seeds 3 --steps 4000
    OMP_NUM_THREADS=1 python benchmarks/accuracy.py --fast
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Each arm: how the student is trained. "ce-all" is CE on the whole training set (train and val parts),
# the baseline that gets to learn from every labelled example the DLN arms see. "dln-fixed" trains with the
# warm-started DLN and no teacher: what teaching adds is the difference to it. "dln" is the library's default
# (warm, monotone DLN of pinned range; LSTM teacher with the anchor); "dln-free" the same without the monotone
# constraint (the paper's unconstrained MLP, warm-started); "dln-paper" is the paper's configuration (random
# unconstrained DLN, LSTM teacher, no anchor).
ARMS: dict[str, dict[str, Any]] = {
    "ce": {"loss": "ce"},
    "ce-all": {"loss": "ce", "val_ratio": None},
    "dln-fixed": {"loss": "fixed"},
    "dln": {"loss": "dln"},
    "dln-free": {"loss": "dln", "monotone": False},
    "dln-no-anchor": {"loss": "dln", "anchor": 0.0},
    "dln-paper": {"loss": "dln", "init": "paper", "anchor": 0.0, "monotone": False},
    "dln-paper-init": {"loss": "dln", "init": "paper"},
    "dln-adam": {"loss": "dln", "teacher": "adam"},
    "dln-sgd": {"loss": "dln", "teacher": "sgd"},
    "dln-rmsprop": {"loss": "dln", "teacher": "rmsprop"},
}
DEFAULT_ARMS = ["ce", "ce-all", "dln-fixed", "dln", "dln-free", "dln-paper", "dln-adam", "dln-sgd", "dln-rmsprop"]


@dataclass(frozen=True)
class Job:
    dataset: str
    arm: str
    seed: int
    steps: int
    unroll: int
    val_ratio: float
    eval_every: int
    mode: str
    anchor: float
    lr_schedule: str = "cosine"


def run_job(job: Job) -> dict[str, Any]:
    """Train one arm on one seed; returns its accuracy curve and timing."""
    torch.set_num_threads(1)
    from dynaloss.harness.training import (
        evaluate_accuracy,
        load_dataset,
        make_split,
        make_student,
        seeded,
        train_ce,
        train_dln,
    )
    from dynaloss.losses import PairwiseDLN
    from dynaloss.teacher import Teacher

    spec = ARMS[job.arm]
    data = load_dataset(job.dataset)
    student = make_student(job.dataset, data.num_classes, job.seed)
    evaluate = lambda model: evaluate_accuracy(model, data.x_test, data.y_test)  # noqa: E731
    # every arm the same schedule, over its whole budget
    common = {
        "total_steps": job.steps,
        "evaluate": evaluate,
        "eval_every": job.eval_every,
        "progress": False,
        "lr_schedule": job.lr_schedule,
    }
    if spec["loss"] != "dln":
        if spec.get("val_ratio", job.val_ratio) is None:  # "ce-all": every training example but one
            split = make_split(job.dataset, data, val_ratio=1 / len(data.y_train), seed=job.seed, val_batch_size=1)
        else:
            split = make_split(job.dataset, data, val_ratio=job.val_ratio, seed=job.seed)
        if spec["loss"] == "fixed":
            loss_fn = PairwiseDLN(data.num_classes, monotone=spec.get("monotone", True))
        else:
            loss_fn = torch.nn.functional.cross_entropy
        result = train_ce(student, split, lr=0.1, name=job.arm, loss_fn=loss_fn, **common)
    else:
        split = make_split(job.dataset, data, val_ratio=job.val_ratio, seed=job.seed)
        with seeded(job.seed):
            dln = PairwiseDLN(data.num_classes, init=spec.get("init", "warm"), monotone=spec.get("monotone", True))
            teacher = Teacher(
                dln,
                teacher=spec.get("teacher", "lstm"),
                steps=job.unroll,
                student_lr=0.1,
                mode=job.mode,
                anchor_strength=spec.get("anchor", job.anchor),
            )
        result = train_dln(student, teacher, split, name=job.arm, **common)
    return {
        "dataset": job.dataset,
        "arm": job.arm,
        "seed": job.seed,
        "final": result.accuracy[-1],
        "best": max(result.accuracy),
        "drawdown": max_drawdown(result.accuracy),
        "round_seconds": statistics.median(r["seconds"] for r in result.rounds) if result.rounds else None,
        "seconds": result.seconds,
        "steps": result.steps,
        "accuracy": result.accuracy,
        "stopped": result.stopped,
    }


def max_drawdown(accuracy: list[float]) -> float:
    """The largest fall of test accuracy below its best so far (0 for a curve that never falls)."""
    best, worst_fall = -1.0, 0.0
    for value in accuracy:
        best = max(best, value)
        worst_fall = max(worst_fall, best - value)
    return worst_fall


def _mean_std(group: list[dict[str, Any]], key: str) -> tuple[float, float]:
    values = [r[key] for r in group]
    return statistics.mean(values), statistics.pstdev(values)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std per (data set, arm), in the order the arms were given."""
    rows = []
    keys = list(dict.fromkeys((r["dataset"], r["arm"]) for r in runs))
    for dataset, arm in keys:
        group = [r for r in runs if (r["dataset"], r["arm"]) == (dataset, arm)]
        rows.append(
            {
                "dataset": dataset,
                "arm": arm,
                "seeds": len(group),
                "final": _mean_std(group, "final"),
                "best": _mean_std(group, "best"),
                "seconds": _mean_std(group, "seconds"),
                "drawdown": (max(r["drawdown"] for r in group), 0.0),  # the worst seed
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data | arm | seeds | final test acc % | best test acc % | worst fall below best, points | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, b, s, d = r["final"], r["best"], r["seconds"], r["drawdown"]
        lines.append(
            f"| {r['dataset']} | {r['arm']} | {r['seeds']} | {100 * f[0]:.2f} ± {100 * f[1]:.2f} | "
            f"{100 * b[0]:.2f} ± {100 * b[1]:.2f} | {100 * d[0]:.1f} | {s[0]:.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist1d", "digits"], choices=["mnist1d", "digits"])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    parser.add_argument("--anchor", type=float, default=0.05, help="Teacher anchor of the arms that use the default")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--steps", type=int, default=8000, help="student SGD steps per arm")
    parser.add_argument("--unroll", type=int, default=10, help="N")
    parser.add_argument("--val-ratio", type=float, default=0.5)
    parser.add_argument("--mode", default="paper", choices=["paper", "research", "lookahead"])
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument(
        "--lr-schedule", choices=["constant", "cosine"], default="cosine", help="the student's SGD lr, every arm"
    )
    parser.add_argument("--jobs", type=int, default=2, help="parallel worker processes (one torch thread each)")
    parser.add_argument("--fast", action="store_true", help="2 seeds, 2000 steps: a few minutes on 2 cores")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy"))
    args = parser.parse_args(argv)
    if args.fast:
        args.seeds, args.steps, args.eval_every = 2, 2000, 500
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dynaloss.harness.training import machine_info

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print("machine:", json.dumps(machine_info("cpu")))
    print("config: ", json.dumps(config))
    jobs = [
        Job(
            d,
            arm,
            seed,
            args.steps,
            args.unroll,
            args.val_ratio,
            args.eval_every,
            args.mode,
            args.anchor,
            args.lr_schedule,
        )
        for d in args.datasets
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for arm in args.arms
    ]
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for run in pool.map(run_job, jobs):
            runs.append(run)
            print(
                f"  {run['dataset']:8s} {run['arm']:12s} seed {run['seed']}: final {100 * run['final']:.2f} % "
                f"best {100 * run['best']:.2f} % ({run['seconds']:.0f} s)",
                flush=True,
            )
    rows = summarise(runs)
    table = markdown_table(rows)
    print(table)
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine_info("cpu"),
        "config": config,
        "rows": rows,
        "runs": runs,
        "wall_seconds": time.perf_counter() - started,
    }
    # name + suffix rather than with_suffix: an --out like "anchor_0.05" has a dot of its own
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(report, indent=1))
    args.out.with_name(args.out.name + ".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
