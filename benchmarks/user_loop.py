"""The user's-loop benchmark: does the drop-in DLN + teacher beat a *tuned* cross-entropy in YOUR loop?

A user replaces ``nn.CrossEntropyLoss()`` in their own training loop (their optimizer, their learning-rate
schedule, stepped every iteration) with the library's recommended drop-in::

    teacher = dynaloss.pairwise_teacher(C, preset, optimizer=optimizer, mode="lookahead")
    loss_fn = teacher.loss_fn                           # and every K iterations:
    teacher.step(model, train_iter, val_iter)           # the DLN learns; the model is left to the optimizer

Grid: students (``cnn`` = the 1-D CNN, digits read as length-64 sequences; ``mlp``; ``resmlp``, a residual MLP
with BatchNorm) x data (``mnist1d``, ``digits``) x recipes (``sgd``: plain SGD at a constant rate, the paper's
protocol; ``sgdm``: momentum 0.9, weight decay 5e-4, cosine; ``adamw``: weight decay 1e-2, cosine). Arms:

- ``ce``: cross-entropy on ALL the training data (a CE user holds nothing out);
- ``dln-fixed``: the preset's DLN held fixed, trained on the teacher-train part (3/4);
- ``dln-taught``: the drop-in above, a teacher round every K iterations (K = 100; ``dln-taught-K50`` etc. for
  other K), training on 3/4 of the training set and validating the teacher on the other 1/4 (re-split
  every epoch, :class:`dynaloss.harness.data.EpochSplit`);
- ``paper`` (``sgd`` recipe only): ``mode="paper"``: teacher rounds alone train the student, 2N optimizer steps
  a round;
- ``ce-time``: compute-matched CE: CE with the same training time as the same seed's ``dln-taught`` run (at the
  first ``--teach-every``): its steps scaled by the ratio of the two runs' training CPU time (a one-thread
  worker's wall time on an idle core), its cosine over the longer budget, ``ce``'s learning rate;
- ``dln-taught-legacy``: the README's OLD loop (``Teacher(PairwiseDLN(C), steps=10, mode="lookahead")``,
  ``teacher.student_lr`` synced from the optimizer before each round, no ``optimizer=``), on today's library
  (whose ``Teacher`` rolls back by default); ``dln-taught-legacy-no-rollback``: the same with ``rollback=False``,
  as the library was before rollback. Both are arms of ``--case repro``.

Protocol (benchmarks/README.md): every arm takes ``--steps`` steps (batch 25) from the same weights per seed. Each
arm's learning rate is tuned per cell (student, data, recipe) over the recipe's 3-value grid (:data:`RECIPES`)
by accuracy on a held-out 20 % of the TRAINING set, trained on the other 80 % from a tuning seed that is not
an evaluation seed; the test set is only used for the reported numbers. Phases run over the whole grid in
order (tune, seeds, ce-time), since each depends on the one before. Every finished job is appended to
``OUT/runs.jsonl`` and skipped when the script is run again (kill and re-run to resume; a job is identified by
its configuration, not by the code: start a new ``--out`` after changing either); ``OUT/user_loop.json``
(machine, configuration, every run) and ``OUT/user_loop.md`` are written at the end. The K sweep below writes
to the full grid's folder by default, where its ``dln-taught`` (K = 100) and ``ce`` runs are already done;
each other K is tuned as an arm of its own.

    OMP_NUM_THREADS=1 python benchmarks/user_loop.py --fast          # ~10 min on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/user_loop.py                 # full grid, 5 seeds
    OMP_NUM_THREADS=1 python benchmarks/user_loop.py --case repro    # the old loop's reproduction
    OMP_NUM_THREADS=1 python benchmarks/user_loop.py --students cnn --data mnist1d --recipes sgdm \\
        --arms ce dln-taught --teach-every 50 100 200                # a K sweep on one cell

``--fast`` runs the ``cnn`` and ``resmlp`` students on both data sets with all three recipes, every default arm,
seeds 0 and 1, 2,000 steps, at a fixed learning rate per recipe (the middle of its grid: no tuning phase):
4 cells x (4 arms x 3 recipes + ``paper``) x 2 seeds = 104 jobs. ``--case repro`` is the old loop's case: standard
MNIST-1D, the 1-D CNN, SGD(lr=0.05, momentum=0.9, weight_decay=5e-4) + cosine over 8,000 iterations, K = 100,
seeds 0-2, arms ce, dln-fixed, dln-taught and both legacy loops, test accuracy every 1,000 iterations.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynaloss.harness.progress import progress

STUDENTS = ("cnn", "mlp", "resmlp")
DATASETS = ("mnist1d", "digits")
# The learning-rate grid each arm is tuned over, per recipe; --fast and --fixed-lr take its middle value (how it
# was chosen: docs/design-notes-harness.md). The report marks a pick at an end of its grid.
RECIPES: dict[str, dict[str, Any]] = {
    "sgd": {"lrs": (0.1, 0.2, 0.4)},
    "sgdm": {"lrs": (0.01, 0.03, 0.1)},
    "adamw": {"lrs": (1e-3, 3e-3, 1e-2)},
}
LEGACY_ARMS = ("dln-taught-legacy", "dln-taught-legacy-no-rollback")
ARMS = ("ce", "dln-fixed", "dln-taught", "paper", "ce-time", *LEGACY_ARMS)
DEFAULT_ARMS = ("ce", "dln-fixed", "dln-taught", "paper", "ce-time")
DEFAULT_K = 100  # teacher rounds every K iterations: the README's pattern
# A run whose teacher skips this many rounds in a row (non-finite values) is not going to recover.
MAX_FAILURES = 20
# Every arm's student step reads 25 examples, so equal steps are equal data; teacher validation batches hold 100.
TRAIN_BATCH, VAL_BATCH = 25, 100


# ------------------------------------------------------------------------------------------------ jobs
class JsonKeyed:
    """A frozen dataclass of a job's configuration whose JSON is its key in :class:`Store` (robust.py's too)."""

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Job(JsonKeyed):
    """One training run: every field that changes its result, so that the JSONL key identifies it.

    ``phase`` is ``"tune"`` (train on 80 % of the training set, score on the held-out 20 %) or ``"test"``
    (train on the training set, score on the test set).
    """

    phase: str
    student: str
    data: str
    recipe: str
    arm: str
    lr: float
    seed: int
    steps: int
    preset: str
    teach_every: int | None  # K of the taught arms, None for the others
    val_ratio: float  # the DLN arms' teacher-validation share
    eval_every: int
    holdout: float  # the share of the training set the tune phase scores on (0 in the test phase)


def arm_kind(arm: str) -> str:
    """``'dln-taught-K50'`` -> ``'dln-taught'``: the arm's training rule, whatever its K."""
    return "dln-taught" if arm.startswith("dln-taught-K") else arm


