"""What a student's training step costs with a DLN loss (:class:`~dynaloss.PairwiseDLN`,
:class:`~dynaloss.ClassAwareDLN`) instead of cross-entropy.

Two measurements, each arm timed alternately in one process (a busy machine slows every arm alike, so the
ratios hold where absolute milliseconds do not):

- **step**: milliseconds per training step of a fixed student (forward, loss, backward,
  ``SGD(lr=0.01).step()``) with ``nn.CrossEntropyLoss`` and with a DLN held fixed, warm (sigmoid features)
  or CE-initialised (softmax features), each through its fast path and through the exact MLP
  (``fast=False``); a ClassAwareDLN moved off its start (the recommended loss, as taught); and the loss
  alone (forward and backward on fixed logits);
- **end to end**: the README's loop (:func:`dynaloss.harness.noisy.user_loop`: the DLN starting as CE, a
  lookahead teacher round every K iterations) against the same loop with cross-entropy, at equal student
  steps on the demo's task.

One torch thread unless ``--threads``; writes ``OUT.json`` and ``OUT.md``::

    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --out benchmarks/results/step_cost/step_cost
    python benchmarks/step_cost.py --device cuda --out step_cost_cuda
    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --rows mlp-40 --repeats 3 --e2e-steps 400   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynaloss import ClassAwareDLN, PairwiseDLN, RoundRecord, Teacher
from dynaloss.harness.data import Dataset
from dynaloss.harness.noisy import user_loop
from dynaloss.harness.progress import Progress
from dynaloss.harness.progress import progress as progress_report
from dynaloss.harness.training import ArmResult, load_dataset, machine_info, make_split, make_student, seeded

# arm: PairwiseDLN keyword arguments (None: nn.CrossEntropyLoss, the reference every ratio divides by)
ARMS: dict[str, dict[str, Any] | None] = {
    "ce": None,
    "dln-warm": {"init": "warm", "fast": True},
    "dln-warm-exact": {"init": "warm", "fast": False},
    "dln-ce": {"init": "ce", "fast": True},
    "dln-ce-exact": {"init": "ce", "fast": False},
    "class-aware": {"class_aware": True},
}
STEP_LR = 0.01
# Distinct batches a timed training loop cycles through (see _training_steps).
BATCHES = 16
STEP_REPEATS = 9
WARMUP = 1
E2E_STEPS = 2000
E2E_EVERY = 100  # K: a teacher round every K iterations, as the README's loop
E2E_UNROLL = 10
E2E_VAL_RATIO = 0.25  # the README's val_loader: a quarter of the training set
E2E_RECIPE = "SGD(lr=0.05, momentum=0.9, weight_decay=5e-4) + CosineAnnealingLR over the run"


@dataclass(frozen=True)
class Row:
    """One student and batch to time a step of.

    Attributes:
        name: the row's key (``--rows``).
        model: what the student is, for the report.
        make_model: builds the student (called under a fixed seed, so every arm starts from the same weights).
        input_shape: one input's shape.
        batch: inputs per step.
        num_classes: ``C``.
        spatial: the target's shape after the batch: ``()`` for classification, ``(H, W)`` per pixel.
        steps_per_block: steps timed together, so that one timing is long enough for the clock to resolve.
        ignore_index: target value that does not count.
        ignore_share: share of the target entries set to ``ignore_index``.
        max_pixels: the DLN's per-image pixel budget (``None``: every pixel).
    """

    name: str
    model: str
    make_model: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    batch: int
    num_classes: int
    spatial: tuple[int, ...] = ()
    steps_per_block: int = 1
    ignore_index: int = -100
    ignore_share: float = 0.0
    max_pixels: int | None = None

    def describe(self) -> dict[str, Any]:
        """The row's configuration, for the JSON report."""
        return {
            "row": self.name,
            "model": self.model,
            "batch": self.batch,
            "classes": self.num_classes,
            "logits": [self.batch, self.num_classes, *self.spatial],
            "ignore_index": self.ignore_index if self.ignore_share else None,
            "ignore_share": self.ignore_share,
            "max_pixels": self.max_pixels,
            "steps_per_block": self.steps_per_block,
        }


