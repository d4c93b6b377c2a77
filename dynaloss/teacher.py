"""Teacher: one round of L2T-DLN's Algorithm 1 (student, DLN and teacher learning) per ``step``."""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dynaloss._checks import (
    NonFiniteError,
    check_bool,
    check_not_compiled,
    check_optimizer_excludes,
    check_positive_float,
    check_positive_int,
)
from dynaloss._state import check_finite_state, check_state_dict
from dynaloss.batches import Batch, draw_batches
from dynaloss.distributed import RankMean, unwrap_data_parallel
from dynaloss.rollback import Rollback
from dynaloss.round import RoundOutcome, compute_round
from dynaloss.settings import DEFAULT_TEACHER, MODES, Mode, TeacherKind
from dynaloss.teachers import TeacherModel, make_teacher_model
from dynaloss.teachers.base import Memory
from dynaloss.unroll import StudentState, ValLoss, check_val_loss_takes_weight, default_val_loss, dln_parameters
from dynaloss.update_rules import OptimizerRule, check_optimizer, write_optimizer_state

__all__ = ["MODES", "RoundRecord", "Teacher", "teaching_defaults"]

AUTOCAST_DTYPES = (None, torch.bfloat16, torch.float16)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundRecord:
    """What one teacher round did.

    Attributes:
        round: index of the round (0-based), counting committed and skipped rounds.
        val_error_before: validation error after stage I (N steps with the old DLN).
        val_error_after: validation error after stage III (N steps with the updated DLN); NaN where the round
            had no use for stage III and skipped it (an optimizer teacher, e.g. ``'adam'``, in ``'lookahead'`` mode
            without a guard: nothing learns from it or keeps it).
        hypergradient_norm: L2 norm of the DLN's hypergradient.
        update_norm: L2 norm of the DLN's change this round.
        student_steps: SGD steps written into the student (``2N`` paper, ``N`` research, 0 lookahead).
        seconds: wall time of the round.
        skipped: ``True`` when the round had a non-finite value, or learned nothing (a zero hypergradient, as at a
            learning rate of 0), and nothing was changed; ``reason`` says which.
        rejected: ``True`` when the guard turned the DLN update down (the teacher still learned from it).
        rolled_back: ``True`` when this round's validation error completed a persistent rise and the DLN and
            the teacher were returned to their state at the best point (:class:`dynaloss.rollback.Rollback`).
        reason: why it was skipped, rejected or rolled back.
    """

    round: int
    val_error_before: float
    val_error_after: float
    hypergradient_norm: float
    update_norm: float
    student_steps: int
    seconds: float
    skipped: bool = False
    rejected: bool = False
    rolled_back: bool = False
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _value(error: Tensor | None) -> float:
    """A validation error as a float; NaN where the round did not measure it."""
    return math.nan if error is None else float(error)


def teaching_defaults(loss_fn: nn.Module) -> dict[str, Any]:
    """The :class:`Teacher` settings a loss is taught with by default: :data:`dynaloss.settings.DEFAULT_TEACHER`,
    with the loss's own ``teaching_defaults`` (a mapping, e.g. :data:`dynaloss.settings.CLASS_AWARE_TEACHING`)
    over it: how far a round should move a parameter depends on what the parameter is."""
    own = getattr(loss_fn, "teaching_defaults", {})
    if not isinstance(own, Mapping) or not set(own) <= set(DEFAULT_TEACHER):
        raise TypeError(
            f"{type(loss_fn).__name__}.teaching_defaults must be a mapping of Teacher settings "
            f"({', '.join(DEFAULT_TEACHER)}), got {own!r}"
        )
    return {**DEFAULT_TEACHER, **own}


class _Checked:
    """A setting checked on every assignment, not only in the constructor: a round never runs on a bad value.

    (``teacher.mode = "bogus"`` would fail only after committing a round.)
    """

    def __init__(self, check: Any) -> None:
        self.check = check

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.slot, self.check(value, self.name))