def display_rank(arm: str) -> tuple[int, int]:
    """Table order within a cell: ce, ce-time, dln-fixed, the taught arms by K, paper, legacy."""
    order = ("ce", "ce-time", "dln-fixed", "dln-taught", "paper", *LEGACY_ARMS)
    k = int(arm.removeprefix("dln-taught-K")) if arm.startswith("dln-taught-K") else DEFAULT_K
    return order.index(arm_kind(arm)), k


def taught_arm(k: int) -> str:
    """The name of the taught arm at K: the default K keeps the plain name, so a K sweep reuses its runs."""
    return "dln-taught" if k == DEFAULT_K else f"dln-taught-K{k}"


# ------------------------------------------------------------------------------------------ data, model
@functools.cache
def _dataset(name: str) -> Any:
    from dynaloss.harness.training import load_dataset

    return load_dataset(name)


@functools.cache
def cell_data(data: str, student: str, holdout: float, seed: int) -> Any:
    """The data set as ``student`` reads it; with ``holdout`` > 0 the tune phase's (train 80 %, held-out 20 %).

    The CNN reads any input as a sequence, so digits' 8x8 images become length-64 sequences for it. The
    held-out part is drawn by ``seed`` and replaces the test set, which the tune phase never sees.
    """
    from dynaloss.harness.data import Dataset

    full = _dataset(data)
    x_train, y_train, x_test, y_test = full
    if holdout > 0:
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))
        cut = round(len(order) * holdout)
        held, kept = order[:cut], order[cut:]
        x_train, y_train, x_test, y_test = x_train[kept], y_train[kept], x_train[held], y_train[held]
    if student == "cnn":
        x_train, x_test = x_train.flatten(1).unsqueeze(1), x_test.flatten(1).unsqueeze(1)
    return Dataset(x_train, y_train, x_test, y_test)


def build_student(name: str, data: Any, seed: int) -> nn.Module:
    """The student ``name`` sized for ``data``, its initial weights drawn from ``seed`` (the same for every arm)."""
    from dynaloss.harness.models import MNIST1DCNN, DigitsMLP, ResMLP
    from dynaloss.harness.training import seeded

    features, classes = data.x_train[0].numel(), data.num_classes
    builders: dict[str, Callable[[], nn.Module]] = {
        "cnn": lambda: MNIST1DCNN(classes, length=features),
        "mlp": lambda: DigitsMLP(classes, in_features=features),
        "resmlp": lambda: ResMLP(classes, in_features=features),
    }
    with seeded(seed):
        return builders[name]()


