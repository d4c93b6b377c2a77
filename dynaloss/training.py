"""The training-loop pieces the ``dynaloss`` command shares: data and student by name, the CE and L2T-DLN arms.

Both arms count *student SGD steps* and evaluate at the same step counts, so a comparison under one step
budget is a matter of calling :func:`train_ce` and :func:`train_dln` with the same ``steps``.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dynaloss.checkpoint import RunCheckpoint
from dynaloss.data import Dataset, EpochSplit, augment_cifar, load_cifar, load_digits, load_mnist1d
from dynaloss.models import MNIST1DCNN, DigitsMLP, ResNet8
from dynaloss.teacher import Teacher

__all__ = [
    "DATASETS",
    "MAX_FAILURES",
    "ArmResult",
    "Evaluate",
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
    """One of :data:`DATASETS`; CIFAR needs ``data_dir`` (see :func:`dynaloss.data.load_cifar`)."""
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


LRSchedule = Callable[[int], float]


def cosine_schedule(lr: float, steps: int, floor: float = 1e-4) -> LRSchedule:
    """``lr`` decaying to ``floor`` along a half cosine over ``steps`` student steps.

    The learning rate stays positive (``floor``) so that a teacher's unroll still moves the student at the end.
    """
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
    steps: int,
    eval_every: int,
    evaluate: Evaluate,
    progress: bool,
    max_failures: int = MAX_FAILURES,
    checkpoint: RunCheckpoint | None = None,
    parts: dict[str, Any] | None = None,
) -> ArmResult:
    """Call ``advance`` (which returns the student steps it took) until ``steps``; evaluate along the way.

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
        total=steps,
        initial=result.student_steps,
        desc=result.name,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        while result.student_steps < steps:
            taken = advance()
            failures = 0 if taken else failures + 1
            if failures == max_failures:
                result.stopped = f"{failures} teacher rounds in a row were skipped (non-finite values or out of memory)"
                logger.error("training stopped: %s", result.stopped)
                break
            result.student_steps += taken
            bar.update(taken)
            if taken and (result.student_steps % eval_every == 0 or result.student_steps >= steps):
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
    steps: int,
    lr: float,
    evaluate: Evaluate,
    eval_every: int,
    name: str = "CE",
    progress: bool = True,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    checkpoint: RunCheckpoint | None = None,
    train_iter: Iterator[Any] | None = None,
    lr_schedule: LRSchedule | None = None,
) -> ArmResult:
    """Plain SGD with a fixed loss (cross-entropy by default) on ``split``'s train batches (its val part is not used).

    Args:
        student: trained in place, on its own device.
        split: the data stream; one train batch per step.
        steps: student SGD steps.
        lr: SGD learning rate.
        evaluate: ``f(student) -> accuracy``, called at step 0, every ``eval_every`` steps and at the end.
        loss_fn: the loss, e.g. a warm-started DLN held fixed (default: cross-entropy).
        checkpoint: save the run every ``checkpoint.every`` steps, and resume from it (default: none).
        train_iter: the train batches (default: ``split.train_batches()``; a distributed run passes its shard).
        lr_schedule: the learning rate as a function of the student steps taken so far, set before every
            step (default: ``lr`` throughout; see :func:`cosine_schedule`).
    """
    device = next(student.parameters()).device
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    batches = split.train_batches() if train_iter is None else train_iter
    result = ArmResult(name)
    student.train()

    def advance() -> int:
        if lr_schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_schedule(result.student_steps)
        x, y = next(batches)
        loss = loss_fn(student(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return 1

    parts = {"student": student, "optimizer": optimizer, "split": split}
    common: dict[str, Any] = {"steps": steps, "eval_every": eval_every, "evaluate": evaluate, "progress": progress}
    return _run(result, advance, student, checkpoint=checkpoint, parts=parts, **common)


def train_dln(
    student: nn.Module,
    teacher: Teacher,
    split: EpochSplit,
    *,
    steps: int,
    evaluate: Evaluate,
    eval_every: int,
    name: str = "L2T-DLN",
    progress: bool = True,
    max_failures: int = MAX_FAILURES,
    checkpoint: RunCheckpoint | None = None,
    batches: tuple[Iterator[Any], Iterator[Any]] | None = None,
    lr_schedule: LRSchedule | None = None,
) -> ArmResult:
    """L2T-DLN: ``teacher.step`` rounds until the student has taken ``steps`` SGD steps.

    In ``'paper'`` and ``'research'`` modes the teacher's unroll *is* the student's training (``2N`` and
    ``N`` steps a round). In ``'lookahead'`` mode the teacher leaves the student alone, so each round first
    takes ``N`` plain SGD steps (learning rate ``teacher.student_lr``) with the DLN as the loss, as a user's
    own loop would, then calls ``teacher.step``. Pass ``steps`` and ``eval_every`` as multiples of
    :func:`round_size` so the evaluations fall where another arm's do.

    Args:
        max_failures: stop (``result.stopped``) after this many rounds in a row were skipped (default: ``20``).
        checkpoint: save the run every ``checkpoint.every`` committed rounds, and resume from it (default: none).
        batches: the ``(train, val)`` iterators (default: ``split``'s; a distributed run passes its shards).
        lr_schedule: the student's learning rate as a function of the student steps taken so far, written
            into ``teacher.student_lr`` (and the lookahead optimizer) before every round (default: constant).
    """
    train_iter, val_iter = (split.train_batches(), split.val_batches()) if batches is None else batches
    optimizer = torch.optim.SGD(student.parameters(), lr=teacher.student_lr)
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
        if lr_schedule is not None:
            teacher.student_lr = lr_schedule(result.student_steps)
            for group in optimizer.param_groups:
                group["lr"] = teacher.student_lr
        taken = own_steps() if teacher.mode == "lookahead" else 0
        record = teacher.step(student, train_iter, val_iter)
        result.rounds.append(record.as_dict())
        return taken + record.student_steps

    parts = {"student": student, "teacher": teacher, "optimizer": optimizer, "split": split}
    common: dict[str, Any] = {"steps": steps, "eval_every": eval_every, "evaluate": evaluate, "progress": progress}
    return _run(result, advance, student, max_failures=max_failures, checkpoint=checkpoint, parts=parts, **common)
