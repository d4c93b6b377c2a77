"""The ``dynaloss`` command: ``demo`` (tuned CE, GCE and dynaloss on MNIST-1D with wrong labels), ``train``, ``plot``
and ``bench``.

Run ``dynaloss demo`` for the main job; ``dynaloss <command> --help`` lists each command's options.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR

import dynaloss
from dynaloss._checks import NonFiniteError
from dynaloss._state import check_finite_state
from dynaloss.distributed import shard_batches, unwrap_data_parallel
from dynaloss.harness.bench import STUDENTS, run_benchmark
from dynaloss.harness.checkpoint import RunCheckpoint, load_saved
from dynaloss.harness.data import Dataset
from dynaloss.harness.noisy import NoisyTask, batches, gce_loss, make_noisy_task, user_loop
from dynaloss.harness.plot import SURFACE_KINDS, plot_curves, plot_loss_profile, plot_loss_surface, plot_sample_weight
from dynaloss.harness.training import (
    DATASETS,
    LR_FLOOR,
    LR_SCHEDULES,
    MAX_FAILURES,
    ArmResult,
    Evaluate,
    align_steps,
    evaluate_accuracy,
    load_dataset,
    machine_info,
    make_split,
    make_student,
    round_size,
    seeded,
    train_ce,
    train_dln,
)
from dynaloss.losses import PairwiseDLN
from dynaloss.presets import PRESETS
from dynaloss.settings import DEFAULT_DLN, DEFAULT_TEACHER, INITS, MODES, TEACH_EVERY, TEACHER_KINDS
from dynaloss.teacher import Teacher

__all__ = ["DEMO_DEFAULTS", "DEMO_QUICK", "TrainingStopped", "build_parser", "main", "parser_defaults"]

AUTOCAST_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# `dynaloss train` runs the library's recommended PairwiseDLN configuration (dynaloss.settings: DEFAULT_TEACHER
# and DEFAULT_DLN) unless an option says otherwise.
# `dynaloss demo` shows the case where teaching pays: standard MNIST-1D, a clean trusted set of 500,
# 40 % of the other 3,500 labels wrong; cross-entropy at its tuned rate, GCE (the strongest fixed loss there) and
# the README's loop with the "default" preset, all with the user's SGD recipe. Its defaults are its budget.
DEMO_DEFAULTS = {"total_steps": 6000, "eval_every": 500}
DEMO_QUICK = {"total_steps": 60, "eval_every": 30}
DEMO_ARMS = {"CE": "CE", "GCE": "GCE (q = 0.7)", "dynaloss": "dynaloss"}  # key: display name
DEMO_PRESET = "default"
DEMO_CLASSES = 10
DEMO_LRS = (0.02, 0.05, 0.1)  # CE's rate is picked from these
TUNE_SHARE = 3  # the tuning runs take a third of the budget each
TRUSTED_PER_CLASS = 50
NOISE_RATE = 0.4
GCE_Q = 0.7
SGD_RECIPE: dict[str, Any] = {"momentum": 0.9, "weight_decay": 5e-4}
TRAIN_BATCH, VAL_BATCH = 25, 100
# each stream of batches has its own generator; the corruption draws from stream 0 (noisy.make_noisy_task)
STREAMS = {"train": 1, "teacher train": 2, "teacher val": 3}
# cosine is the benchmark's protocol: under a constant lr of 0.1 SGD noise alone dips a student by up to 4 points
# late in a long run, whatever its loss (docs/results.md, "Under a constant learning rate")
DEFAULT_LR_SCHEDULE = "cosine"
CHECKPOINT = "checkpoint.pt"
# settings a resumed run may change: they do not alter what the run computes
RESUMABLE_CHANGES = ("resume", "checkpoint_every", "max_failures", "out", "device")


class TrainingStopped(RuntimeError):
    """``dynaloss train`` gave up: too many teacher rounds in a row failed."""


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {value}")
    return value


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but torch sees no CUDA device")
    return text


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------------- parser
def _add_common(command: argparse.ArgumentParser, out: Path) -> None:
    command.add_argument(
        "--seed", type=_non_negative_int, default=0, help="student init, data order, DLN, teacher (default: 0)"
    )
    command.add_argument(
        "--device", type=_device, default=_default_device(), help="torch device (default: %(default)s)"
    )
    command.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=DEFAULT_LR_SCHEDULE,
        help=f"the student's SGD learning rate over the run: cosine from the lr to {LR_FLOOR:g}, or constant "
        "(default: %(default)s, every arm the same)",
    )
    command.add_argument("--out", type=Path, default=out, help="output folder (default: %(default)s)")
    command.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="tuned CE, GCE and dynaloss on MNIST-1D with 40%% wrong labels and a clean trusted set"
    )
    defaults = DEMO_DEFAULTS
    demo.add_argument(
        "--total-steps",
        type=_positive_int,
        help=f"SGD steps per arm, a third of it per tuning run ({defaults['total_steps']})",
    )
    demo.add_argument("--eval-every", type=_positive_int, help=f"steps between evaluations ({defaults['eval_every']})")
    demo.add_argument("--quick", action="store_true", help=f"a tiny budget for a smoke test ({DEMO_QUICK})")
    _add_common(demo, Path("dynaloss-out"))
    demo.set_defaults(handler=_run_demo)


def _add_train(commands: Any) -> None:
    train = commands.add_parser("train", help="train a student with CE or L2T-DLN and save everything")
    train.add_argument("--data", choices=DATASETS, default="mnist1d", help="data set (default: %(default)s)")
    train.add_argument("--data-dir", type=Path, help="folder holding the CIFAR python-pickle archive")
    train.add_argument("--loss", choices=("ce", "dln"), default="dln", help="(default: %(default)s)")
    teacher = DEFAULT_TEACHER  # the options below default to the library's recommended configuration
    train.add_argument("--teacher", choices=TEACHER_KINDS, default=teacher["teacher"], help="(default: %(default)s)")
    train.add_argument(
        "--init", choices=INITS, default=DEFAULT_DLN["init"], help="DLN initialisation (default: %(default)s)"
    )
    train.add_argument(
        "--unconstrained",
        dest="monotone",
        action="store_false",
        default=DEFAULT_DLN["monotone"],
        help="the paper's DLN: no monotone constraint, no pinned range",
    )
    train.add_argument("--mode", choices=MODES, default=teacher["mode"], help="Teacher mode (default: %(default)s)")
    train.add_argument("--unroll", type=_positive_int, default=teacher["steps"], help="N (default: %(default)s)")
    train.add_argument(
        "--total-steps", type=_positive_int, default=2000, help="student SGD steps (default: %(default)s)"
    )
    train.add_argument("--eval-every", type=_positive_int, default=500, help="(default: %(default)s)")
    train.add_argument("--val-ratio", type=_ratio, default=0.5, help="val share of the train set (default: 0.5)")
    train.add_argument(
        "--lr",
        type=_positive_float,
        default=teacher["student_lr"],
        help="student SGD learning rate, of the unroll too (default: %(default)s)",
    )
    train.add_argument(
        "--checkpoint-every",
        type=_non_negative_int,
        default=0,
        metavar="K",
        help=f"save OUT/{CHECKPOINT} atomically every K teacher rounds (CE: K steps); 0: never (default: 0)",
    )
    train.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT} if it exists")
    train.add_argument(
        "--max-failures",
        type=_positive_int,
        default=MAX_FAILURES,
        help="stop with an error after this many teacher rounds in a row failed (default: %(default)s)",
    )
    _add_common(train, Path("dynaloss-out"))
    train.set_defaults(handler=_run_train)


def _add_plot(commands: Any) -> None:
    plot = commands.add_parser("plot", help="loss-surface PNG (Figure 3) of saved DLN or teacher states")
    plot.add_argument("state", type=Path, nargs="+", help="teacher.pt from `dynaloss train`, or a DLN state_dict")
    plot.add_argument("--out", type=Path, default=Path("loss_surface.png"), help="PNG path (default: %(default)s)")
    plot.add_argument("--kind", choices=SURFACE_KINDS, default="surface", help="(default: %(default)s)")
    plot.set_defaults(handler=_run_plot)


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser("bench", help="seconds and memory of a teacher round vs 2N plain CE steps")
    bench.add_argument("--student", choices=sorted(STUDENTS), help="(default: resnet8 on a GPU, mnist1d-cnn on a CPU)")
    bench.add_argument("--unroll", type=_positive_int, nargs="+", help="N values (default: 1 5 10 25 GPU, 10 CPU)")
    bench.add_argument("--checkpoint", action="store_true", help="recompute each unrolled step in the backward")
    bench.add_argument("--autocast", choices=sorted(AUTOCAST_NAMES), help="autocast dtype of the unrolls")
    bench.add_argument("--repeats", type=_positive_int, default=5, help="timed rounds per N, median reported (5)")
    bench.add_argument("--device", type=_device, help="torch device (default: cuda if available, else cpu)")
    bench.add_argument("--out", type=Path, default=Path("round_time"), help="writes OUT.json and OUT.md")
    bench.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> None:
    """``dynaloss bench``: :func:`dynaloss.harness.bench.run_benchmark` with the device's default configuration."""
    device = torch.device(args.device or _default_device())
    gpu = device.type == "cuda"
    run_benchmark(
        args.student or ("resnet8" if gpu else "mnist1d-cnn"),
        args.unroll or ([1, 5, 10, 25] if gpu else [10]),
        device=device,
        out=args.out,
        repeats=args.repeats,
        checkpoint=args.checkpoint,
        autocast_dtype=None if args.autocast is None else AUTOCAST_NAMES[args.autocast],
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dynaloss`` command."""
    parser = argparse.ArgumentParser(prog="dynaloss", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    _add_demo(commands)
    _add_train(commands)
    _add_plot(commands)
    _add_bench(commands)
    return parser


def parser_defaults(command: str = "train") -> dict[str, Any]:
    """The teacher and DLN configuration ``dynaloss train`` (or ``dynaloss demo``) runs with no options.

    Keyed as :data:`dynaloss.settings.DEFAULT_TEACHER` and :data:`~dynaloss.settings.DEFAULT_DLN` are
    (``steps`` is N, from ``--unroll``; ``student_lr`` from ``--lr``; ``monotone`` unless ``--unconstrained``):
    the keyword arguments the command passes to :class:`~dynaloss.Teacher` and :class:`~dynaloss.PairwiseDLN`.
    """
    if command not in ("train", "demo"):
        raise ValueError(f"command must be 'train' or 'demo', got {command!r}")
    args = build_parser().parse_args([command])
    teacher, dln = _train_models(args) if command == "train" else _demo_models(args)
    return {**teacher, **dln}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynaloss`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (FileNotFoundError, ValueError) as error:
        # bad input (a missing data folder, a wrong file) gets a one-line message rather than a traceback
        parser.exit(2, f"dynaloss {args.command}: error: {error}\n")
    except TrainingStopped as error:
        parser.exit(1, f"dynaloss {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        # Ctrl-C: one line saying what is left and how to go on, and the shell's status for SIGINT (128 + 2)
        parser.exit(130, f"dynaloss {args.command}: interrupted{_resume_hint(args)}\n")
    return 0


def _resume_hint(args: argparse.Namespace) -> str:
    """What an interrupted ``dynaloss train`` left: its checkpoint and how to resume from it."""
    if args.command != "train":
        return ""
    path = args.out / CHECKPOINT
    if path.is_file():
        return f"; the last checkpoint is {path}: run the same command with --resume to continue from it"
    return "; no checkpoint was written (--checkpoint-every N writes one every N rounds, --resume resumes from it)"


# ------------------------------------------------------------------------------------------------ reporting
def _print_header(title: str, machine: dict[str, Any], config: dict[str, Any]) -> None:
    print(title)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print("config:  " + ", ".join(f"{k}={v}" for k, v in config.items()), flush=True)


def _print_table(results: Sequence[ArmResult]) -> None:
    header = f"{'arm':<10} {'final acc':>9} {'best acc':>9} {'wall s':>8} {'student steps':>13} {'rounds':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        print(
            f"{r.name:<10} {r.final_accuracy:>9.4f} {r.best_accuracy:>9.4f} {r.seconds:>8.1f} "
            f"{r.student_steps:>13d} {len(r.rounds) or '-':>7}"
        )
        if r.stopped:
            print(f"  ({r.name} stopped early: {r.stopped})")


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def _curves_png(results: Sequence[ArmResult], path: Path, title: str) -> Path:
    return plot_curves({r.name: (r.steps, r.accuracy) for r in results}, path, title=title)


# ------------------------------------------------------------------------------------------------------ demo
def _demo_models(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The demo's Teacher and DLN keyword arguments: the ``"default"`` preset's, which the README's
    ``dynaloss.pairwise_teacher(C, optimizer=optimizer)`` builds."""
    preset = PRESETS[DEMO_PRESET]
    return dict(preset["teacher"]), dict(preset["dln"])


def _demo_config(args: argparse.Namespace) -> dict[str, Any]:
    budget = DEMO_QUICK if args.quick else DEMO_DEFAULTS
    total_steps = args.total_steps or budget["total_steps"]
    teacher, dln = _demo_models(args)
    return {
        "data": "mnist1d (4000 train / 1000 test, generated locally)",
        "trusted": f"{TRUSTED_PER_CLASS} clean samples per class",
        "noise": f"{NOISE_RATE:.0%} of the other labels replaced by a uniformly drawn other class",
        "student": "MNIST1DCNN",
        "seed": args.seed,
        "total_steps": total_steps,
        "eval_every": args.eval_every or budget["eval_every"],
        "tune_steps": max(1, total_steps // TUNE_SHARE),
        "tune_lrs": DEMO_LRS,
        "optimizer": {"class": "SGD", **SGD_RECIPE},
        "lr_schedule": args.lr_schedule,
        "train_batch": TRAIN_BATCH,
        "val_batch": VAL_BATCH,
        "gce_q": GCE_Q,
        "teach_every": TEACH_EVERY,
        "dln": {"preset": DEMO_PRESET, "family": PRESETS[DEMO_PRESET]["family"], **dln},
        "teacher": teacher,
        "device": args.device,
    }


FAIRNESS = (
    "Every arm trains on noisy + trusted from the same initial weights, on the same batches in the same order, "
    "with the same SGD (momentum 0.9, weight decay 5e-4, {schedule} lr) and step budget. CE's lr is picked from "
    "{lrs} by {tune} steps on noisy + half the trusted set, scored on the other half (never on the test set); GCE "
    "and dynaloss use the same lr, untuned. dynaloss is the README's loop: "
    "teacher = dynaloss.pairwise_teacher(10, optimizer=optimizer), loss_fn = teacher.loss_fn, a teacher round every "
    "{every} steps validating on batches of {val} from the trusted set."
)


def _demo_loss(arm: str, optimizer: torch.optim.Optimizer) -> tuple[Any, Teacher | None]:
    """The arm's training loss, and for dynaloss the teacher whose ``loss_fn`` it is."""
    if arm == "dynaloss":
        teacher = dynaloss.pairwise_teacher(DEMO_CLASSES, optimizer=optimizer)
        return teacher.loss_fn, teacher
    return {"CE": F.cross_entropy, "GCE": functools.partial(gce_loss, q=GCE_Q)}[arm], None


def _demo_arm(
    arm: str, task: NoisyTask, initial: torch.nn.Module, lr: float, config: dict[str, Any], progress: bool
) -> tuple[ArmResult, Teacher | None, Any]:
    """One arm of the demo from ``initial``'s weights, trained as ``config`` says at ``lr``; for dynaloss also its
    teacher and a copy of the DLN before teaching."""
    model, seed, steps = copy.deepcopy(initial), config["seed"], config["total_steps"]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, **SGD_RECIPE)
    cosine = config["lr_schedule"] == "cosine"
    scheduler = CosineAnnealingLR(optimizer, T_max=steps, eta_min=LR_FLOOR) if cosine else None
    loss_fn, teacher = _demo_loss(arm, optimizer)
    before, teach = copy.deepcopy(loss_fn), None
    if teacher is not None:  # the rounds draw from their own streams, as the README's forever(loader)
        train_iter = batches(task.train, TRAIN_BATCH, seed, STREAMS["teacher train"])
        val_iter = batches(task.trusted, VAL_BATCH, seed, STREAMS["teacher val"])
        teach = functools.partial(teacher.step, model, train_iter, val_iter)
    result = user_loop(
        model,
        loss_fn,
        batches(task.train, TRAIN_BATCH, seed, STREAMS["train"]),
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=steps,
        evaluate=lambda m: evaluate_accuracy(m, *task.test),
        eval_every=config["eval_every"],
        name=config.get("name", arm),
        progress=progress,
        teach=teach,
    )
    return result, teacher, before


def _tune_lr(task: NoisyTask, initial: torch.nn.Module, config: dict[str, Any], progress: bool) -> dict[float, float]:
    """CE's accuracy on the trusted set's held-out half after a short run at each of :data:`DEMO_LRS`."""
    steps = config["tune_steps"]
    held_out = task.for_tuning()
    scores = {}
    for lr in DEMO_LRS:
        short = {**config, "total_steps": steps, "eval_every": steps, "name": f"tune CE, lr {lr:g}"}
        scores[lr] = _demo_arm("CE", held_out, initial, lr, short, progress)[0].final_accuracy
    return scores


def _demo_arms(
    task: NoisyTask, initial: torch.nn.Module, lr: float, config: dict[str, Any], progress: bool
) -> tuple[dict[str, ArmResult], Teacher, Any]:
    """Every arm at ``lr``, one after another, so that each wall time is the arm's own; the results, the teacher
    and its DLN before teaching."""
    results, taught = {}, None
    for arm, name in DEMO_ARMS.items():
        results[arm], teacher, before = _demo_arm(arm, task, initial, lr, {**config, "name": name}, progress)
        taught = (teacher, before) if teacher is not None else taught
    assert taught is not None, "no arm is taught"
    return results, *taught


def _print_demo_table(results: dict[str, ArmResult]) -> None:
    header = f"{'arm':<16} {'test acc %':>10} {'wall s':>8} {'x CE':>6}"
    print("\n" + header + "\n" + "-" * len(header))
    ce = results["CE"].seconds
    for r in results.values():
        print(f"{r.name:<16} {100 * r.final_accuracy:>10.2f} {r.seconds:>8.1f} {r.seconds / ce:>6.2f}")


def _taught_values(loss_fn: torch.nn.Module) -> dict[str, list[Any]]:
    """The loss's parameters; for a ClassAwareDLN also its exponents ``q`` (a function of ``robustness``), its
    counted ``prior_correction``, and in place of the raw ``pair_offsets`` what they are a function of: the pair
    offsets ``B`` as rows (``pair_matrix``) of the logit form, or the forward form's mixing weights
    (``pair_weights``, ``eps[y, c]``: how much class ``c``'s probability counts for label ``y``)."""
    values = {name: p.detach().cpu().flatten() for name, p in loss_fn.named_parameters()}
    q, matrix = getattr(loss_fn, "q", None), getattr(loss_fn, "pair_matrix", None)
    correction = getattr(loss_fn, "prior_correction", None)
    if isinstance(q, torch.Tensor):
        values["q"] = q.cpu()
    if isinstance(correction, torch.Tensor):
        values["prior_correction"] = correction.cpu()
    if isinstance(matrix, torch.Tensor):
        del values["pair_offsets"]
        values["pair_weights" if getattr(loss_fn, "pair_form", None) == "forward" else "pair_matrix"] = matrix.cpu()
    return {name: t.tolist() for name, t in values.items()}


def _taught_summary(taught: dict[str, list[Any]], shown: int = 5) -> str:
    """The taught values as lines: each vector in full; of the pair offsets, the ``shown`` most relaxed pairs, or
    of the pair weights the ``shown`` largest (the label-to-class confusions the loss learned to stop pushing
    against)."""
    lines = [
        f"  {name}: " + " ".join(f"{v:+.2f}" for v in values)
        for name, values in taught.items()
        if name not in ("pair_matrix", "pair_weights")
    ]
    if "pair_weights" in taught:  # the forward form: a learned confusion is a large weight
        pairs = _extreme_pairs(taught["pair_weights"], shown, largest=True, joiner="from", spec=".3f")
        lines.append(f"  pair weights, the {shown} largest: {pairs}")
    if "pair_matrix" in taught:  # the logit form: a learned confusion is a negative (relaxed) offset
        pairs = _extreme_pairs(taught["pair_matrix"], shown, largest=False, joiner="vs", spec="+.2f")
        lines.append(f"  pair offsets, the {shown} most relaxed: {pairs}")
    return "\n".join(lines)


def _extreme_pairs(rows: list[Any], shown: int, *, largest: bool, joiner: str, spec: str) -> str:
    """The ``shown`` off-diagonal entries of a ``(C, C)`` matrix, largest or smallest first, as
    ``label y <joiner> class c <value>``."""
    matrix = torch.tensor(rows)
    classes = len(matrix)
    diagonal = torch.eye(classes, dtype=torch.bool)
    off_diagonal = matrix.masked_fill(diagonal, -math.inf if largest else math.inf).flatten()
    order = off_diagonal.argsort(descending=largest)[:shown].tolist()
    return ", ".join(
        f"label {i // classes} {joiner} class {i % classes} {float(off_diagonal[i]):{spec}}" for i in order
    )


def _demo_pictures(results: dict[str, ArmResult], teacher: Teacher, initial_dln: Any, out: Path) -> dict[str, str]:
    """The per-sample weight, the taught loss before/after and the accuracy curves, as PNGs in ``out``."""
    taught = f"taught DLN ({teacher.rounds} rounds)"
    weights = {
        "CE": F.cross_entropy,
        DEMO_ARMS["GCE"]: functools.partial(gce_loss, q=GCE_Q),
        "DLN before teaching (≈ CE)": initial_dln,
        taught: teacher.loss_fn,
    }
    title = "MNIST-1D, 40 % wrong labels"
    files = {
        "sample_weight": plot_sample_weight(weights, out / "sample_weight.png", num_classes=DEMO_CLASSES, title=title),
        "loss_surface": plot_loss_profile(
            {"before teaching (≈ CE)": initial_dln, taught: teacher.loss_fn}, out / "loss_surface.png"
        ),
        "accuracy": _curves_png(list(results.values()), out / "accuracy.png", f"{title}, same steps"),
    }
    return {name: str(path) for name, path in files.items()}


def _run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """``dynaloss demo``: tuned CE, GCE and dynaloss on MNIST-1D with 40 % wrong labels and a clean trusted set;
    prints a table and writes ``results.json`` and three PNGs in ``--out``; returns the JSON payload."""
    started = time.perf_counter()
    config = _demo_config(args)
    machine = machine_info(args.device)
    fairness = FAIRNESS.format(
        schedule=args.lr_schedule,
        lrs=list(DEMO_LRS),
        tune=config["tune_steps"],
        every=TEACH_EVERY,
        val=VAL_BATCH,
    )
    _print_header("dynaloss demo: tuned CE, GCE and dynaloss on MNIST-1D with 40 % wrong labels", machine, config)
    print(fairness + "\n", flush=True)
    data = load_dataset("mnist1d")
    task = make_noisy_task(data, trusted_per_class=TRUSTED_PER_CLASS, noise_rate=NOISE_RATE, seed=args.seed)
    task = task.to(args.device)
    initial = make_student("mnist1d", data.num_classes, args.seed).to(args.device)
    scores = _tune_lr(task, initial, config, args.progress)
    lr = max(scores, key=lambda rate: scores[rate])  # the first of equal scores: the smaller rate
    shown = ", ".join(f"lr {rate:g}: {100 * acc:.1f} %" for rate, acc in scores.items())
    print(f"held-out trusted accuracy after {config['tune_steps']} CE steps: {shown}; every arm trains at lr {lr:g}")
    results, teacher, initial_dln = _demo_arms(task, initial, lr, config, args.progress)
    _print_demo_table(results)
    taught = _taught_values(teacher.loss_fn)
    print("\ntaught DLN:\n" + _taught_summary(taught))
    out: Path = _output_folder(args.out)
    files = {**_demo_pictures(results, teacher, initial_dln, out), "results": str(out / "results.json")}
    payload = {
        "machine": machine,
        "config": config,
        "fairness": fairness,
        "tuning": {"scores": {str(rate): acc for rate, acc in scores.items()}, "picked_lr": lr},
        "arms": {arm: result.as_dict() for arm, result in results.items()},
        "taught_dln": taught,
        "files": files,
        "wall_seconds": time.perf_counter() - started,
    }
    _write_json(out / "results.json", payload)
    print(f"\nwrote {', '.join(files.values())} in {payload['wall_seconds']:.0f} s")
    return payload


# ----------------------------------------------------------------------------------------------------- train
def _evaluator(data: Dataset) -> Evaluate:
    return lambda model: evaluate_accuracy(model, data.x_test, data.y_test)


def _common_training(config: dict[str, Any], data: Dataset) -> dict[str, Any]:
    """The arguments every arm's ``train_ce`` / ``train_dln`` shares: budget, evaluation, lr schedule."""
    return {
        "total_steps": config["total_steps"],
        "evaluate": _evaluator(data),
        "eval_every": config["eval_every"],
        "lr_schedule": config["lr_schedule"],
    }


def _make_teacher(
    num_classes: int, seed: int, dln_args: dict[str, Any], **teacher_args: Any
) -> tuple[Teacher, dict[str, Any]]:
    """A DLN (``dln_args``) and its :class:`Teacher` (``teacher_args``), drawn from ``seed``, and a copy of the
    DLN's start."""
    with seeded(seed):
        teacher = Teacher(PairwiseDLN(num_classes, **dln_args), **teacher_args)
    return teacher, copy.deepcopy(teacher.loss_fn.state_dict())


def _train_models(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Teacher and DLN keyword arguments of ``dynaloss train``: the library's defaults
    (:data:`~dynaloss.settings.DEFAULT_TEACHER`, :data:`~dynaloss.settings.DEFAULT_DLN`) with the options
    the command exposes."""
    exposed = {"teacher": args.teacher, "steps": args.unroll, "student_lr": args.lr, "mode": args.mode}
    return {**DEFAULT_TEACHER, **exposed}, {**DEFAULT_DLN, "init": args.init, "monotone": args.monotone}


def _train_config(args: argparse.Namespace) -> dict[str, Any]:
    per_round = round_size(args.mode, args.unroll) if args.loss == "dln" else 1
    config = {k: v for k, v in vars(args).items() if k not in ("handler", "progress")}
    config["total_steps"] = align_steps(args.total_steps, per_round)
    config["eval_every"] = align_steps(args.eval_every, per_round)
    if args.loss == "dln":  # what the run builds, the defaults it did not override included
        config["teacher_args"], config["dln_args"] = _train_models(args)
    return config


@contextmanager
def _process_group(args: argparse.Namespace) -> Iterator[tuple[int, int]]:
    """``(rank, world size)``: under ``torchrun`` (``WORLD_SIZE`` > 1) a process group from the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1
        return
    if torch.device(args.device).type == "cuda":
        # one GPU per rank; --device cuda means "this rank's GPU"
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(args.device))
    dist.init_process_group("nccl" if torch.device(args.device).type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), world
    finally:
        dist.destroy_process_group()


def _train_arm(
    args: argparse.Namespace, config: dict[str, Any], data: Dataset, out: Path, rank: int, world: int
) -> ArmResult:
    """Train the student as ``args`` say and save it (and the teacher, with a loss-surface PNG) under ``out``.

    With ``world`` ranks each global batch is ``world`` times the single-process one and every rank trains on
    its share; rank 0 alone writes files.
    """
    student: torch.nn.Module = make_student(args.data, data.num_classes, args.seed).to(args.device)
    if world > 1:
        student = torch.nn.parallel.DistributedDataParallel(student)
    split = make_split(
        args.data,
        data,
        val_ratio=args.val_ratio,
        seed=args.seed,
        train_batch_size=25 * world,
        val_batch_size=100 * world,
    )
    train_iter = shard_batches(split.train_batches(), rank, world)
    val_iter = shard_batches(split.val_batches(), rank, world)
    checkpoint = None
    if args.checkpoint_every or args.resume:
        saved_config = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
        every, write = max(1, args.checkpoint_every), rank == 0 and args.checkpoint_every > 0
        checkpoint = RunCheckpoint(out / CHECKPOINT, every, resume=args.resume, write=write, config=saved_config)
    progress = args.progress and rank == 0
    common = _common_training(config, data)
    if args.loss == "ce":
        result = train_ce(
            student, split, lr=args.lr, progress=progress, checkpoint=checkpoint, train_iter=train_iter, **common
        )
    else:
        teacher_args, dln_args = _train_models(args)
        teacher, initial_dln = _make_teacher(
            data.num_classes,
            args.seed,
            dln_args,
            **teacher_args,
            process_group=dist.group.WORLD if world > 1 else None,
        )
        result = train_dln(
            student,
            teacher,
            split,
            progress=progress,
            max_failures=args.max_failures,
            checkpoint=checkpoint,
            batches=(train_iter, val_iter),
            **common,
        )
        if rank == 0:
            torch.save(teacher.state_dict(), out / "teacher.pt")
            plot_loss_surface({"initial DLN": initial_dln, "taught DLN": teacher.loss_fn}, out / "loss_surface.png")
    if rank == 0:
        torch.save(unwrap_data_parallel(student).state_dict(), out / "student.pt")
    return result


def _run_train(args: argparse.Namespace) -> dict[str, Any]:
    """``dynaloss train``: one student, CE or L2T-DLN; saves metrics, student and teacher; returns the metrics.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it trains data-parallel, each rank on its shard of every batch.

    Raises:
        TrainingStopped: ``--max-failures`` teacher rounds in a row failed (the metrics are written first, and
            the checkpoint keeps the last committed round).
    """
    if args.data.startswith("cifar") and args.data_dir is None:
        raise ValueError(f"--data-dir is required for {args.data}: the folder holding the python-pickle archive")
    with _process_group(args) as (rank, world):
        config = {**_train_config(args), "world_size": world}
        machine = machine_info(args.device)
        if rank == 0:
            _print_header(f"dynaloss train: {args.data}, loss={args.loss}", machine, config)
        if args.resume and not (args.out / CHECKPOINT).is_file() and rank == 0:
            print(f"no checkpoint at {args.out / CHECKPOINT}: starting from the beginning", flush=True)
        data = load_dataset(args.data, args.data_dir)
        out: Path = _output_folder(args.out)
        result = _train_arm(args, config, data, out, rank, world)
    payload = {"machine": machine, "config": config, "result": result.as_dict()}
    if rank == 0:
        _print_table([result])
        _write_json(out / "metrics.json", payload)
        saved = sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".pt", ".png"))
        print(f"\nwrote {', '.join(saved)} to {out}")
    if result.stopped:
        kept = f"; the last good checkpoint is {out / CHECKPOINT}" if (out / CHECKPOINT).is_file() else ""
        raise TrainingStopped(f"training stopped: {result.stopped}{kept}")
    if not all(math.isfinite(a) for a in result.accuracy) or not _finite_file(out / "student.pt"):
        raise TrainingStopped(
            f"the trained student is not finite (NaN or Inf weights or accuracy; written to {out} for inspection): "
            "lower --lr, or resume from an earlier checkpoint"
        )
    return payload


def _output_folder(path: Path) -> Path:
    """``--out`` as a folder, created if needed; a clear error where a file is in the way."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {str(path)!r} is an existing file; --out names the folder the run writes into")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _finite_file(path: Path) -> bool:
    """Whether the tensors saved at ``path`` (if any) are all finite."""
    if not path.is_file():
        return True
    try:
        check_finite_state(torch.load(path, map_location="cpu", weights_only=True), str(path))
    except NonFiniteError:
        return False
    return True


# ------------------------------------------------------------------------------------------------------ plot
def _run_plot(args: argparse.Namespace) -> Path:
    """``dynaloss plot``: the loss surface of one or more saved DLN / teacher states, side by side."""
    states = {}
    for path in args.state:
        if not path.is_file():
            raise FileNotFoundError(f"no such file {str(path)!r}: expected a teacher.pt or DLN state dict")
        states[path.stem] = load_saved(path, "a teacher.pt or DLN state dict written by dynaloss train or torch.save")
    written = plot_loss_surface(states, args.out, kind=args.kind)
    print(f"wrote {written}")
    return written


if __name__ == "__main__":
    sys.exit(main())
