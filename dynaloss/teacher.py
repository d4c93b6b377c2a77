"""Teacher: one round of L2T-DLN's Algorithm 1 (student, DLN and teacher learning) per ``step``."""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dynaloss._batches import Batch, draw_batches
from dynaloss._checks import check_bool, check_optimizer_excludes, check_positive_float, check_positive_int
from dynaloss._commit import check_ranks_in_sync, commit_round, count_round_labels
from dynaloss._record import RoundRecord, committed_record, skipped_record
from dynaloss._rollback import Learned, Rollback, Snapshot
from dynaloss._round import RoundOutcome, compute_round
from dynaloss._teacher_checks import (
    Checked,
    ReadOnly,
    check_anchor_strength,
    check_autocast,
    check_guard,
    check_loss_fn,
    check_mode,
    check_rollback,
    check_sparsity,
    check_student,
    check_student_lr,
    check_val_loss,
)
from dynaloss._teacher_state import check_teacher_state, teacher_state
from dynaloss._triage import compute_or_skip
from dynaloss._unroll import ValLoss, check_val_loss_takes_weight, default_val_loss, dln_parameters
from dynaloss._update_rules import check_optimizer
from dynaloss.distributed import RankMean, agree_on_draw
from dynaloss.settings import DEFAULT_TEACHER, MODES, Mode, TeacherKind
from dynaloss.teachers import TeacherModel, make_teacher_model
from dynaloss.teachers.base import Memory

__all__ = ["MODES", "RoundRecord", "Teacher", "teaching_defaults"]

logger = logging.getLogger(__name__)


def teaching_defaults(loss_fn: nn.Module) -> dict[str, Any]:
    """The :class:`Teacher` settings a loss is taught with by default: :data:`dynaloss.settings.DEFAULT_TEACHER`,
    with the loss's own ``teaching_defaults`` (a mapping, e.g. :data:`dynaloss.settings.CLASS_AWARE_TEACHING`)
    over it.

    Raises:
        TypeError: the loss's ``teaching_defaults`` is not a mapping of :class:`Teacher` settings.
    """
    own = getattr(loss_fn, "teaching_defaults", {})
    if not isinstance(own, Mapping) or not set(own) <= set(DEFAULT_TEACHER):
        raise TypeError(
            f"{type(loss_fn).__name__}.teaching_defaults must be a mapping of Teacher settings "
            f"({', '.join(DEFAULT_TEACHER)}), got {own!r}"
        )
    return {**DEFAULT_TEACHER, **own}