def make_recipe(recipe: str, model: nn.Module, lr: float, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """The user's optimizer and scheduler (``None``: constant rate); the scheduler is stepped every iteration."""
    if recipe == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr), None
    if recipe == "sgdm":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    elif recipe == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    else:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {recipe!r}")
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)


def make_stream(job: Job, data: Any, *, hold_out_val: bool) -> Any:
    """The epoch-wise data stream: CE (``hold_out_val=False``) trains on every example, the DLN arms on 3/4."""
    from dynaloss.harness.training import make_split

    if not hold_out_val:  # EpochSplit needs a val part: one example, a different one every epoch
        return make_split(
            job.data,
            data,
            val_ratio=1 / len(data.y_train),
            seed=job.seed,
            train_batch_size=TRAIN_BATCH,
            val_batch_size=1,
        )
    return make_split(
        job.data, data, val_ratio=job.val_ratio, seed=job.seed, train_batch_size=TRAIN_BATCH, val_batch_size=VAL_BATCH
    )


# ---------------------------------------------------------------------------------------------- loops
@dataclass
class Trace:
    """Accuracy along a run and its training time; evaluations are not counted as training time."""

    evaluate: Callable[[nn.Module], float]
    steps: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    eval_seconds: float = 0.0
    eval_cpu_seconds: float = 0.0
    stopped: str | None = None

    def record(self, model: nn.Module, step: int) -> None:
        started, cpu = time.perf_counter(), time.process_time()
        self.steps.append(step)
        self.accuracy.append(self.evaluate(model))
        self.eval_seconds += time.perf_counter() - started
        self.eval_cpu_seconds += time.process_time() - cpu


def user_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loss_fn: Callable[..., torch.Tensor],
    train_iter: Iterator[Any],
    *,
    steps: int,
    trace: Trace,
    eval_every: int,
    teach: Callable[[], None] | None = None,
    teach_every: int | None = None,
) -> int:
    """A plain training loop as a user writes it; ``teach()`` (a teacher round) every ``teach_every`` iterations.

    Returns the optimizer steps taken (``steps``).
    """
    model.train()
    for it in range(1, steps + 1):
        x, y = next(train_iter)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # no round after the last step: nothing trains with the DLN it would produce
        if teach is not None and teach_every is not None and it % teach_every == 0 and it < steps:
            teach()
        if it % eval_every == 0 or it == steps:
            trace.record(model, it)
    return steps


