"""How an adapter schedules and feeds teacher rounds: one config and the per-epoch train/val re-split."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from dynaloss import Teacher
from dynaloss._checks import check_positive_float, check_positive_int
from dynaloss._streams import forever
from dynaloss.settings import DEFAULT_TEACHER, MODES, TEACH_EVERY, Mode

__all__ = ["TeachingConfig", "forever", "resplit"]

T = TypeVar("T")


@dataclass(frozen=True)
class TeachingConfig:
    """When teacher rounds run inside a framework's training and what they see.

    Args:
        every: run a round after every ``every`` student batches (default:
            :data:`dynaloss.settings.TEACH_EVERY`, ``20``).
        steps: ``N``, unrolled student optimizer steps per stage (default: :class:`dynaloss.Teacher`'s, ``10``).
        student_lr: the student's SGD learning rate inside the unroll, used only when :meth:`make_teacher`
            is given no optimizer (the adapters give theirs, whose param groups' current learning rates the
            unroll then follows) (default: :class:`dynaloss.Teacher`'s, ``0.1``).
        mode: the :class:`dynaloss.Teacher` mode (default: :class:`dynaloss.Teacher`'s, ``'lookahead'``: the
            framework's own optimizer keeps training the student and the round only teaches the DLN;
            ``'paper'`` also writes the ``2N`` unrolled steps, and the optimizer's state after them, into the
            student).
        train_batch: images per unrolled step (default: ``2``, the paper's).
        val_batch: images in the validation batch of a round (default: ``8``, the paper's).
        val_ratio: share of the training images held out for the teacher's validation batches, re-drawn
            every epoch (default: ``0.5``, the paper's).
        teacher: extra keyword arguments for :class:`dynaloss.Teacher` (``teacher``, ``dln_lr``,
            ``teacher_lr``, ``anchor_strength``, ``sparsity``, ``guard``); unset ones keep the Teacher's defaults.
    """

    every: int = TEACH_EVERY
    steps: int = DEFAULT_TEACHER["steps"]
    student_lr: float = DEFAULT_TEACHER["student_lr"]
    mode: Mode = DEFAULT_TEACHER["mode"]
    train_batch: int = 2
    val_batch: int = 8
    val_ratio: float = 0.5
    teacher: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_positive_int(self.every, "every")
        check_positive_int(self.steps, "steps")
        check_positive_float(self.student_lr, "student_lr")
        check_positive_int(self.train_batch, "train_batch")
        check_positive_int(self.val_batch, "val_batch")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.val_ratio, bool) or not isinstance(self.val_ratio, (int, float)):
            raise TypeError(f"val_ratio must be a float, got {type(self.val_ratio).__name__}")
        if not 0.0 < self.val_ratio < 1.0:
            raise ValueError(f"val_ratio must be in (0, 1), got {self.val_ratio}")
        reserved = {"steps", "student_lr", "optimizer", "mode", "val_loss"} & set(self.teacher)
        if reserved:
            raise ValueError(
                f"teacher= must not set {sorted(reserved)}: TeachingConfig's fields and make_teacher's arguments do"
            )

    def make_teacher(
        self, loss_fn: nn.Module, val_loss: Any, optimizer: torch.optim.Optimizer | None = None
    ) -> Teacher:
        """A :class:`dynaloss.Teacher` for ``loss_fn`` configured by these fields.

        Args:
            loss_fn: the DLN (or the objective module holding it).
            val_loss: the round's validation error.
            optimizer: the framework's optimizer of the student (``torch.optim.SGD``, ``Adam`` or ``AdamW``):
                the unroll follows its update rule, state and current learning rates, and ``student_lr`` is
                not used. ``None``: plain SGD at ``student_lr``.
        """
        return Teacher(
            loss_fn,
            steps=self.steps,
            student_lr=self.student_lr,
            optimizer=optimizer,
            mode=self.mode,
            val_loss=val_loss,
            **self.teacher,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resplit(size: int, val_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(size)`` into teacher-train and teacher-val indices, deterministically from ``seed``.

    Adapters call this once per epoch with ``seed`` derived from the epoch: the paper re-splits the
    training set every epoch, and a resumed run redraws the same split.

    Raises:
        ValueError: when either side would be empty.
    """
    n_val = round(size * val_ratio)
    if size < 2 or n_val < 1 or n_val >= size:
        raise ValueError(
            f"cannot split {size} training images into teacher train/val halves with val_ratio={val_ratio}; "
            f"a teacher round needs at least one image on each side"
        )
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[n_val:], order[:n_val]