def _mlp(*widths: int) -> nn.Module:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _fcn(*channels: int) -> nn.Module:
    """A fully-convolutional per-pixel classifier: 3x3 convolutions (same size) with ReLU between them."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(fan_in, fan_out, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


ROWS: dict[str, Row] = {
    "mlp-40": Row("mlp-40", "MLP 40-128-128-10", lambda: _mlp(40, 128, 128, 10), (40,), 25, 10, steps_per_block=20),
    "mlp-512": Row("mlp-512", "MLP 512-512-100", lambda: _mlp(512, 512, 100), (512,), 256, 100, steps_per_block=5),
    "per-pixel": Row(
        "per-pixel",
        "FCN 3-32-32-21 (3x3 convs)",
        lambda: _fcn(3, 32, 32, 21),
        (3, 128, 128),
        8,
        21,
        spatial=(128, 128),
        ignore_index=255,
        ignore_share=0.1,
        max_pixels=4096,
    ),
}


# ----------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_alternately(
    runs: Mapping[str, Callable[[], None]],
    *,
    device: torch.device,
    repeats: int,
    warmup: int = WARMUP,
    bar: Progress | None = None,
) -> dict[str, float]:
    """Median seconds of each run, the runs called in turn ``warmup + repeats`` times (warm-ups not counted).

    The order rotates every repeat, so no arm always runs right after the same other one (caches, clocks).
    """
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup + repeats):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            started = time.perf_counter()
            runs[name]()
            _sync(device)
            if index >= warmup:
                seconds[name].append(time.perf_counter() - started)
            if bar is not None:
                bar.update(1)
    return {name: statistics.median(times) for name, times in seconds.items()}


# ------------------------------------------------------------------------------------------------- step
def make_loss(arm: str, row: Row) -> nn.Module:
    """The loss of ``arm`` for ``row``: cross-entropy or a DLN, with the row's ignore index (and pixel budget)."""
    options = ARMS[arm]
    if options is None:
        return nn.CrossEntropyLoss(ignore_index=row.ignore_index)
    if "class_aware" in options:
        return taught_class_aware(row.num_classes, row.ignore_index)
    return PairwiseDLN(row.num_classes, ignore_index=row.ignore_index, max_pixels=row.max_pixels, **options)


def taught_class_aware(num_classes: int, ignore_index: int) -> ClassAwareDLN:
    """A ClassAwareDLN away from its start (every q, offset and pair offset non-zero, a prior counted): the
    exponents at 0 would take the series branch, a taught loss does not."""
    dln = ClassAwareDLN(num_classes, ignore_index=ignore_index)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in dln.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    dln.add_label_counts(torch.arange(1, num_classes + 1), torch.full((num_classes,), 5))
    return dln


