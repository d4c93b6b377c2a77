"""The training-loop pieces the ``dynaloss`` command shares: data and student by name, the CE and L2T-DLN arms.

Both arms count *student SGD steps* and evaluate at the same step counts, so a comparison under one step
budget is a matter of calling :func:`train_ce` and :func:`train_dln` with the same ``total_steps`` (``steps``
means N, the student steps of one teacher stage, in :class:`dynaloss.Teacher`).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler
from tqdm.auto import tqdm

from dynaloss.harness.checkpoint import RunCheckpoint
from dynaloss.harness.data import Dataset, EpochSplit, augment_cifar, load_cifar, load_digits, load_mnist1d
from dynaloss.harness.models import MNIST1DCNN, DigitsMLP, ResNet8
from dynaloss.teacher import Teacher

__all__ = [
    "DATASETS",
    "LR_FLOOR",
    "LR_SCHEDULES",
    "MAX_FAILURES",
    "ArmResult",
    "Evaluate",
    "LRSchedule",
    "align_steps",
    "cosine_schedule",
    "evaluate_accuracy",
    "load_dataset",
    "machine_info",
    "make_split",
    "make_student",
    "round_size",
    "seeded",
    "train_ce",
    "train_dln",
]

DATASETS = ("mnist1d", "digits", "cifar10", "cifar100")

# A teacher that skips this many rounds in a row (non-finite values, out of memory) is not going to recover.
MAX_FAILURES = 20

Evaluate = Callable[[nn.Module], float]

logger = logging.getLogger(__name__)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generators seeded by ``seed``, and restore them afterwards.

    Module constructors draw their initial weights from the global generator; this makes those draws
    reproducible without leaving the caller's generator changed.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def machine_info(device: torch.device | str) -> dict[str, str | int]:
    """CPU (and GPU) name, torch version and thread count, for the header of every report."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    info: dict[str, str | int] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count() or 0,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ------------------------------------------------------------------------------------------- data, students
def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """One of :data:`DATASETS`; CIFAR needs ``data_dir`` (see :func:`dynaloss.harness.data.load_cifar`)."""
    if name == "mnist1d":
        return load_mnist1d()
    if name == "digits":
        return load_digits()
    if name in ("cifar10", "cifar100"):
        if data_dir is None:
            raise ValueError(f"{name} is read from a local directory: pass data_dir (--data-dir)")
        return load_cifar(data_dir, num_classes=int(name.removeprefix("cifar")))
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


def make_student(dataset: str, num_classes: int, seed: int) -> nn.Module:
    """The student for ``dataset``, its initial weights drawn from ``seed``."""
    builders: dict[str, Callable[[], nn.Module]] = {
        "mnist1d": lambda: MNIST1DCNN(num_classes),
        "digits": lambda: DigitsMLP(num_classes),
        "cifar10": lambda: ResNet8(num_classes),
        "cifar100": lambda: ResNet8(num_classes),
    }
    if dataset not in builders:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    with seeded(seed):
        return builders[dataset]()


def make_split(
    dataset: str,
    data: Dataset,
    *,
    val_ratio: float,
    seed: int,
    train_batch_size: int = 25,
    val_batch_size: int = 100,
) -> EpochSplit:
    """The epoch-wise train/val split of ``data``'s training part (CIFAR's train batches augmented).

    For a CE baseline that trains on (nearly) the whole training set, pass ``val_ratio=1 / len(data.y_train)``
    and ``val_batch_size=1``: both parts of a split must hold at least one batch.
    """
    return EpochSplit(
        data.x_train,
        data.y_train,
        val_ratio=val_ratio,
        seed=seed,
        train_batch_size=train_batch_size,
        val_batch_size=val_batch_size,
        transform=augment_cifar if dataset.startswith("cifar") else None,
    )


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (the model's mode is restored).

    Args:
        x: ``(N, ...)`` inputs; moved in batches to the model's device.
        y: ``(N,)`` labels.

    Returns:
        The fraction of correct predictions, in ``[0, 1]``.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[start : start + batch_size].cpu()).sum())
    model.train(was_training)
    return correct / len(y)


