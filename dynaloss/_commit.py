"""Committing a computed round (:func:`dynaloss._round.compute_round`'s outcome): the only writes into modules
that a teacher round makes, and the check that every rank holds the same values after them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from dynaloss._rollback import Learned
from dynaloss._round import RoundOutcome
from dynaloss._unroll import StudentState
from dynaloss._update_rules import OptimizerRule, write_optimizer_state
from dynaloss.distributed import RankMean
from dynaloss.teachers.base import Memory

__all__ = ["LabelCounter", "check_ranks_in_sync", "commit_round", "count_round_labels"]


@runtime_checkable
class LabelCounter(Protocol):
    """A loss that learns from the label priors of the rounds' batches (:class:`dynaloss.ClassAwareDLN`)."""

    def count_labels(self, targets: Sequence[Tensor]) -> Tensor: ...

    def add_label_counts(self, train: Tensor, target: Tensor) -> None: ...


def commit_round(
    outcome: RoundOutcome,
    learned: Learned,
    student: nn.Module,
    *,
    write_student: bool,
    accept: bool = True,
    sync: RankMean | None = None,
) -> None:
    """Write ``outcome`` into the modules (the teacher model's memory is the caller's to keep).

    Args:
        outcome: the computed round.
        learned: the DLN, the teacher model and its optimizer. The DLN's parameters get ``outcome.new_phi``
            when ``accept``, and any ``.grad`` on them is set to ``None``; the optimizer (if any) takes one step
            on ``outcome.teacher_grads``, accepted or not (the teacher learns from a rejected proposal too).
        student: the student the round was computed for.
        write_student: write the unrolled weights and buffers into ``student``, and the unrolled optimizer
            state into the student's optimizer (``'paper'``/``'research'``): stage III's end when ``accept``,
            stage I's otherwise.
        accept: apply the DLN update (``False``: the guard rejected it) (default: ``True``).
        sync: data-parallel ranks: the written floating buffers (BatchNorm running statistics, from each rank's
            own shards) are the ranks' mean (default: ``None``, one process).
    """
    loss_fn, teacher_model, teacher_optimizer = learned.loss_fn, learned.teacher_model, learned.teacher_optimizer
    with torch.no_grad():
        named = dict(loss_fn.named_parameters())
        for name, value in outcome.new_phi.items() if accept else ():
            named[name].copy_(value)
        if teacher_optimizer is not None:
            params = [p for p in teacher_model.parameters() if p.requires_grad]
            for param, grad in zip(params, outcome.teacher_grads):
                param.grad = grad
            teacher_optimizer.step()
            teacher_optimizer.zero_grad(set_to_none=True)
        loss_fn.zero_grad(set_to_none=True)
        if write_student:
            written = outcome.student if accept else outcome.stage_one
            if sync is not None:
                written = _mean_buffers(written, sync)
            _write_student(student, written)
            if isinstance(outcome.rule, OptimizerRule):
                write_optimizer_state(outcome.rule, written.optim)


def count_round_labels(
    loss_fn: nn.Module, train: Sequence[Tensor], val: Sequence[Tensor], sync: RankMean | None = None
) -> None:
    """Give every :class:`LabelCounter` in ``loss_fn`` the label counts of a committed round's training and
    validation targets; with ``sync``, the ranks' mean counts (rounded), so that every rank adds the same."""
    for module in loss_fn.modules():
        if isinstance(module, LabelCounter):
            counts = [module.count_labels(train), module.count_labels(val)]
            if sync is not None:
                counts = [mean.round().long() for mean in sync.mean_detached([c.double() for c in counts])]
            module.add_label_counts(*counts)


def check_ranks_in_sync(sync: RankMean, learned: Learned, memory: Memory | None, student: nn.Module) -> None:
    """Raise ``RuntimeError`` naming what differs unless every rank holds the same DLN, teacher model, memory
    and student (:meth:`dynaloss.distributed.RankMean.check_in_sync`)."""
    named: dict[str, Sequence[Tensor]] = {
        "DLN parameters": list(learned.loss_fn.parameters()),
        "teacher model parameters": list(learned.teacher_model.parameters()),
        "teacher memory": list(memory or ()),
        "student parameters": list(student.parameters()),
    }
    sync.check_in_sync(named)


def _mean_buffers(state: StudentState, sync: RankMean) -> StudentState:
    """The state with its floating buffers averaged over the ranks."""
    names = [n for n, b in state.buffers.items() if b.is_floating_point()]
    if not names:
        return state
    averaged = dict(zip(names, sync.mean_detached([state.buffers[n] for n in names])))
    return StudentState(state.params, {**state.buffers, **averaged}, state.trainable, state.optim)


def _write_student(student: nn.Module, state: StudentState) -> None:
    """The unrolled weights and buffers become the student's."""
    named_params = dict(student.named_parameters())
    for name in state.trainable:
        named_params[name].copy_(state.params[name])
    for name, buffer in student.named_buffers():
        buffer.copy_(state.buffers[name])