def _batch(row: Row, device: torch.device, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random inputs and targets of the row's shapes, a share ``ignore_share`` of the targets ignored."""
    x = torch.randn(row.batch, *row.input_shape, generator=generator)
    y = torch.randint(row.num_classes, (row.batch, *row.spatial), generator=generator)
    if row.ignore_share:
        y[torch.rand(y.shape, generator=generator) < row.ignore_share] = row.ignore_index
    return x.to(device), y.to(device)


def _training_steps(
    model: nn.Module, loss_fn: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], steps: int
) -> Callable[[], None]:
    """``steps`` training steps of ``model``, each on the next of ``batches`` (in a cycle), as a user's loop.

    Several batches rather than one keep the logits moving over the DLN's surface, as training does, so the
    fast path's table is read where it has not been built yet, not only where it has.

    The DLN's parameters keep ``requires_grad``, as in the drop-in loop, so the exact MLP's backward computes
    their gradient too (what ``fast=False`` costs a user); the fast path's backward does not reach them.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=STEP_LR)

    stream = itertools.cycle(batches)

    def run() -> None:
        for _ in range(steps):
            x, y = next(stream)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def _loss_alone(loss_fn: nn.Module, logits: Tensor, y: Tensor, steps: int) -> Callable[[], None]:
    """``steps`` forwards and backwards of the loss on fixed logits: its own cost, without a student."""
    logits = logits.detach().requires_grad_(True)

    def run() -> None:
        for _ in range(steps):
            loss_fn(logits, y).backward()
            logits.grad = None

    return run


def _ratios(times: Mapping[str, float]) -> dict[str, float]:
    return {arm: seconds / times["ce"] for arm, seconds in times.items() if arm != "ce"}


def measure_row(
    row: Row,
    *,
    device: torch.device,
    repeats: int = STEP_REPEATS,
    warmup: int = WARMUP,
    arms: Sequence[str] = tuple(ARMS),
    seed: int = 0,
    bar: Progress | None = None,
) -> dict[str, Any]:
    """Milliseconds per training step and per loss call (forward + backward) of every arm on ``row``.

    Every arm trains its own copy of one student (same initial weights, same batch, its own SGD). ``ce``
    must be among ``arms``: the ratios divide by it.

    Returns:
        ``row.describe()`` plus ``step_ms``, ``step_ratio`` (arm / CE), ``loss_ms`` and ``loss_ratio``.
    """
    if "ce" not in arms:
        raise ValueError(f"arms must include 'ce', the reference of every ratio; got {list(arms)}")
    with seeded(seed):
        student = row.make_model().to(device)
    generator = torch.Generator().manual_seed(seed)
    batches = [_batch(row, device, generator) for _ in range(BATCHES)]
    x, y = batches[0]
    losses = {arm: make_loss(arm, row).to(device) for arm in arms}
    steps = row.steps_per_block
    step_runs = {arm: _training_steps(copy.deepcopy(student), losses[arm], batches, steps) for arm in arms}
    with torch.no_grad():
        logits = student(x)
    loss_runs = {arm: _loss_alone(losses[arm], logits, y, steps) for arm in arms}
    timed = functools.partial(_time_alternately, device=device, repeats=repeats, warmup=warmup, bar=bar)
    step_ms = {arm: 1e3 * s / steps for arm, s in timed(step_runs).items()}
    loss_ms = {arm: 1e3 * s / steps for arm, s in timed(loss_runs).items()}
    return {
        **row.describe(),
        "repeats": repeats,
        "step_ms": step_ms,
        "step_ratio": _ratios(step_ms),
        "loss_ms": loss_ms,
        "loss_ratio": _ratios(loss_ms),
    }


# ------------------------------------------------------------------------------------------- end to end
def _warm_up_optimizer() -> None:
    """Pay a fresh process's one-off cost before the clock runs: a first ``optimizer.step`` imports
    ``torch._dynamo`` (seconds), which would otherwise be charged to whichever arm steps first."""
    weight = nn.Parameter(torch.zeros(1))
    weight.grad = torch.zeros(1)
    torch.optim.SGD([weight], lr=0.0, momentum=0.9).step()


def _arm_loop(
    arm: str,
    model: nn.Module,
    *,
    data: Dataset,
    total_steps: int,
    every: int,
    unroll: int,
    seed: int,
    device: torch.device,
    rounds_s: list[float],
) -> Iterator[ArmResult]:
    """One arm of the end-to-end run, built and ready to start: the README's recipe, CE or the drop-in DLN and
    its teacher, as :func:`~dynaloss.harness.noisy.user_loop` chunks of ``every`` iterations (the last may be
    shorter), so that two arms can take turns on the clock.

    A chunk's ``rounds`` hold its teacher rounds' records; the seconds the taught arm spends in rounds (the
    device synchronised) are appended to ``rounds_s``.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    split = make_split("mnist1d", data, val_ratio=E2E_VAL_RATIO, seed=seed)
    train_iter, val_iter = split.train_batches(), split.val_batches()
    loss_fn: nn.Module = nn.CrossEntropyLoss()
    teach: Callable[[], RoundRecord] | None = None
    if arm == "taught":
        with seeded(seed):  # the LSTM teacher's initial weights
            loss_fn = PairwiseDLN(data.num_classes, init="ce").to(device)
            teacher = Teacher(loss_fn, optimizer=optimizer, steps=unroll, mode="lookahead")

        def teach_round() -> RoundRecord:
            _sync(device)
            started = time.perf_counter()
            record = teacher.step(model, train_iter, val_iter)
            _sync(device)
            rounds_s.append(time.perf_counter() - started)
            return record

        teach = teach_round
    chunk = functools.partial(
        user_loop,
        model,
        loss_fn,
        train_iter,
        optimizer=optimizer,
        scheduler=scheduler,
        evaluate=lambda _: math.nan,  # timed, not scored
        eval_every=every,
        name=arm,
        progress=False,
        teach=teach,
        teach_every=every,  # a chunk starts at a multiple of every: its first iteration is a round's
    )
    return (chunk(total_steps=min(every, total_steps - start)) for start in range(0, total_steps, every))