class Teacher:
    r"""Teaches a Dynamic Loss Network while a student trains with it (L2T-DLN, Algorithm 1).

    Each :meth:`step` is one round: I. ``N`` differentiable SGD steps of the student with the DLN as its loss;
    II. the hypergradient :math:`\nabla\phi` of the validation error through them goes to the teacher model,
    :math:`\phi' = \phi + \gamma\, T_\vartheta(\nabla\phi, h)`; III. ``N`` more steps with :math:`\phi'`, and an
    Adam step on :math:`\vartheta` down the gradient of the new validation error. A round is computed on
    functional copies (:func:`dynaloss._round.compute_round`) and committed only when it is finite throughout. A
    committed round writes the new DLN parameters into ``loss_fn`` (setting their ``.grad`` to ``None``) and, in
    ``'paper'``/``'research'`` mode, the unrolled weights, buffers and optimizer state into the student: the
    only writes into modules it makes.

    Args:
        loss_fn: the DLN the student trains with (e.g. :class:`dynaloss.PairwiseDLN`), updated in place; it must
            return a scalar (``reduction='none'`` raises ``ValueError``).
        teacher: ``'lstm'`` (the paper's), ``'adam'``, ``'sgd'``, ``'rmsprop'`` or a
            :class:`dynaloss.teachers.TeacherModel` (default: the loss's :func:`teaching_defaults`).
        steps: ``N``, student steps per stage (default: ``10``).
        optimizer: the student's ``torch.optim.SGD``, ``Adam`` or ``AdamW``: every round unrolls its update rule
            from its current state and learning rates, and a committed ``'paper'``/``'research'`` round writes its
            state as that many ``optimizer.step()`` calls would. Another kind raises ``TypeError``, one holding
            the DLN's parameters ``ValueError`` (default: ``None``, plain SGD at ``student_lr``).
        student_lr: ``eta``, a finite rate ``>= 0``, the unroll's SGD learning rate when there is no
            ``optimizer``; at 0 a round learns nothing and is skipped (default: ``0.1``).
        dln_lr: ``gamma``, the scale of the teacher's update of the DLN (default: the loss's
            :func:`teaching_defaults`).
        teacher_lr: Adam learning rate of the teacher model (default: ``1e-3``).
        mode: ``'lookahead'``: the student is left bitwise untouched and stage III replays stage I's start and
            batches; ``'paper'``: stage III continues from stage I's end on new batches, and the student keeps
            those ``2N`` steps; ``'research'``: both stages start from the same weights on the same batches, and
            the student keeps the second stage's ``N`` steps (docs/modes.md) (default: ``'lookahead'``).
        val_loss: validation error ``f(outputs, targets)``, or ``f(outputs, targets, weight)`` for weighted
            validation batches: a 0-d floating tensor computed from ``outputs`` (anything else raises on the first
            round) (default: cross-entropy with the DLN's ``ignore_index``).
        anchor_strength: in ``[0, 1)``, the share of the DLN's distance to where teaching started
            (``anchor_point``) that every round removes: ``phi' = phi + dln_lr * T(grad) - anchor_strength *
            (phi - anchor_point)``, so each coordinate stays within ``dln_lr / anchor_strength`` of its start;
            ``0``: off, as in the paper (default: the loss's :func:`teaching_defaults`).
        guard: reject the DLN update when the validation error after stage III exceeds ``guard`` times the
            error after stage I (the student keeps stage I's steps only; the teacher model still learns)
            (default: ``None``, off).
        rollback: ``True`` (a default :class:`~dynaloss._rollback.Rollback`), a ``Rollback``, or ``False``: on a
            persistent rise of the rounds' validation error, the DLN, the teacher model and its optimizer return
            to their :class:`~dynaloss._rollback.Snapshot` at the best point, the memory starts afresh and
            ``dln_lr`` is multiplied by the rollback's ``slowdown`` (default: the loss's :func:`teaching_defaults`).
        sparsity: a finite number ``>= 0``, a sparsity prior: after each update, every coordinate of the loss's
            ``sparse_parameters`` (all of its parameters when it names none) is soft-thresholded toward
            ``anchor_point`` by ``sparsity * dln_lr``, ``phi' = a + sign(phi' - a) max(|phi' - a| - sparsity *
            dln_lr, 0)``: a parameter leaves its start only where its hypergradient pushes it the same way round
            after round, which one round's noise does not; ``0``: off, as in the paper (default: the loss's
            :func:`teaching_defaults`, ``0`` for every loss here; a :class:`~dynaloss.ClassAwareDLN` names its
            offsets and pair offsets).
        checkpoint: recompute each unrolled step in the backward pass instead of keeping its activations
            (``torch.utils.checkpoint``, non-reentrant) (default: ``False``).
        autocast_dtype: ``torch.bfloat16`` or ``torch.float16``: the unrolled forwards run under ``torch.autocast``
            with it (default: ``None``).
        process_group: a ``torch.distributed`` group to train data-parallel over: each rank passes its own
            equal-size shard of every batch, every unrolled step uses the ranks' mean gradient, all ranks call
            :meth:`step` together; a ``DistributedDataParallel`` student is unwrapped (default: ``None``).

    Raises:
        TypeError, ValueError: an argument of the wrong type or out of range, naming it.

    The settings (``steps``, ``student_lr``, ``dln_lr``, ``anchor_strength``, ``sparsity``, ``guard``, ``mode``,
    ``val_loss``, ``checkpoint``, ``autocast_dtype``, ``student_optimizer``) may be reassigned between rounds,
    checked as the constructor checks them. The state (``loss_fn``, ``teacher_model``, ``teacher_optimizer``,
    ``memory``, ``anchor_point``, ``rounds``, ``rollback``, ``sync``) is read-only. One round runs at a time.
    """

    steps = Checked(check_positive_int)
    student_lr = Checked(check_student_lr)
    dln_lr = Checked(check_positive_float)
    anchor_strength = Checked(check_anchor_strength)
    sparsity = Checked(check_sparsity)
    guard = Checked(check_guard)
    mode = Checked(check_mode)
    val_loss = Checked(check_val_loss)
    checkpoint = Checked(check_bool)
    autocast_dtype = Checked(check_autocast)
    loss_fn = ReadOnly()
    teacher_model = ReadOnly()
    teacher_optimizer = ReadOnly()
    memory = ReadOnly()
    anchor_point = ReadOnly()
    rounds = ReadOnly()
    rollback = ReadOnly()
    sync = ReadOnly()

    def __init__(
        self,
        loss_fn: nn.Module,
        *,
        teacher: TeacherKind | TeacherModel | None = None,
        steps: int = DEFAULT_TEACHER["steps"],
        optimizer: torch.optim.Optimizer | None = None,
        student_lr: float = DEFAULT_TEACHER["student_lr"],
        dln_lr: float | None = None,
        teacher_lr: float = DEFAULT_TEACHER["teacher_lr"],
        mode: Mode = DEFAULT_TEACHER["mode"],
        val_loss: ValLoss | None = None,
        anchor_strength: float | None = None,
        guard: float | None = DEFAULT_TEACHER["guard"],
        rollback: bool | Rollback | None = None,
        sparsity: float | None = None,
        checkpoint: bool = False,
        autocast_dtype: torch.dtype | None = None,
        process_group: Any = None,
    ) -> None:
        check_loss_fn(loss_fn)
        # the settings that depend on how the loss is parameterised come from the loss, when it says
        given = _given(
            teacher=teacher, dln_lr=dln_lr, anchor_strength=anchor_strength, rollback=rollback, sparsity=sparsity
        )
        defaults = {**teaching_defaults(loss_fn), **given}
        self.mode = mode
        self._loss_fn = loss_fn
        self.steps = steps
        self.student_optimizer = optimizer
        self.student_lr = student_lr
        self.dln_lr = defaults["dln_lr"]
        self.anchor_strength = defaults["anchor_strength"]
        self.sparsity = defaults["sparsity"]
        self.guard = guard
        self._anchor_point: Tensor | None = None  # the DLN where teaching started, flat; set by the first round
        self._rollback = check_rollback(defaults["rollback"])
        self.checkpoint = checkpoint
        self.autocast_dtype = autocast_dtype
        self.val_loss = val_loss or default_val_loss(loss_fn)
        reference = next(loss_fn.parameters())
        model = make_teacher_model(defaults["teacher"]).to(device=reference.device, dtype=reference.dtype)
        teacher_lr = check_positive_float(teacher_lr, "teacher_lr")
        self._teacher_model = model
        self._teacher_optimizer = torch.optim.Adam(model.parameters(), lr=teacher_lr) if model.learnable else None
        self._learned = Learned(loss_fn, model, self._teacher_optimizer)  # what rounds commit and rollbacks restore
        self._memory: Memory | None = None
        self._busy = threading.Lock()  # held while a round runs (see step)
        self._rounds = 0
        self._sync = None if process_group is None else RankMean(process_group)

    @property
    def student_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer whose update rule the unroll follows (``None``: plain SGD at ``student_lr``); assignable
        (frameworks build theirs after the loss), checked as in the constructor."""
        return self._student_optimizer

    @student_optimizer.setter
    def student_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is not None:
            check_optimizer_excludes(check_optimizer(optimizer), self.loss_fn)
        self._student_optimizer = optimizer

    def step(self, student: nn.Module, train_iter: Iterator[Any], val_iter: Iterator[Any]) -> RoundRecord:
        """Run one round of Algorithm 1 and commit it if every quantity in it is finite.

        Args:
            student: the model being trained, on the device the round runs on; not a ``torch.compile``'d module
                (nor one holding one): pass the module it wraps, ``model._orig_mod``.
            train_iter: iterator of ``(x, y)`` or ``(x, y, w)`` training batches; a round takes ``2N``
                (``'paper'``) or ``N``.
            val_iter: iterator of ``(x, y)`` or ``(x, y, w)`` validation batches; a round takes one, and gives its
                ``w`` to ``val_loss`` as a third argument (the default's error is then ``sum(w * ce) / sum(w)``).

        Returns:
            A :class:`RoundRecord`. A round with a non-finite value, one that runs out of memory, and one whose
            hypergradient is zero is skipped (``record.reason`` says why, and a warning is logged): nothing changes.

        Raises:
            TypeError, ValueError: the student, the iterators or their batches are not what a round needs
                (nothing changes).
            RuntimeError: with a ``process_group``, the ranks no longer hold the same values; called under
                ``torch.inference_mode()``, or while another thread's round on this teacher runs.
        """
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                "Teacher.step is already running on this teacher (another thread's call): a teacher takes one round "
                "at a time; serialise the calls, or give each thread its own Teacher"
            )
        try:
            return self._step(check_student(student, self), train_iter, val_iter)
        finally:
            self._busy.release()

    def _step(self, student: nn.Module, train_iter: Iterator[Any], val_iter: Iterator[Any]) -> RoundRecord:
        """Draw, compute, commit, watch, record."""
        started, device = time.perf_counter(), _device_of(student)
        self._move_to(device)
        first, second, val = agree_on_draw(self.sync, lambda: _draw(self, train_iter, val_iter, device))
        anchor_point = _starting_point(self)
        compute = functools.partial(compute_round, student, self.loss_fn, self.teacher_model, self.memory)
        options = {**_round_options(self), "anchor_point": anchor_point}
        batches = (first, second, val)
        outcome = compute_or_skip(lambda: compute(*batches, **options), student, self.loss_fn, self.val_loss, batches)
        if isinstance(outcome, str) or (problem := outcome.first_problem(self.sync)) is not None:
            reason, measured = (outcome, None) if isinstance(outcome, str) else (problem or "", outcome)
            self._rounds += 1
            logger.warning("teacher round %d skipped: %s", self.rounds - 1, reason)
            return skipped_record(self.rounds - 1, started, reason, measured)
        rejected = _rejected(self.guard, outcome)
        before = None if self.rollback is None else self._learned.snapshot(self.rounds)
        write = self.mode != "lookahead"
        commit_round(outcome, self._learned, student, write_student=write, accept=not rejected, sync=self.sync)
        seen = first if second is first else [*first, *second]
        count_round_labels(self.loss_fn, [b.targets for b in seen], [val.targets], self.sync)
        self._memory, self._anchor_point, self._rounds = outcome.memory, anchor_point, self.rounds + 1
        rolled_back = None if before is None else self._watch(float(outcome.error_before), before)
        if self.sync is not None:
            check_ranks_in_sync(self.sync, self._learned, self.memory, student)
        return committed_record(self, started, outcome, rejected, rolled_back)

    def _watch(self, error: float, before: Snapshot) -> str | None:
        """Feed the rollback watch; on a persistent rise, restore the snapshot it names. Returns the reason."""
        assert self.rollback is not None
        best, target = self.rollback.best, self.rollback.observe(error, before)
        if target is None:
            return None
        self._learned.restore(target)
        self._memory = None  # not in a snapshot: it starts afresh
        self.dln_lr *= self.rollback.slowdown
        reason = self.rollback.reason(best, target, self.dln_lr)
        logger.warning("teacher round %d: %s", self.rounds - 1, reason)
        return reason

    def _move_to(self, device: torch.device) -> None:
        """Follow the student's device: the DLN, the teacher model and its optimizer state, memory and anchor."""
        if next(self.loss_fn.parameters()).device != device:
            _move_learned(self._learned, device)
            self._memory = None if self.memory is None else tuple(m.to(device) for m in self.memory)
            self._anchor_point = None if self.anchor_point is None else self.anchor_point.to(device)

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_busy"}  # a lock does not copy

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._busy = threading.Lock()

    def state_dict(self) -> dict[str, Any]:
        """Everything that learns or remembers: ``loss_fn``, ``teacher_model``, ``teacher_optimizer``, ``memory``,
        ``anchor_point``, ``rounds``, ``dln_lr``, ``rollback``. As ``nn.Module.state_dict``, the modules' entries are
        the live tensors, which the next round changes: ``copy.deepcopy`` it (or save it) to keep it."""
        return teacher_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the next round continues exactly where it left off.

        Raises:
            TypeError, ValueError: the state does not fit this teacher, naming the entry; nothing is changed.
        """
        checked = check_teacher_state(self, state)
        self.loss_fn.load_state_dict(state["loss_fn"])
        self.teacher_model.load_state_dict(state["teacher_model"])
        if self.teacher_optimizer is not None:
            self.teacher_optimizer.load_state_dict(state["teacher_optimizer"])
        self._memory, self._anchor_point, self._rounds = checked.memory, checked.anchor_point, checked.rounds
        self.dln_lr = checked.dln_lr  # a rollback slows the teacher down
        if self.rollback is not None and state["rollback"] is not None:
            self.rollback.load_state_dict(copy.deepcopy(state["rollback"]))


def _draw(
    teacher: Teacher, train_iter: Iterator[Any], val_iter: Iterator[Any], device: torch.device
) -> tuple[list[Batch], list[Batch], Batch]:
    """Stage I's, stage III's and the validation batches of a round of ``teacher``."""
    first = draw_batches(train_iter, teacher.steps, "train_iter", device)
    second = draw_batches(train_iter, teacher.steps, "train_iter", device) if teacher.mode == "paper" else first
    (val,) = draw_batches(val_iter, 1, "val_iter", device)
    if val.sample_weight is not None:
        check_val_loss_takes_weight(teacher.val_loss, "val_iter")
    return first, second, val


def _given(**settings: Any) -> dict[str, Any]:
    """The settings passed, not left to the loss's :func:`teaching_defaults` (``None``)."""
    return {name: value for name, value in settings.items() if value is not None}


def _round_options(teacher: Teacher) -> dict[str, Any]:
    """:func:`~dynaloss._round.compute_round`'s options from ``teacher``'s settings (but the anchor point)."""
    return {
        "student_lr": None if teacher.student_optimizer is not None else teacher.student_lr,
        "optimizer": teacher.student_optimizer,
        "dln_lr": teacher.dln_lr,
        "val_loss": teacher.val_loss,
        "continue_stage_one": teacher.mode == "paper",
        "anchor_strength": teacher.anchor_strength,
        "sparsity": teacher.sparsity,
        "checkpoint": teacher.checkpoint,
        "autocast_dtype": teacher.autocast_dtype,
        "sync": teacher.sync,
        # stage III's only readers: the teacher model's learning, the guard, and the student's commit
        "run_stage_three": teacher.teacher_model.learnable or teacher.guard is not None or teacher.mode != "lookahead",
    }


def _starting_point(teacher: Teacher) -> Tensor:
    """Where teaching started: the saved point, or (before the first committed round) the DLN now."""
    if teacher.anchor_point is not None:
        return teacher.anchor_point
    return torch.cat([p.detach().flatten().clone() for p in dln_parameters(teacher.loss_fn).values()])


def _move_learned(learned: Learned, device: torch.device) -> None:
    learned.loss_fn.to(device)
    learned.teacher_model.to(device)
    if learned.teacher_optimizer is not None:  # load_state_dict casts the state to each parameter's device
        learned.teacher_optimizer.load_state_dict(learned.teacher_optimizer.state_dict())


def _rejected(guard: float | None, outcome: RoundOutcome) -> bool:
    """Whether the guard turns the round's update down: stage III's error over ``guard`` times stage I's."""
    after = outcome.error_after  # measured whenever there is a guard
    return guard is not None and after is not None and float(after) > guard * float(outcome.error_before)


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    raise ValueError(f"{type(module).__name__} has no parameters")