def paper_loop(
    model: nn.Module, teacher: Any, scheduler: Any, split: Any, *, steps: int, trace: Trace, eval_every: int
) -> int:
    """``mode="paper"``: teacher rounds alone train the student, ``record.student_steps`` (2N) optimizer steps each.

    Returns the optimizer steps taken: ``steps`` rounded up to whole rounds, fewer if the teacher gave up.
    """
    from dynaloss.harness.training import align_steps

    train_iter, val_iter = split.train_batches(), split.val_batches()
    steps = align_steps(steps, 2 * teacher.steps)
    done, failures = 0, 0
    while done < steps:
        record = teacher.step(model, train_iter, val_iter)
        trace.rounds.append(record.as_dict())
        taken = record.student_steps
        failures = 0 if taken else failures + 1
        if failures == MAX_FAILURES:
            trace.stopped = f"{failures} teacher rounds in a row were skipped"
            break
        for _ in range(taken if scheduler is not None else 0):  # the schedule counts optimizer steps
            scheduler.step()
        before, done = done, done + taken
        if taken and (done // eval_every > before // eval_every or done >= steps):
            trace.record(model, done)
    return done


@functools.cache
def warm_up() -> None:
    """Pay a fresh process's one-off costs before the first run in it is timed.

    An optimizer's first step imports ``torch._dynamo`` (~3 s), which would otherwise be charged to whichever
    job a worker happens to run first, and skew the time ratio ``ce-time`` is matched on.
    """
    weight = nn.Parameter(torch.zeros(1))
    for optimizer in (torch.optim.SGD([weight], lr=0.0, momentum=0.9), torch.optim.AdamW([weight], lr=0.0)):
        weight.grad = torch.zeros(1)
        optimizer.step()


# ------------------------------------------------------------------------------------------------ arms
def run_job(job: Job) -> dict[str, Any]:
    """Train one arm of one cell on one seed; returns the accuracy curve, time and teacher rounds."""
    torch.set_num_threads(1)
    import dynaloss
    from dynaloss.harness.training import evaluate_accuracy, seeded

    data = cell_data(job.data, job.student, job.holdout, job.seed)
    model = build_student(job.student, data, job.seed)
    trace = Trace(lambda m: evaluate_accuracy(m, data.x_test, data.y_test))
    optimizer, scheduler = make_recipe(job.recipe, model, job.lr, job.steps)
    kind, classes = arm_kind(job.arm), data.num_classes
    torch.manual_seed(job.seed)  # nothing should draw from the global generator, but if it does, reproducibly
    warm_up()
    started, cpu = time.perf_counter(), time.process_time()
    trace.record(model, 0)
    common = {"steps": job.steps, "trace": trace, "eval_every": job.eval_every}
    if kind in ("ce", "ce-time"):
        split = make_stream(job, data, hold_out_val=False)
        taken = user_loop(model, optimizer, scheduler, F.cross_entropy, split.train_batches(), **common)
    elif kind == "dln-fixed":
        with seeded(job.seed):  # the "paper" preset's DLN is random
            loss_fn = dynaloss.PairwiseDLN(classes, **dynaloss.PRESETS[job.preset]["dln"])
        split = make_stream(job, data, hold_out_val=True)
        taken = user_loop(model, optimizer, scheduler, loss_fn, split.train_batches(), **common)
    elif kind in ("dln-taught", *LEGACY_ARMS):
        split = make_stream(job, data, hold_out_val=True)
        train_iter, val_iter = split.train_batches(), split.val_batches()
        with seeded(job.seed):
            if kind == "dln-taught":  # the recommended drop-in: rounds unroll the user's optimizer rule
                teacher = dynaloss.pairwise_teacher(classes, job.preset, optimizer=optimizer, mode="lookahead")
            else:  # the README's old loop, kept as the reproduction's baseline
                extra = {"rollback": False} if kind == "dln-taught-legacy-no-rollback" else {}
                teacher = dynaloss.Teacher(dynaloss.PairwiseDLN(classes), steps=10, mode="lookahead", **extra)

        def teach() -> None:
            if kind in LEGACY_ARMS:  # the old README's sync: the unroll is plain SGD at the current rate
                teacher.student_lr = optimizer.param_groups[0]["lr"]
            trace.rounds.append(teacher.step(model, train_iter, val_iter).as_dict())

        taken = user_loop(
            model, optimizer, scheduler, teacher.loss_fn, train_iter, teach=teach, teach_every=job.teach_every, **common
        )
    elif kind == "paper":
        split = make_stream(job, data, hold_out_val=True)
        with seeded(job.seed):
            teacher = dynaloss.pairwise_teacher(classes, job.preset, optimizer=optimizer, mode="paper")
        taken = paper_loop(model, teacher, scheduler, split, **common)
    else:
        raise ValueError(f"unknown arm {job.arm!r}")
    return run_result(trace, taken, started, cpu)


def run_result(trace: Trace, taken: int, started: float, cpu: float) -> dict[str, Any]:
    """What every run reports, from ``trace`` and the wall and CPU clocks read when training started.

    ``train_cpu_seconds`` is what ``ce-time`` matches: training, not evaluation; the CPU time of a one-thread
    worker is its wall time on an idle core, while wall time on shared cores grows with whatever else runs there.
    """
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    round_seconds = [r["seconds"] for r in trace.rounds]
    return {
        "final": trace.accuracy[-1],
        "best": max(trace.accuracy),
        "curve_steps": trace.steps,
        "curve": trace.accuracy,
        "student_steps": taken,
        "seconds": seconds,
        "train_seconds": seconds - trace.eval_seconds,
        "train_cpu_seconds": cpu_seconds - trace.eval_cpu_seconds,
        "rounds": len(trace.rounds),
        "skipped_rounds": sum(bool(r["skipped"]) for r in trace.rounds),
        "rolled_back_rounds": sum(bool(r.get("rolled_back")) for r in trace.rounds),
        "round_seconds": statistics.median(round_seconds) if round_seconds else None,
        "stopped": trace.stopped,
    }


# ------------------------------------------------------------------------------------------ the store
class Store:
    """Finished jobs, one JSON line each in ``path``: appended as they finish, read back on a re-run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed run may be cut short
                    continue
                self.results[entry["key"]] = entry

    def __contains__(self, job: JsonKeyed) -> bool:
        return job.key() in self.results

    def get(self, job: JsonKeyed) -> dict[str, Any]:
        return self.results[job.key()]

    def add(self, job: JsonKeyed, result: dict[str, Any]) -> None:
        entry = {"key": job.key(), "job": asdict(job), "result": result}
        self.results[entry["key"]] = entry
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()


def init_worker() -> None:
    torch.set_num_threads(1)


def run_phase(
    jobs: list[Any],
    store: Store,
    pool: ProcessPoolExecutor | None,
    desc: str,
    run: Callable[[Any], dict[str, Any]] | None = None,
) -> None:
    """Run the jobs not in ``store`` (in ``pool``, or here without one), storing each as soon as it ends.

    ``run`` trains one job (default: :func:`run_job`); in a pool it must be a module-level function.
    """
    run = run_job if run is None else run
    pending = list(dict.fromkeys(job for job in jobs if job not in store))
    if not pending:
        return
    with progress(len(pending), desc, unit="job") as bar:
        if pool is None:
            for job in pending:
                store.add(job, run(job))
                bar.update()
            return
        running: dict[Future[dict[str, Any]], Any] = {pool.submit(run, job): job for job in pending}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                store.add(job, future.result())  # a failed job raises here; the finished ones are kept
                bar.update()


# -------------------------------------------------------------------------------------------- planning
def cells(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    return [(s, d, r) for s in args.students for d in args.data for r in args.recipes]


def trained_arms(args: argparse.Namespace, recipe: str) -> list[str]:
    """The arms that train with their own (tuned) rate in a cell: every arm but ce-time, paper only with sgd."""
    arms: list[str] = []
    for arm in args.arms:
        if arm == "dln-taught":
            arms += [taught_arm(k) for k in args.teach_every]
        elif arm == "paper" and recipe != "sgd":
            continue  # the student trained by rounds alone is the paper's protocol: plain SGD
        elif arm != "ce-time":
            arms.append(arm)
    return arms


def make_job(args: argparse.Namespace, cell: tuple[str, str, str], arm: str, lr: float, seed: int, phase: str) -> Job:
    student, data, recipe = cell
    return Job(
        phase=phase,
        student=student,
        data=data,
        recipe=recipe,
        arm=arm,
        lr=lr,
        seed=seed,
        steps=args.steps,
        preset=args.preset,
        teach_every=teach_every_of(args, arm),
        val_ratio=args.val_ratio,
        eval_every=min(args.eval_every, args.steps),
        holdout=args.tune_holdout if phase == "tune" else 0.0,
    )


def teach_every_of(args: argparse.Namespace, arm: str) -> int | None:
    """K of a taught arm (the legacy loop's: the first --teach-every); ``None`` for the arms without rounds."""
    if arm.startswith("dln-taught-K"):
        return int(arm.removeprefix("dln-taught-K"))
    if arm in LEGACY_ARMS:
        return args.teach_every[0]
    return DEFAULT_K if arm == "dln-taught" else None


def lr_grid(args: argparse.Namespace, recipe: str) -> tuple[float, ...]:
    if args.lr is not None:
        return (args.lr,)
    if args.fixed_lr:
        grid = RECIPES[recipe]["lrs"]
        return (grid[len(grid) // 2],)
    return tuple(RECIPES[recipe]["lrs"])


def tune_jobs(args: argparse.Namespace) -> list[Job]:
    """Every (cell, arm, lr) on the tuning seed; none when the rate is fixed (a single-value grid)."""
    return [
        make_job(args, cell, arm, lr, args.tune_seed, "tune")
        for cell in cells(args)
        if len(lr_grid(args, cell[2])) > 1
        for arm in trained_arms(args, cell[2])
        for lr in lr_grid(args, cell[2])
    ]


def pick_lrs(args: argparse.Namespace, store: Store) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """Per (cell, arm): the rate of the best held-out accuracy (ties: the smaller rate) and the scores of the grid."""
    picks = {}
    for cell in cells(args):
        grid = lr_grid(args, cell[2])
        for arm in trained_arms(args, cell[2]):
            if len(grid) == 1:
                picks[(*cell, arm)] = {"lr": grid[0], "tuned": False, "scores": {}}
                continue
            scores = {
                lr: store.get(make_job(args, cell, arm, lr, args.tune_seed, "tune"))["result"]["final"] for lr in grid
            }
            best = max(grid, key=lambda lr: (scores[lr], -lr))
            picks[(*cell, arm)] = {"lr": best, "tuned": True, "scores": scores, "edge": best in (grid[0], grid[-1])}
    return picks


def seed_jobs(args: argparse.Namespace, picks: dict[tuple[str, ...], dict[str, Any]]) -> list[Job]:
    return [
        make_job(args, cell, arm, picks[(*cell, arm)]["lr"], seed, "test")
        for cell in cells(args)
        for arm in trained_arms(args, cell[2])
        for seed in args.seed_list
    ]


def ce_time_jobs(args: argparse.Namespace, picks: dict[tuple[str, ...], dict[str, Any]], store: Store) -> list[Job]:
    """CE for as long (training wall time) as the same seed's taught run at the first K: more steps, same rate."""
    if "ce-time" not in args.arms or "ce" not in args.arms or "dln-taught" not in args.arms:
        return []
    jobs = []
    for cell in cells(args):
        ce_lr = picks[(*cell, "ce")]["lr"]
        taught = taught_arm(args.teach_every[0])
        for seed in args.seed_list:
            ce = store.get(make_job(args, cell, "ce", ce_lr, seed, "test"))["result"]
            dln = store.get(make_job(args, cell, taught, picks[(*cell, taught)]["lr"], seed, "test"))["result"]
            steps = matched_steps(args.steps, dln, ce)
            job = make_job(args, cell, "ce-time", ce_lr, seed, "test")
            jobs.append(replace(job, steps=steps, eval_every=min(args.eval_every, steps)))
    return jobs


def matched_steps(steps: int, costly: dict[str, Any], ce: dict[str, Any]) -> int:
    """CE's steps for the training CPU time the ``costly`` run took: ``steps`` scaled by the two runs' ratio."""
    return max(steps, round(steps * costly["train_cpu_seconds"] / ce["train_cpu_seconds"]))


# ------------------------------------------------------------------------------------------- reporting
def fmt_mean_std(values: list[float]) -> str:
    mean, std = statistics.mean(values), statistics.pstdev(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def summarise(runs: list[dict[str, Any]], picks: dict[tuple[str, ...], dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (cell, arm): seeds' finals, deltas against the same seed's tuned-CE twin, times."""
    rows = []
    by_key: dict[tuple[str, ...], dict[int, dict[str, Any]]] = {}
    for run in runs:
        job = run["job"]
        by_key.setdefault((job["student"], job["data"], job["recipe"], job["arm"]), {})[job["seed"]] = run
    cell_order = {key[:3]: i for i, key in reversed(list(enumerate(by_key)))}  # first appearance
    ordered = sorted(by_key.items(), key=lambda item: (cell_order[item[0][:3]], display_rank(item[0][3])))
    for (student, data, recipe, arm), seeds in ordered:
        ce = by_key.get((student, data, recipe, "ce"), {})
        finals = {seed: run["result"]["final"] for seed, run in sorted(seeds.items())}
        deltas = [finals[s] - ce[s]["result"]["final"] for s in finals if s in ce]
        pick = picks.get((student, data, recipe, "ce" if arm == "ce-time" else arm), {})
        rows.append(
            {
                "student": student,
                "data": data,
                "recipe": recipe,
                "arm": arm,
                "lr": next(iter(seeds.values()))["job"]["lr"],
                "lr_at_grid_edge": pick.get("edge", False),
                "seeds": list(finals),
                "finals": list(finals.values()),
                "mean": statistics.mean(finals.values()),
                "std": statistics.pstdev(finals.values()),
                "delta_vs_ce": statistics.mean(deltas) if deltas and arm != "ce" else None,
                "worst_seed_delta_vs_ce": min(deltas) if deltas and arm != "ce" else None,
                "steps": statistics.mean(run["result"]["student_steps"] for run in seeds.values()),
                "seconds": statistics.mean(run["result"]["seconds"] for run in seeds.values()),
                "skipped_rounds": sum(run["result"]["skipped_rounds"] for run in seeds.values()),
                "rolled_back_rounds": sum(run["result"].get("rolled_back_rounds", 0) for run in seeds.values()),
                "stopped": [s for s, run in seeds.items() if run["result"]["stopped"]],
            }
        )
    return rows


def grid_averages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm over the cells it ran in: mean accuracy, mean delta vs CE, cells ahead of CE, worst seed delta."""
    averages = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        deltas = [r["delta_vs_ce"] for r in mine if r["delta_vs_ce"] is not None]
        worst = [r["worst_seed_delta_vs_ce"] for r in mine if r["worst_seed_delta_vs_ce"] is not None]
        averages.append(
            {
                "arm": arm,
                "cells": len(mine),
                "mean": statistics.mean(r["mean"] for r in mine),
                "delta_vs_ce": statistics.mean(deltas) if deltas else None,
                "cells_ahead_of_ce": sum(d > 0 for d in deltas) if deltas else None,
                "worst_seed_delta_vs_ce": min(worst) if worst else None,
            }
        )
    return averages


def fmt_points(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.2f}"


def markdown(
    rows: list[dict[str, Any]], averages: list[dict[str, Any]], runs: list[dict[str, Any]], curves: bool
) -> str:
    lines = [
        "| student | data | recipe | arm | lr | final test acc % | Δ vs CE, points | worst seed Δ vs its CE twin | "
        "per seed (final) | steps | s / run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{100 * v:.1f}" for v in r["finals"])
        lr = f"{r['lr']:g}" + (" (edge)" if r["lr_at_grid_edge"] else "")
        notes = "".join(
            f" ({r[key]} {what}, all seeds)"
            for key, what in (("skipped_rounds", "rounds skipped"), ("rolled_back_rounds", "rollbacks"))
            if r[key]
        )
        lines.append(
            f"| {r['student']} | {r['data']} | {r['recipe']} | {r['arm']} | {lr} | {fmt_mean_std(r['finals'])}"
            f"{notes} | {fmt_points(r['delta_vs_ce'])} | {fmt_points(r['worst_seed_delta_vs_ce'])} | {per_seed} | "
            f"{r['steps']:.0f} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "Averages over the cells each arm ran in (Δ: the mean over cells of the mean delta to CE on the same seeds):",
        "",
        "| arm | cells | mean final test acc % | mean Δ vs CE, points | cells ahead of CE | worst seed Δ |",
        "|---|---|---|---|---|---|",
    ]
    for a in averages:
        ahead = "" if a["cells_ahead_of_ce"] is None else f"{a['cells_ahead_of_ce']} / {a['cells']}"
        lines.append(
            f"| {a['arm']} | {a['cells']} | {100 * a['mean']:.2f} | {fmt_points(a['delta_vs_ce'])} | {ahead} | "
            f"{fmt_points(a['worst_seed_delta_vs_ce'])} |"
        )
    if curves:
        lines += ["", *curve_table(runs)]
    return "\n".join(lines)


def lr_note(args: argparse.Namespace) -> str:
    """Where the table's learning rates come from."""
    if args.lr is not None or args.fixed_lr:
        return "Learning rates: fixed (no tuning): " + ", ".join(f"{r} {lr_grid(args, r)[0]:g}" for r in args.recipes)
    return (
        f"Learning rates: tuned per cell and arm over each recipe's grid by the accuracy on a held-out "
        f"{100 * args.tune_holdout:g} % of the training set (seed {args.tune_seed}); ce-time uses ce's; "
        "(edge): the pick is an end of its grid."
    )


def curve_table(runs: list[dict[str, Any]]) -> list[str]:
    """Test accuracy per seed at every evaluation (the repro case's table)."""
    steps = sorted({s for run in runs for s in run["result"]["curve_steps"] if s > 0})
    lines = [
        "| student | data | recipe | arm | seed | " + " | ".join(f"{s / 1000:g}k" for s in steps) + " |",
        "|---|---|---|---|---|" + "---|" * len(steps),
    ]
    for run in runs:
        job, result = run["job"], run["result"]
        at = dict(zip(result["curve_steps"], result["curve"]))
        cells_ = " | ".join(f"{100 * at[s]:.1f}" if s in at else "" for s in steps)
        lines.append(
            f"| {job['student']} | {job['data']} | {job['recipe']} | {job['arm']} | {job['seed']} | {cells_} |"
        )
    return lines


# ------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["grid", "repro"], default="grid", help="repro: the README's old loop")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    parser.add_argument(
        "--preset", default="ce", help="a key of dynaloss.PRESETS (default: 'ce', the README's drop-in)"
    )
    parser.add_argument(
        "--teach-every", type=int, nargs="+", default=[DEFAULT_K], help="K; several give one taught arm each"
    )
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds: first-seed, first-seed + 1, ...")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000, help="student steps of every arm (batch 25)")
    parser.add_argument("--val-ratio", type=float, default=0.25, help="the DLN arms' teacher-validation share")
    parser.add_argument("--eval-every", type=int, default=1000, help="test accuracy every this many steps")
    parser.add_argument("--lr", type=float, default=None, help="a fixed rate for every recipe (no tuning)")
    parser.add_argument("--fixed-lr", action="store_true", help="each recipe's middle grid rate (no tuning)")
    parser.add_argument("--tune-seed", type=int, default=1000, help="seed of the tune phase (not an eval seed)")
    parser.add_argument("--tune-holdout", type=float, default=0.2, help="share of the training set tuning scores on")
    parser.add_argument("--curves", action="store_true", help="add the per-seed accuracy-curve table")
    parser.add_argument("--jobs", type=int, default=2, help="parallel worker processes (one torch thread each)")
    parser.add_argument("--fast", action="store_true", help="the ~10-minute subset described above")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/...)")
    if parser.parse_args(argv).fast:  # defaults, not overrides: filters given with --fast still apply
        parser.set_defaults(students=["cnn", "resmlp"], seeds=2, steps=2000, eval_every=500, fixed_lr=True)
    args = parser.parse_args(argv)
    if args.case == "repro":  # SGD(0.05, momentum 0.9, wd 5e-4) + cosine over 8,000 iterations
        args.students, args.data, args.recipes, args.lr = ["cnn"], ["mnist1d"], ["sgdm"], 0.05
        if args.arms == list(DEFAULT_ARMS):  # unless --arms names some
            args.arms = ["ce", "dln-fixed", "dln-taught", *LEGACY_ARMS]
        args.teach_every = [DEFAULT_K]
        args.seeds, args.first_seed, args.steps, args.eval_every, args.curves = 3, 0, 8000, 1000, True
        args.val_ratio = 0.25
    if args.out is None:
        name = "user_loop_repro" if args.case == "repro" else "user_loop_fast" if args.fast else "user_loop"
        args.out = Path("benchmarks/results") / name
    args.seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    return args


def open_results(args: argparse.Namespace, **extra: Any) -> tuple[dict[str, Any], dict[str, Any], Store]:
    """Print the machine and the configuration (``args`` and ``extra``); open the store in ``args.out``."""
    from dynaloss.harness.training import machine_info

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | extra
    machine = machine_info("cpu")
    print("machine:", json.dumps(machine))
    print("config: ", json.dumps(config))
    args.out.mkdir(parents=True, exist_ok=True)
    return machine, config, Store(args.out / "runs.jsonl")


def write_results(out: Path, name: str, report: dict[str, Any], table: str, note: str = "") -> None:
    """``out/name.json``: the report; ``out/name.md``: its machine and configuration, ``note`` and the table."""
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    header = f"machine: `{json.dumps(report['machine'])}`\n\nconfig: `{json.dumps(report['config'])}`\n\n"
    (out / f"{name}.md").write_text(header + (f"{note}\n\n" if note else "") + table + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    import dynaloss

    if args.preset not in dynaloss.PRESETS:
        raise SystemExit(f"--preset must be one of {sorted(dynaloss.PRESETS)}, got {args.preset!r}")
    machine, config, store = open_results(args, recipe_lr_grids={r: list(RECIPES[r]["lrs"]) for r in args.recipes})
    started = time.perf_counter()

    # One pool for every phase: a fresh process pays ~4 s once (data, and torch.optim's first step imports
    # torch._dynamo), which new workers per phase would pay again. Workers start only when a job is submitted.
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=init_worker) as pool:
        runner = pool if args.jobs > 1 else None
        run_phase(tune_jobs(args), store, runner, "tune lr")
        picks = pick_lrs(args, store)  # the tune phase must be complete: each cell's rates come from it
        tested = seed_jobs(args, picks)
        run_phase(tested, store, runner, "seeds")
        matched = ce_time_jobs(args, picks, store)  # needs the same seeds' ce and dln-taught times
        run_phase(matched, store, runner, "ce-time")

    runs = [store.get(job) for job in (*tested, *matched)]
    rows = summarise(runs, picks)
    averages = grid_averages(rows)
    table = markdown(rows, averages, runs, args.curves)
    print(table)
    wall = time.perf_counter() - started
    print(f"wall time of this invocation: {wall:.0f} s (finished jobs from earlier runs are not re-run)")
    tuning = [
        {
            "student": k[0],
            "data": k[1],
            "recipe": k[2],
            "arm": k[3],
            **v,
            "scores": {str(lr): s for lr, s in v["scores"].items()},
        }
        for k, v in picks.items()
    ]
    report = {
        "machine": machine,
        "config": config,
        "tuning": tuning,
        "rows": rows,
        "grid_averages": averages,
        "runs": runs,
        "tune_runs": [store.get(job) for job in tune_jobs(args)],
        "wall_seconds": wall,
    }
    write_results(args.out, "user_loop", report, table, lr_note(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