# ------------------------------------------------------------------------------------- learning-rate schedule
# the student's SGD learning rate over a run: 'cosine' is torch's CosineAnnealingLR from the arm's rate down to
# LR_FLOOR over the total student-step budget, 'constant' leaves the rate as it is
LRSchedule = Literal["constant", "cosine"]
LR_SCHEDULES: tuple[str, ...] = get_args(LRSchedule)
# the cosine schedule ends here, not at 0, so that a teacher's unroll still moves the student in the last rounds
LR_FLOOR = 1e-4


def _require_total_steps(total_steps: int | None) -> int:
    if total_steps is None:
        raise TypeError("missing the keyword argument total_steps= (the total student-step budget)")
    return total_steps


def _make_scheduler(
    optimizer: Optimizer, lr_schedule: LRSchedule | Callable[[int], float], total_steps: int
) -> LRScheduler | None:
    """The scheduler of ``optimizer`` for ``lr_schedule`` over ``total_steps`` student steps (``None``: constant)."""
    if callable(lr_schedule):
        warnings.warn(
            "lr_schedule= as a function of the step is deprecated: pass lr_schedule='cosine' or 'constant'",
            DeprecationWarning,
            stacklevel=3,
        )
        base = optimizer.param_groups[0]["lr"]
        # LambdaLR scales the optimizer's starting rate: the function's rate divided by it
        return LambdaLR(optimizer, lambda step: lr_schedule(step) / base)
    if lr_schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=LR_FLOOR)
    if lr_schedule == "constant":
        return None
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")


def _advance_scheduler(scheduler: LRScheduler | None, steps: int) -> None:
    """Step ``scheduler`` once per student step taken."""
    if scheduler is None or steps == 0:
        return
    with warnings.catch_warnings():
        # in 'paper' and 'research' modes the teacher's unroll takes the student's steps, not the optimizer the
        # scheduler holds, so torch's hint that optimizer.step() comes first does not apply
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before", UserWarning)
        for _ in range(steps):
            scheduler.step()


def cosine_schedule(lr: float, steps: int, floor: float = LR_FLOOR) -> Callable[[int], float]:
    """Deprecated: pass ``lr_schedule='cosine'`` to :func:`train_ce` / :func:`train_dln` (torch's
    ``CosineAnnealingLR`` with ``eta_min=LR_FLOOR`` over ``total_steps``).

    ``lr`` decaying to ``floor`` along a half cosine over ``steps`` student steps, as a function of the step.
    """
    warnings.warn(
        "cosine_schedule is deprecated: pass lr_schedule='cosine' to train_ce / train_dln "
        "(torch.optim.lr_scheduler.CosineAnnealingLR)",
        DeprecationWarning,
        stacklevel=2,
    )
    return lambda step: floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


# ------------------------------------------------------------------------------------------------------ arms
@dataclass
class ArmResult:
    """One arm of a comparison: test accuracy against student steps, time, and the teacher's rounds.

    Attributes:
        name: the arm's label.
        steps: student SGD steps at each evaluation (0 first).
        accuracy: test accuracy at each of ``steps``.
        seconds: wall time of training, evaluations included.
        student_steps: SGD steps the student took.
        rounds: one :meth:`dynaloss.RoundRecord.as_dict` per teacher round (empty for CE).
        stopped: why training stopped before the budget, or ``None``.
    """

    name: str
    steps: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    student_steps: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1] if self.accuracy else math.nan

    @property
    def best_accuracy(self) -> float:
        return max(self.accuracy) if self.accuracy else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "final_accuracy": self.final_accuracy, "best_accuracy": self.best_accuracy}


def round_size(mode: str, unroll: int) -> int:
    """Student SGD steps per teacher round: ``2N`` in ``'paper'`` mode, ``N`` otherwise (see :func:`train_dln`)."""
    return 2 * unroll if mode == "paper" else unroll


def align_steps(steps: int, per_round: int) -> int:
    """``steps`` rounded up to a whole number of rounds, so every arm can stop at exactly this count."""
    return math.ceil(steps / per_round) * per_round