class _State:
    """What a teacher learns or counts: read-only, changed by ``step()`` and ``load_state_dict()`` only."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(
            f"Teacher.{self.name} is the teacher's state, changed by step() and load_state_dict(), not by assignment"
        )


def _check_val_loss(value: object, name: str) -> Any:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


def _check_autocast(value: object, name: str) -> torch.dtype | None:
    if value is not None and not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype or None, got {type(value).__name__}")
    if value not in AUTOCAST_DTYPES:
        raise ValueError(f"{name} must be one of {AUTOCAST_DTYPES}, got {value}")
    return value


def _check_mode(value: object, name: str) -> str:
    if value not in MODES:
        raise ValueError(f"{name} must be one of {MODES}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_anchor(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_student_lr(value: object, name: str) -> float:
    # 0 is a rate a schedule can set (a warm-up's first step): the student then does not move in the unroll
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return 0.0
    return check_positive_float(value, name)


def _check_guard(value: object, name: str) -> float | None:
    return None if value is None else check_positive_float(value, name)


class Teacher:
    r"""Teaches a Dynamic Loss Network while a student trains with it (L2T-DLN, Algorithm 1).

    Each :meth:`step` is one round:

    I. **Student learning**: ``N`` differentiable SGD steps of the student with the DLN as its loss.
    II. **DLN learning**: the hypergradient :math:`\nabla\phi` of the validation error through those steps
        goes to the teacher model, and :math:`\phi' = \phi + \gamma\, T_\vartheta(\nabla\phi, h)`.
    III. **Teacher learning**: ``N`` more steps with :math:`\phi'`, and an Adam step on :math:`\vartheta`
        down the gradient of the new validation error.

    Everything is computed on functional copies and committed only at the end of a round that is finite
    throughout, so a failed round leaves the DLN, the teacher and the student exactly as they were. A
    committed round writes the new DLN parameters into ``loss_fn`` (and clears their ``.grad``, which your
    own ``loss.backward()`` fills and nothing reads) and, in ``'paper'``/``'research'`` mode, the unrolled
    weights and buffers into the student: the only writes into modules it makes.

    Args:
        loss_fn: the DLN the student trains with (e.g. :class:`dynaloss.PairwiseDLN`); updated in place. It
            must return a scalar (one with ``reduction='none'`` raises ``ValueError``).
        teacher: ``'lstm'`` (the paper's), ``'adam'``, ``'sgd'``, ``'rmsprop'`` or a
            :class:`dynaloss.teachers.TeacherModel` (default: the loss's :func:`teaching_defaults`: ``'lstm'``,
            ``'adam'`` for a :class:`dynaloss.ClassAwareDLN`).
        steps: ``N``, student steps per stage (not a total budget) (default: ``10``; the paper's is 25 for
            classification, the authors' code's 15).
        optimizer: the ``torch.optim.SGD``, ``Adam`` or ``AdamW`` that trains the student. Every round then
            unrolls *its* update rule (momentum, Nesterov, weight decay, moments, AMSGrad) from its current
            state and each param group's current learning rate, so a scheduler is followed without syncing
            anything; a committed ``'paper'``/``'research'`` round also writes its state, as that many
            ``optimizer.step()`` calls would. ``None``: plain SGD at ``student_lr`` (the paper's student).
            Any other optimizer raises ``TypeError``, and one that holds the DLN's parameters ``ValueError`` (the
            teacher alone updates the DLN) (default: ``None``).
        student_lr: ``eta``, the student's SGD learning rate in the unroll when there is no ``optimizer``
            (default: ``0.1``).
        dln_lr: ``gamma``, the scale of the teacher's update of the DLN (default: the loss's
            :func:`teaching_defaults`: ``1e-3``, ``0.05`` for a :class:`dynaloss.ClassAwareDLN`).
        teacher_lr: Adam learning rate of the teacher model (default: ``1e-3``).
        mode: what happens to the student (default: ``'lookahead'``):
            ``'lookahead'``: the student is left bitwise untouched (train it with your own optimizer);
            stage III replays stage I's start and batches with the new DLN;
            ``'paper'``: stage III continues from stage I's end on new batches, and the student is
            advanced by those ``2N`` steps (BatchNorm statistics included);
            ``'research'``: as the authors' code, both stages start from the same weights on the same
            batches, and the student keeps the second stage's ``N`` steps (BatchNorm statistics included,
            which the authors' code leaves unchanged; docs/modes.md lists every difference).
        val_loss: validation error ``f(outputs, targets)``, or ``f(outputs, targets, weight)`` for weighted
            validation batches; it must return a 0-d floating tensor computed from ``outputs`` (anything else
            raises ``TypeError``/``ValueError`` naming ``val_loss`` on the first round) (default:
            cross-entropy with the DLN's ``ignore_index``, :class:`~dynaloss.unroll.CrossEntropyValLoss`, a
            weighted mean on weighted batches).
        anchor: the share of the DLN's distance to where teaching started that every round removes,
            ``phi' = phi + dln_lr * T(grad) - anchor * (phi - phi_start)``: a trust region that keeps the
            taught loss within ``dln_lr / anchor`` per coordinate of the (warm-started) loss it began as.
            ``0`` disables it, as in the paper (default: the loss's :func:`teaching_defaults`: ``0.05``, ``0``
            for a :class:`dynaloss.ClassAwareDLN`).
        guard: reject the DLN update when the validation error after stage III exceeds ``guard`` times
            the error after stage I: the DLN keeps its parameters, the student keeps only stage I's steps
            (``'paper'``/``'research'``), and the teacher model still learns from the failed proposal.
            ``None`` disables it, as in the paper (default: ``None``).
        rollback: watch the validation error the rounds measure and, when its mean over a window of rounds
            rises well above the best such mean so far, return the DLN, the teacher model and its optimizer
            to their state at that best point, start its memory afresh and halve ``dln_lr``
            (:class:`dynaloss.rollback.Rollback`; a rollback is logged and marked in its :class:`RoundRecord`).
            ``True``: the default thresholds; a :class:`~dynaloss.rollback.Rollback` sets its own; ``False``:
            off, as in the paper (default: the loss's :func:`teaching_defaults`: ``True``, ``False`` for a
            :class:`dynaloss.ClassAwareDLN`).
        checkpoint: recompute each unrolled step in the backward pass instead of keeping its activations
            (``torch.utils.checkpoint``, non-reentrant): the round's memory no longer grows with every
            step's activations, for roughly one more forward and backward per step; the numbers are the same
            up to float rounding (default: ``False``).
        autocast_dtype: run the unrolled steps' forwards under ``torch.autocast`` with this dtype,
            ``torch.bfloat16`` or ``torch.float16``: less memory and, on GPUs, faster, for a less exact
            hypergradient (0.4 % relative error on the test's MLP; the tests allow 5 %) (default: ``None``).
        process_group: train data-parallel over this ``torch.distributed`` group (``torch.distributed.group.WORLD``
            for all ranks): each rank passes its own shard of every batch, every unrolled step uses the ranks'
            mean gradient (equal-size shards: the single-process unroll on their concatenation), and the DLN,
            teacher and student stay identical on every rank, which each round verifies. Every rank must call
            :meth:`step` together; a ``DistributedDataParallel`` student is unwrapped. ``None``: one process
            (default).

    The settings (``steps``, ``student_lr``, ``dln_lr``, ``anchor``, ``guard``, ``mode``, ``val_loss``,
    ``checkpoint``, ``autocast_dtype``, ``student_optimizer``) may be reassigned between rounds; each assignment
    is checked as the constructor checks it. The state (``loss_fn``, ``model``, ``optimizer``, ``memory``,
    ``anchor_point``, ``rounds``, ``rollback``, ``sync``) is read-only: it changes through :meth:`step` and
    :meth:`load_state_dict`. One round runs at a time: a call while another thread's round is running raises.
    """

    steps = _Checked(check_positive_int)
    student_lr = _Checked(_check_student_lr)
    dln_lr = _Checked(check_positive_float)
    anchor = _Checked(_check_anchor)
    guard = _Checked(_check_guard)
    mode = _Checked(_check_mode)
    val_loss = _Checked(_check_val_loss)
    checkpoint = _Checked(check_bool)
    autocast_dtype = _Checked(_check_autocast)
    loss_fn = _State()
    model = _State()
    optimizer = _State()
    memory = _State()
    anchor_point = _State()
    rounds = _State()
    rollback = _State()
    sync = _State()

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
        anchor: float | None = None,
        guard: float | None = DEFAULT_TEACHER["guard"],
        rollback: bool | Rollback | None = None,
        checkpoint: bool = False,
        autocast_dtype: torch.dtype | None = None,
        process_group: Any = None,
    ) -> None:
        if not isinstance(loss_fn, nn.Module):
            raise TypeError(f"loss_fn must be a torch.nn.Module, got {type(loss_fn).__name__}")
        if getattr(loss_fn, "reduction", None) == "none":
            raise ValueError(
                f"loss_fn ({type(loss_fn).__name__}) has reduction='none': each unrolled step differentiates one "
                "scalar loss, so build the DLN the teacher teaches with reduction='mean' or 'sum'"
            )
        check_not_compiled(loss_fn, "loss_fn")
        dln_parameters(loss_fn)  # raises if there is nothing to teach
        # the settings that depend on how the loss is parameterised come from the loss, when it says
        defaults = teaching_defaults(loss_fn)
        teacher = defaults["teacher"] if teacher is None else teacher
        dln_lr = defaults["dln_lr"] if dln_lr is None else dln_lr
        anchor = defaults["anchor"] if anchor is None else anchor
        rollback = defaults["rollback"] if rollback is None else rollback
        self.mode = mode
        self._loss_fn = loss_fn
        self.steps = steps
        self.student_optimizer = optimizer
        # a teacher built with a zero rate is a mistake; a schedule may set 0 later (a warm-up's first step)
        self.student_lr = check_positive_float(student_lr, "student_lr")
        self.dln_lr = dln_lr
        self.anchor = anchor
        self.guard = guard
        self._anchor_point: Tensor | None = None  # the DLN where teaching started, flat; set by the first round
        if not isinstance(rollback, (bool, Rollback)):
            raise TypeError(f"rollback must be a bool or a dynaloss.rollback.Rollback, got {type(rollback).__name__}")
        self._rollback = Rollback() if rollback is True else (rollback or None)
        self.checkpoint = checkpoint
        self.autocast_dtype = autocast_dtype
        self.val_loss = val_loss or default_val_loss(loss_fn)
        reference = next(loss_fn.parameters())
        self._model = make_teacher_model(teacher).to(device=reference.device, dtype=reference.dtype)
        teacher_lr = check_positive_float(teacher_lr, "teacher_lr")
        self._optimizer = torch.optim.Adam(self.model.parameters(), lr=teacher_lr) if self.model.learnable else None
        self._memory: Memory | None = None
        self._busy = threading.Lock()  # held while a round runs (see step)
        self._rounds = 0
        self._sync = None if process_group is None else RankMean(process_group)

    @property
    def student_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer whose update rule the unroll follows (``None``: plain SGD at ``student_lr``).

        Assignable, for frameworks that build their optimizer after the loss (checked as in the constructor).
        """
        return self._student_optimizer

    @student_optimizer.setter
    def student_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is not None:
            check_optimizer_excludes(check_optimizer(optimizer), self.loss_fn)
        self._student_optimizer = optimizer

    # ----------------------------------------------------------------------------------------------- round
    def step(self, student: nn.Module, train_iter: Iterator[Any], val_iter: Iterator[Any]) -> RoundRecord:
        """Run one round of Algorithm 1 and commit it if every quantity in it is finite.

        Args:
            student: the model being trained; on the device the round runs on. Not a ``torch.compile``'d
                module (nor one holding one: ``TypeError``): pass the module it wraps, ``model._orig_mod``.
            train_iter: iterator of ``(x, y)`` or ``(x, y, w)`` training batches; a round takes ``2N``
                (``'paper'``) or ``N`` of them.
            val_iter: iterator of ``(x, y)`` or ``(x, y, w)`` validation batches; a round takes one. A weighted
                batch's ``w`` goes to ``val_loss`` as its third argument: the default's validation error is
                then the weighted mean ``sum(w * ce) / sum(w)``; a ``val_loss`` that takes no weight raises
                ``TypeError`` before the round.

        Returns:
            A :class:`RoundRecord`. A round with a non-finite value, one that runs out of memory, and one whose
            hypergradient is zero (it learned nothing: at a learning rate of 0, say) is skipped
            (``record.skipped``, its ``reason`` saying why, with a logged warning), and nothing changes.

        Raises:
            TypeError, ValueError: the iterators or their batches are not what a round needs (too few batches,
                a wrong structure, or batches the student, the DLN or ``val_loss`` cannot take); nothing changes.
            RuntimeError: with a ``process_group``, the ranks no longer hold the same DLN, teacher or student;
                called under ``torch.inference_mode()``; or called while another thread's round on this teacher
                is running (a teacher takes one round at a time).
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "Teacher.step differentiates through the student's steps, which torch.inference_mode() forbids: "
                "call it outside inference mode (torch.no_grad() is fine)"
            )
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                "Teacher.step is already running on this teacher (another thread's call): a teacher takes one round "
                "at a time; serialise the calls, or give each thread its own Teacher"
            )
        try:
            return self._step(student, train_iter, val_iter)
        finally:
            self._busy.release()

    def _step(self, student: nn.Module, train_iter: Iterator[Any], val_iter: Iterator[Any]) -> RoundRecord:
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
        if self.sync is None and student is not unwrap_data_parallel(student):
            raise ValueError(
                f"student is wrapped in {type(student).__name__} but the Teacher has no process_group: pass "
                "process_group=torch.distributed.group.WORLD so the unrolled steps average over the ranks"
            )
        student = unwrap_data_parallel(student)
        check_not_compiled(student, "student")
        if self.student_optimizer is not None:  # param groups may have been added since it was assigned
            check_optimizer_excludes(self.student_optimizer, self.loss_fn)
        started = time.perf_counter()
        device = _device_of(student)
        self._move_to(device)
        first, second, val = self._draw(train_iter, val_iter, device)
        anchor_point = self._starting_point()
        try:
            with torch.enable_grad():  # a round differentiates, even when called under no_grad()
                outcome = compute_round(
                    student,
                    self.loss_fn,
                    self.model,
                    self.memory,
                    first,
                    second,
                    val,
                    student_lr=None if self.student_optimizer is not None else self.student_lr,
                    optimizer=self.student_optimizer,
                    dln_lr=self.dln_lr,
                    val_loss=self.val_loss,
                    continue_stage_one=self.mode == "paper",
                    anchor=anchor_point,
                    anchor_strength=self.anchor,
                    checkpoint=self.checkpoint,
                    autocast_dtype=self.autocast_dtype,
                    sync=self.sync,
                    # stage III's only readers: the teacher model's learning, the guard, and the student's commit
                    run_stage_three=self.model.learnable or self.guard is not None or self.mode != "lookahead",
                )
        except NonFiniteError as error:
            return self._skip(started, f"{error}; the round was not committed")
        except torch.OutOfMemoryError as error:
            # leave the handler before skipping: the traceback holds the round's frames and, with them, its tensors
            reason: str | None = f"out of memory ({str(error).splitlines()[0]}); the round was not committed"
        except (RuntimeError, IndexError) as error:
            # torch reports batches that do not fit the student or the loss as RuntimeError (shapes, dtypes) or
            # IndexError (class indices out of range): say so when the batches alone reproduce it; any other
            # error (a device or collective failure, a bug) propagates as it is
            problem = None if _not_about_batches(error) else _batch_problem(self, student, first, second, val)
            if problem is None:
                raise
            raise ValueError(f"the round failed on these batches: {error} ({problem}); nothing was changed") from error
        else:
            reason = None
        if reason is not None:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return self._skip(started, reason)
        problem = outcome.first_problem(self.sync)
        if problem is not None:
            return self._skip(started, problem, outcome)
        after = outcome.error_after  # measured whenever there is a guard
        rejected = (
            self.guard is not None and after is not None and float(after) > self.guard * float(outcome.error_before)
        )
        before = None if self.rollback is None else self._teaching_state()
        self._commit(student, outcome, accept=not rejected)
        self._anchor_point = anchor_point
        rolled_back = self._watch(float(outcome.error_before), before)
        if self.sync is not None:
            self._check_in_sync(student)
        return self._record(started, outcome, rejected, rolled_back)

    def _watch(self, error: float, before: dict[str, Any] | None) -> str | None:
        """Feed the rollback watch; on a persistent rise, restore the state it names. Returns the reason."""
        if self.rollback is None or before is None:
            return None
        best = self.rollback.best
        target = self.rollback.observe(error, before)
        if target is None:
            return None
        self._restore_teaching_state(target)
        self.dln_lr *= self.rollback.slowdown
        reason = (
            f"rollback: the validation error averaged over the last {self.rollback.window} rounds rose "
            f"{self.rollback.rise:g}x above its best ({best:.4g}); the DLN and the teacher went back to their "
            f"state before round {target['round']}, dln_lr is now {self.dln_lr:.3g}"
        )
        logger.warning("teacher round %d: %s", self.rounds - 1, reason)
        return reason

    def _teaching_state(self) -> dict[str, Any]:
        """A copy of what the teacher learns (DLN, teacher model, its optimizer): what a rollback returns to.

        Not the teacher model's memory: the LSTM's is ~10 MB for the default DLN, and a rollback starts it
        afresh instead (it summarises the rounds that led to the rise).
        """
        return copy.deepcopy(
            {
                "round": self.rounds,
                "loss_fn": self.loss_fn.state_dict(),
                "model": self.model.state_dict(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            }
        )

    def _restore_teaching_state(self, state: dict[str, Any]) -> None:
        self.loss_fn.load_state_dict(state["loss_fn"])
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))  # it would alias the saved tensors
        self._memory = None

    def _draw(
        self, train_iter: Iterator[Any], val_iter: Iterator[Any], device: torch.device
    ) -> tuple[list[Batch], list[Batch], Batch]:
        """Stage I's, stage III's and the validation batches; with ranks, all of them draw or all raise."""
        try:
            first = draw_batches(train_iter, self.steps, "train_iter", device)
            second = draw_batches(train_iter, self.steps, "train_iter", device) if self.mode == "paper" else first
            (val,) = draw_batches(val_iter, 1, "val_iter", device)
            if val.weight is not None:
                check_val_loss_takes_weight(self.val_loss, "val_iter")
        except (TypeError, ValueError):
            # the other ranks are about to enter the round's collectives: tell them, so none waits forever
            if self.sync is not None:
                self.sync.any_rank(True)
            raise
        if self.sync is not None and self.sync.any_rank(False):
            raise ValueError("another rank could not draw this round's batches (see its error); no rank ran it")
        return first, second, val

    def _check_in_sync(self, student: nn.Module) -> None:
        """Every rank must now hold the same DLN, teacher (model, memory) and student; raise if not."""
        self.sync.check_in_sync(  # type: ignore[union-attr]
            {
                "DLN parameters": [p for p in self.loss_fn.parameters()],
                "teacher model parameters": [p for p in self.model.parameters()],
                "teacher memory": list(self.memory or ()),
                "student parameters": [p for p in student.parameters()],
            }
        )

    def _starting_point(self) -> Tensor:
        """Where teaching started: the saved point, or (before the first committed round) the DLN now."""
        if self.anchor_point is not None:
            return self.anchor_point
        return torch.cat([p.detach().flatten().clone() for p in dln_parameters(self.loss_fn).values()])

    def _commit(self, student: nn.Module, outcome: RoundOutcome, accept: bool = True) -> None:
        """Write the round: all of it, or (``accept=False``) the teacher's learning and stage I only."""
        with torch.no_grad():
            named = dict(self.loss_fn.named_parameters())
            for name, value in outcome.new_phi.items() if accept else ():
                named[name].copy_(value)
            if self.optimizer is not None:
                params = [p for p in self.model.parameters() if p.requires_grad]
                for param, grad in zip(params, outcome.teacher_grads):
                    param.grad = grad
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self._memory = outcome.memory
            # the user's own loss.backward() fills .grad on the DLN; nothing reads it, so free it here
            self.loss_fn.zero_grad(set_to_none=True)
            if self.mode != "lookahead":
                written = outcome.student if accept else outcome.stage_one
                if self.sync is not None:
                    written = _mean_buffers(written, self.sync)
                _write_student(student, written)
                if isinstance(outcome.rule, OptimizerRule):
                    write_optimizer_state(outcome.rule, written.optim)
        self._rounds += 1

    # --------------------------------------------------------------------------------------- bookkeeping
    def _record(
        self, started: float, outcome: RoundOutcome, rejected: bool, rolled_back: str | None = None
    ) -> RoundRecord:
        steps = {"paper": 2 * self.steps, "research": self.steps, "lookahead": 0}[self.mode]
        if rejected:
            steps = 0 if self.mode == "lookahead" else self.steps
        reason = None
        if rejected:
            reason = (
                f"guard: validation error rose from {float(outcome.error_before):.4g} to "
                f"{_value(outcome.error_after):.4g} (> {self.guard}x); the DLN update was not applied"
            )
        return RoundRecord(
            round=self.rounds - 1,
            val_error_before=float(outcome.error_before),
            val_error_after=_value(outcome.error_after),
            hypergradient_norm=float(outcome.flat_grad.norm()),
            update_norm=0.0 if rejected else float(outcome.update.norm()),
            student_steps=steps,
            seconds=time.perf_counter() - started,
            rejected=rejected,
            rolled_back=rolled_back is not None,
            reason=reason or rolled_back,
        )

    def _skip(self, started: float, reason: str, outcome: RoundOutcome | None = None) -> RoundRecord:
        self._rounds += 1
        logger.warning("teacher round %d skipped: %s", self.rounds - 1, reason)
        return RoundRecord(
            round=self.rounds - 1,
            val_error_before=math.nan if outcome is None else float(outcome.error_before),
            val_error_after=math.nan if outcome is None else _value(outcome.error_after),
            hypergradient_norm=math.nan if outcome is None else float(outcome.flat_grad.norm()),
            update_norm=0.0,
            student_steps=0,
            seconds=time.perf_counter() - started,
            skipped=True,
            reason=reason,
        )

    def _move_to(self, device: torch.device) -> None:
        """Follow the student's device: the DLN, the teacher model, its memory and its optimizer state."""
        if next(self.loss_fn.parameters()).device == device:
            return
        self.loss_fn.to(device)
        self.model.to(device)
        if self.memory is not None:
            self._memory = tuple(m.to(device) for m in self.memory)
        if self.anchor_point is not None:
            self._anchor_point = self.anchor_point.to(device)
        if self.optimizer is not None:
            # load_state_dict casts the state to each parameter's device
            self.optimizer.load_state_dict(self.optimizer.state_dict())

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_busy"}  # a lock does not copy

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._busy = threading.Lock()

    def state_dict(self) -> dict[str, Any]:
        """Everything that learns or remembers: DLN, teacher model, its optimizer and memory, round count.

        As ``nn.Module.state_dict``, the DLN's and the teacher model's entries are the live tensors, which the next
        round changes in place: ``copy.deepcopy`` it (or save it) to keep a snapshot.
        """
        return {
            "loss_fn": self.loss_fn.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "memory": None if self.memory is None else [m.clone() for m in self.memory],
            "anchor_point": None if self.anchor_point is None else self.anchor_point.clone(),
            "rounds": self.rounds,
            "dln_lr": self.dln_lr,
            "rollback": None if self.rollback is None else copy.deepcopy(self.rollback.state_dict()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the next round continues exactly where it left off.

        All of it is checked before anything is written (the DLN's and the teacher model's keys, shapes and
        extra state, e.g. ``num_classes``; the optimizer state's structure; the memory's and the anchor's
        shapes; the round count, ``dln_lr`` and the rollback state; every tensor finite), so a state that does
        not fit raises ``TypeError``/``ValueError`` naming the entry and leaves the teacher as it was.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping (Teacher.state_dict()'s output), got {type(state).__name__}")
        missing = {"loss_fn", "model", "optimizer", "memory", "rounds"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}; pass the output of Teacher.state_dict()")
        if (state["optimizer"] is None) != (self.optimizer is None):
            raise ValueError("state['optimizer'] comes from a teacher of another kind (learnable vs fixed rule)")
        rounds = state["rounds"]
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"state['rounds'] must be an int >= 0, got {rounds!r}")
        check_state_dict(self.loss_fn, state["loss_fn"], "state['loss_fn']")
        check_state_dict(self.model, state["model"], "state['model']")
        if self.optimizer is not None:
            self._check_optimizer_state(state["optimizer"])
        reference = next(self.loss_fn.parameters())
        coordinates = sum(p.numel() for p in dln_parameters(self.loss_fn).values())
        memory = state["memory"]
        if memory is not None:
            expected = self.model.initial_memory(coordinates, like=reference)
            _check_tensors(memory, [m.shape for m in expected], "state['memory']")
        point = state.get("anchor_point")
        if point is not None:
            _check_tensors([point], [torch.Size([coordinates])], "state['anchor_point']")
        dln_lr = state.get("dln_lr", self.dln_lr)
        check_positive_float(dln_lr, "state['dln_lr']")
        watch = state.get("rollback")
        if self.rollback is not None and watch is not None:
            copy.deepcopy(self.rollback).load_state_dict(copy.deepcopy(watch))  # raises ValueError if it does not fit
        # everything fits: now write it all
        self.loss_fn.load_state_dict(state["loss_fn"])
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self._memory = None if memory is None else tuple(m.to(reference.device).clone() for m in memory)
        self._anchor_point = None if point is None else point.to(reference.device).clone()
        self._rounds = rounds
        self.dln_lr = dln_lr  # a rollback slows the teacher down
        if self.rollback is not None and watch is not None:
            self.rollback.load_state_dict(copy.deepcopy(watch))

    def _check_optimizer_state(self, state: object) -> None:
        """Raise ``ValueError`` if the teacher model's optimizer would not load ``state`` (tried on a copy)."""
        assert self.optimizer is not None
        check_finite_state(state, "state['optimizer']")
        trial = torch.optim.Adam(copy.deepcopy(self.model).parameters(), **self.optimizer.defaults)
        try:
            trial.load_state_dict(state)  # type: ignore[arg-type]
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"state['optimizer'] does not fit the teacher's Adam: {error!r}") from None
        for group in trial.param_groups:  # torch checks the groups' sizes, not the moments' shapes
            for param in group["params"]:
                for key, value in trial.state.get(param, {}).items():
                    if isinstance(value, Tensor) and value.dim() and value.shape != param.shape:
                        raise ValueError(
                            f"state['optimizer'] holds {key!r} of shape {tuple(value.shape)} for a teacher "
                            f"parameter of shape {tuple(param.shape)}"
                        )


def _check_tensors(values: object, shapes: Sequence[torch.Size], name: str) -> None:
    """Raise ``ValueError`` unless ``values`` is a sequence of finite floating tensors of exactly ``shapes``."""
    if not isinstance(values, (list, tuple)) or len(values) != len(shapes):
        count = len(values) if isinstance(values, (list, tuple)) else "?"
        raise ValueError(f"{name} must be {len(shapes)} tensors, got {type(values).__name__} of {count}")
    for index, (value, shape) in enumerate(zip(values, shapes)):
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.shape != shape:
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name}[{index}] must be a floating tensor of shape {tuple(shape)}, got {got}")
    check_finite_state(list(values), name)


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    raise ValueError(f"{type(module).__name__} has no parameters")


def _mean_buffers(state: StudentState, sync: RankMean) -> StudentState:
    """The state with its floating buffers (BatchNorm running statistics, from each rank's own shards) averaged."""
    names = [n for n, b in state.buffers.items() if b.is_floating_point()]
    if not names:
        return state
    averaged = dict(zip(names, sync.mean_detached([state.buffers[n] for n in names])))
    return StudentState(state.params, {**state.buffers, **averaged}, state.trainable, state.optim)


def _write_student(student: nn.Module, state: StudentState) -> None:
    """The committed step: the unrolled weights and buffers become the student's."""
    named_params = dict(student.named_parameters())
    for name in state.trainable:
        named_params[name].copy_(state.params[name])
    for name, buffer in student.named_buffers():
        buffer.copy_(state.buffers[name])


def _not_about_batches(error: BaseException) -> bool:
    """Errors that say the device or the process group failed, whatever the batches were."""
    kinds = tuple(
        kind
        for kind in (getattr(torch, "AcceleratorError", None), getattr(torch.distributed, "DistError", None))
        if isinstance(kind, type)
    )
    return isinstance(error, kinds) or str(error).startswith(("CUDA error", "NCCL error"))


def _batch_problem(
    teacher: Teacher, student: nn.Module, first: list[Batch], second: list[Batch], val: Batch
) -> str | None:
    """What the round's batches fail on without the round around them (the student's forward, the DLN or
    ``val_loss``, named), or ``None`` when they pass: then the round's error was about something else.

    Runs without gradients, on copies of the student's buffers so that BatchNorm statistics stay as they were.
    """
    state = {
        **dict(student.named_parameters()),
        **{name: buffer.clone() for name, buffer in student.named_buffers()},
    }
    labelled = [(batch, "a train batch", teacher.loss_fn) for batch in (*first, *second)]
    with torch.no_grad():
        for batch, label, loss in [*labelled, (val, "the val batch", teacher.val_loss)]:
            try:
                outputs = torch.func.functional_call(student, state, (batch.inputs,))
            except (RuntimeError, IndexError, TypeError, ValueError) as error:
                return f"the student's forward raised on {label}: {error}"
            extra = () if batch.weight is None else (batch.weight,)
            try:
                loss(outputs, batch.targets, *extra)
            except (RuntimeError, IndexError, TypeError, ValueError) as error:
                what = "val_loss" if loss is teacher.val_loss else "the DLN"
                return f"{what} raised on {label}: {error}"
    return None