def measure_end_to_end(
    *,
    device: torch.device,
    total_steps: int = E2E_STEPS,
    every: int = E2E_EVERY,
    unroll: int = E2E_UNROLL,
    seed: int = 0,
    data: Dataset | None = None,
    bar: Progress | None = None,
) -> dict[str, Any]:
    """Wall seconds of ``total_steps`` student steps with CE and with the README's recommended loop, taking turns.

    The demo's task (MNIST-1D, the 1-D CNN, batches of 25, teacher validation batches of 100) and the README's
    recipe (:data:`E2E_RECIPE`) for both arms, from the same initial weights on the same train stream; the
    taught arm's loss is ``PairwiseDLN(C, init="ce")`` and a ``Teacher(loss_fn, optimizer=optimizer,
    steps=unroll, mode="lookahead")`` round runs at every ``every``-th iteration (the first included).

    Args:
        total_steps: student steps of each arm (default: :data:`E2E_STEPS`).
        every: K, iterations between teacher rounds (default: :data:`E2E_EVERY`).
        unroll: N, the teacher's steps per stage (default: :data:`E2E_UNROLL`).
        data: the data set (default: MNIST-1D, generated locally).
        bar: advanced by one per timed chunk.

    Returns:
        ``ce_s``, ``taught_s`` and their ``ratio``; ``rounds``, ``rounds_skipped``, ``rounds_s`` (seconds in
        teacher rounds), ``rounds_share`` (of ``taught_s``), ``steps_ratio`` (the taught run outside its rounds
        over CE), with the configuration.
    """
    data = load_dataset("mnist1d") if data is None else data
    data = Dataset(*(tensor.to(device) for tensor in data))
    student = make_student("mnist1d", data.num_classes, seed).to(device)
    rounds_s: list[float] = []
    arm_loop = functools.partial(
        _arm_loop,
        data=data,
        total_steps=total_steps,
        every=every,
        unroll=unroll,
        seed=seed,
        device=device,
        rounds_s=rounds_s,
    )
    loops = {arm: arm_loop(arm, copy.deepcopy(student)) for arm in ("ce", "taught")}
    _warm_up_optimizer()
    wall = {"ce": 0.0, "taught": 0.0}
    rounds: list[dict[str, Any]] = []
    for chunk in range(math.ceil(total_steps / every)):
        for arm in ("ce", "taught") if chunk % 2 == 0 else ("taught", "ce"):
            _sync(device)
            started = time.perf_counter()
            result = next(loops[arm])
            _sync(device)
            wall[arm] += time.perf_counter() - started
            rounds += result.rounds
            if bar is not None:
                bar.update(1)
    in_rounds = sum(rounds_s)
    return {
        "task": "MNIST-1D (4000 train, generated locally), MNIST1DCNN, train batch 25, val batch 100",
        "recipe": E2E_RECIPE,
        "loss": 'PairwiseDLN(C, init="ce") + Teacher(loss_fn, optimizer=optimizer, mode="lookahead")',
        "steps": total_steps,
        "every": every,
        "unroll": unroll,
        "val_ratio": E2E_VAL_RATIO,
        "ce_s": wall["ce"],
        "taught_s": wall["taught"],
        "ratio": wall["taught"] / wall["ce"],
        "rounds": len(rounds),
        "rounds_skipped": sum(record["skipped"] for record in rounds),
        "rounds_s": in_rounds,
        "rounds_share": in_rounds / wall["taught"],
        "steps_ratio": (wall["taught"] - in_rounds) / wall["ce"],
    }


# -------------------------------------------------------------------------------------------- reporting
_ARM_LABELS = {
    "ce": "CrossEntropyLoss",
    "dln-warm": "PairwiseDLN warm, fast",
    "dln-warm-exact": "PairwiseDLN warm, exact MLP",
    "dln-ce": 'PairwiseDLN init="ce", fast',
    "dln-ce-exact": 'PairwiseDLN init="ce", exact MLP',
    "class-aware": "ClassAwareDLN (taught)",
}