def _run(
    result: ArmResult,
    advance: Callable[[], int],
    student: nn.Module,
    *,
    total_steps: int,
    eval_every: int,
    evaluate: Evaluate,
    progress: bool,
    max_failures: int = MAX_FAILURES,
    checkpoint: RunCheckpoint | None = None,
    parts: dict[str, Any] | None = None,
) -> ArmResult:
    """Call ``advance`` (which returns the student steps it took) until ``total_steps``; evaluate along the way.

    With ``checkpoint``, ``parts`` (and the RNGs, ``result`` and the failure count) are restored from it when it
    resumes and saved to it after rounds that took steps.
    """
    parts = parts or {}
    saved = None if checkpoint is None else checkpoint.restore(parts)
    failures = 0
    if saved is not None:
        failures = saved["failures"]
        for name, value in saved["result"].items():
            setattr(result, name, value)
    started = time.perf_counter() - result.seconds
    if not result.steps:  # a resumed run has its step-0 evaluation already
        result.steps.append(0)
        result.accuracy.append(evaluate(student))
    with tqdm(
        total=total_steps,
        initial=result.student_steps,
        desc=result.name,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        while result.student_steps < total_steps:
            taken = advance()
            failures = 0 if taken else failures + 1
            if failures == max_failures:
                result.stopped = f"{failures} teacher rounds in a row were skipped (non-finite values or out of memory)"
                logger.error("training stopped: %s", result.stopped)
                break
            result.student_steps += taken
            bar.update(taken)
            if taken and (result.student_steps % eval_every == 0 or result.student_steps >= total_steps):
                result.steps.append(result.student_steps)
                result.accuracy.append(evaluate(student))
                bar.set_postfix(test_acc=f"{result.accuracy[-1]:.3f}")
            if checkpoint is not None:
                result.seconds = time.perf_counter() - started
                state = {"result": {k: getattr(result, k) for k in _RESUMED_FIELDS}, "failures": failures}
                checkpoint.after_round(parts, state, changed=taken > 0)
    result.seconds = time.perf_counter() - started
    return result


# what a checkpoint restores of an ArmResult (its name comes from the caller)
_RESUMED_FIELDS = ("steps", "accuracy", "seconds", "student_steps", "rounds", "stopped")


def train_ce(
    student: nn.Module,
    split: EpochSplit,
    *,
    total_steps: int | None = None,
    lr: float,
    evaluate: Evaluate,
    eval_every: int,
    name: str = "CE",
    progress: bool = True,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    checkpoint: RunCheckpoint | None = None,
    train_iter: Iterator[Any] | None = None,
    lr_schedule: LRSchedule | Callable[[int], float] = "constant",
) -> ArmResult:
    """Plain SGD with a fixed loss (cross-entropy by default) on ``split``'s train batches (its val part is not used).

    Args:
        student: trained in place, on its own device.
        split: the data stream; one train batch per step.
        total_steps: student SGD steps (the budget; required).
        lr: SGD learning rate (the schedule's start).
        evaluate: ``f(student) -> accuracy``, called at step 0, every ``eval_every`` steps and at the end.
        loss_fn: the loss, e.g. a warm-started DLN held fixed (default: cross-entropy).
        checkpoint: save the run every ``checkpoint.every`` steps, and resume from it (default: none).
        train_iter: the train batches (default: ``split.train_batches()``; a distributed run passes its shard).
        lr_schedule: ``'constant'`` (default) or ``'cosine'``: torch's ``CosineAnnealingLR`` from ``lr`` to
            :data:`LR_FLOOR` over ``total_steps``, stepped after every student step. A function of the steps
            taken (what ``cosine_schedule`` returned) is deprecated.
    """
    total_steps = _require_total_steps(total_steps)
    device = next(student.parameters()).device
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    scheduler = _make_scheduler(optimizer, lr_schedule, total_steps)
    batches = split.train_batches() if train_iter is None else train_iter
    result = ArmResult(name)
    student.train()

    def advance() -> int:
        x, y = next(batches)
        loss = loss_fn(student(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return 1

    parts = _parts(student=student, optimizer=optimizer, scheduler=scheduler, split=split)
    return _run(
        result,
        advance,
        student,
        total_steps=total_steps,
        eval_every=eval_every,
        evaluate=evaluate,
        progress=progress,
        checkpoint=checkpoint,
        parts=parts,
    )


def train_dln(
    student: nn.Module,
    teacher: Teacher,
    split: EpochSplit,
    *,
    total_steps: int | None = None,
    evaluate: Evaluate,
    eval_every: int,
    name: str = "L2T-DLN",
    progress: bool = True,
    max_failures: int = MAX_FAILURES,
    checkpoint: RunCheckpoint | None = None,
    batches: tuple[Iterator[Any], Iterator[Any]] | None = None,
    lr_schedule: LRSchedule | Callable[[int], float] = "constant",
) -> ArmResult:
    """L2T-DLN: ``teacher.step`` rounds until the student has taken ``total_steps`` SGD steps.

    In ``'paper'`` and ``'research'`` modes the teacher's unroll *is* the student's training (``2N`` and
    ``N`` steps a round). In ``'lookahead'`` mode the teacher leaves the student alone, so each round first
    takes ``N`` plain SGD steps (learning rate ``teacher.student_lr``) with the DLN as the loss, as a user's
    own loop would, then calls ``teacher.step``. Pass ``total_steps`` and ``eval_every`` as multiples of
    :func:`round_size` so the evaluations fall where another arm's do. A round at a rate of 0 learns nothing
    and the teacher skips it; its student steps, which at rate 0 would not move the student, count as taken.

    Args:
        total_steps: student SGD steps (the budget; required).
        max_failures: stop (``result.stopped``) after this many rounds in a row were skipped (default: ``20``).
        checkpoint: save the run every ``checkpoint.every`` committed rounds, and resume from it (default: none).
        batches: the ``(train, val)`` iterators (default: ``split``'s; a distributed run passes its shards).
        lr_schedule: ``'constant'`` (default) or ``'cosine'``: torch's ``CosineAnnealingLR`` from
            ``teacher.student_lr`` to :data:`LR_FLOOR` over ``total_steps``, on an SGD optimizer of the student.
            It is stepped once per student step taken (``2N`` times after a ``'paper'`` round) and its rate is
            written into ``teacher.student_lr`` before every round, so a round's steps share one rate. A
            function of the steps taken (what ``cosine_schedule`` returned) is deprecated.
    """
    total_steps = _require_total_steps(total_steps)
    train_iter, val_iter = (split.train_batches(), split.val_batches()) if batches is None else batches
    optimizer = torch.optim.SGD(student.parameters(), lr=teacher.student_lr)
    scheduler = _make_scheduler(optimizer, lr_schedule, total_steps)
    device = next(student.parameters()).device
    result = ArmResult(name)
    student.train()

    def own_steps() -> int:
        for _ in range(teacher.steps):
            x, y = next(train_iter)
            loss = teacher.loss_fn(student(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        # backward also reached the DLN's parameters; the teacher never reads .grad, so drop it
        teacher.loss_fn.zero_grad(set_to_none=True)
        return teacher.steps

    def advance() -> int:
        if scheduler is not None:
            teacher.student_lr = optimizer.param_groups[0]["lr"]
        taken = own_steps() if teacher.mode == "lookahead" else 0
        lr = teacher.student_lr
        record = teacher.step(student, train_iter, val_iter)
        result.rounds.append(record.as_dict())
        taken += record.student_steps
        if record.skipped and record.hypergradient_norm == 0.0 and lr == 0 and teacher.mode != "lookahead":
            # a round at rate 0 learned nothing and the teacher skipped it; its plain SGD steps would not have moved
            # the student either, so they count as taken (a schedule's zero does not stall the run)
            taken += round_size(teacher.mode, teacher.steps)
        _advance_scheduler(scheduler, taken)
        return taken

    parts = _parts(student=student, teacher=teacher, optimizer=optimizer, scheduler=scheduler, split=split)
    return _run(
        result,
        advance,
        student,
        total_steps=total_steps,
        eval_every=eval_every,
        evaluate=evaluate,
        progress=progress,
        max_failures=max_failures,
        checkpoint=checkpoint,
        parts=parts,
    )


def _parts(**parts: Any) -> dict[str, Any]:
    """What a run's checkpoint saves and restores: the given parts that exist (a constant lr has no scheduler)."""
    return {name: part for name, part in parts.items() if part is not None}