def step_table(rows: Sequence[dict[str, Any]]) -> str:
    """The step measurements as a Markdown table, one line per row and arm."""
    lines = [
        "| row | logits | loss | step ms | step / CE | loss fwd+bwd ms | loss / CE |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        logits = "x".join(map(str, row["logits"]))
        for arm, step_ms in row["step_ms"].items():
            step_ratio, loss_ratio = row["step_ratio"].get(arm, 1.0), row["loss_ratio"].get(arm, 1.0)
            lines.append(
                f"| {row['model']} | {logits} | {_ARM_LABELS.get(arm, arm)} | {step_ms:.3f} | {step_ratio:.2f} "
                f"| {row['loss_ms'][arm]:.3f} | {loss_ratio:.2f} |"
            )
    return "\n".join(lines)


def end_to_end_table(result: Mapping[str, Any]) -> str:
    """The end-to-end measurement as a Markdown table: CE and the README's loop at equal student steps."""
    share = f"{100 * result['rounds_share']:.0f} %"
    return "\n".join(
        [
            "| loop | student steps | wall s | / CE | teacher rounds | s in rounds | share in rounds "
            "| outside rounds / CE |",
            "|---|---|---|---|---|---|---|---|",
            f"| CrossEntropyLoss | {result['steps']} | {result['ce_s']:.2f} | 1.00 | - | - | - | 1.00 |",
            f'| README loop (DLN init="ce", K = {result["every"]}, N = {result["unroll"]}) | {result["steps"]} '
            f"| {result['taught_s']:.2f} | {result['ratio']:.2f} | {result['rounds']} | {result['rounds_s']:.2f} "
            f"| {share} | {result['steps_ratio']:.2f} |",
        ]
    )


def planned_timings(
    rows: int, *, repeats: int, warmup: int = WARMUP, arms: int = len(ARMS), e2e_steps: int = 0, every: int = E2E_EVERY
) -> int:
    """How many timed calls a run makes: the progress bar's total."""
    return rows * 2 * arms * (warmup + repeats) + 2 * math.ceil(e2e_steps / every)


def run_step_cost(
    rows: Sequence[Row],
    *,
    device: torch.device,
    out: Path,
    repeats: int = STEP_REPEATS,
    e2e_steps: int | None = E2E_STEPS,
    e2e_every: int = E2E_EVERY,
    e2e_unroll: int = E2E_UNROLL,
    e2e_data: Dataset | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure ``rows`` (and the end-to-end loop unless ``e2e_steps`` is ``None``); print and write the report.

    Prints the machine, the configuration and both tables; writes ``<out>.json`` (machine, config, rows,
    end_to_end) and ``<out>.md``.

    Args:
        out: path prefix: ``<out>.json`` and ``<out>.md`` are written.
        e2e_every, e2e_unroll: the README loop's K and the teacher's N.
        e2e_data: the end-to-end data set (default: MNIST-1D).
        progress: report progress on stderr (default: ``True``).
    """
    machine = machine_info(device)
    config = {
        "rows": [row.name for row in rows],
        "arms": {arm: "nn.CrossEntropyLoss" if options is None else options for arm, options in ARMS.items()},
        "step": f"forward, loss, backward, SGD(lr={STEP_LR}).step(); DLN held fixed",
        "loss": "forward + backward on fixed logits",
        "repeats": repeats,
        "warmup": WARMUP,
        "dtype": "float32",
        "e2e_steps": e2e_steps,
        "e2e_every": e2e_every,
        "e2e_unroll": e2e_unroll,
    }
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print("config:  " + ", ".join(f"{k}={v}" for k, v in config.items()), flush=True)
    total = planned_timings(len(rows), repeats=repeats, e2e_steps=e2e_steps or 0, every=e2e_every)
    measured: list[dict[str, Any]] = []
    end_to_end = None
    with progress_report(total, "step cost", unit="timing", enabled=progress) as bar:
        for row in rows:
            bar.set_postfix_str(row.name)
            measured.append(measure_row(row, device=device, repeats=repeats, bar=bar))
        if e2e_steps is not None:
            bar.set_postfix_str("end to end")
            end_to_end = measure_end_to_end(
                device=device, total_steps=e2e_steps, every=e2e_every, unroll=e2e_unroll, data=e2e_data, bar=bar
            )
    tables = [step_table(measured)] if measured else []
    if end_to_end is not None:
        tables.append(end_to_end_table(end_to_end))
    print("\n" + "\n\n".join(tables))
    report = {"machine": machine, "config": config, "rows": measured, "end_to_end": end_to_end}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    header = "\n".join(
        f"{name}: " + ", ".join(f"{k}={v}" for k, v in part.items())
        for name, part in (("machine", machine), ("config", config))
    )
    out.with_suffix(".md").write_text(header + "\n\n" + "\n\n".join(tables) + "\n")
    return report


# ------------------------------------------------------------------------------------------ command line
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", choices=list(ROWS), nargs="+", help="students to time (default: all)")
    parser.add_argument(
        "--repeats", type=_positive_int, default=STEP_REPEATS, help="timed repeats, median reported (%(default)s)"
    )
    parser.add_argument(
        "--e2e-steps", type=_positive_int, default=E2E_STEPS, help="student steps per end-to-end arm (%(default)s)"
    )
    parser.add_argument("--skip-e2e", action="store_true", help="leave out the end-to-end comparison")
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("step_cost"), help="writes OUT.json and OUT.md")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress report")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    run_step_cost(
        [ROWS[name] for name in args.rows or ROWS],
        device=torch.device(args.device),
        out=args.out,
        repeats=args.repeats,
        e2e_steps=None if args.skip_e2e else args.e2e_steps,
        progress=args.progress,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
