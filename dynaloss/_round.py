"""One round of Algorithm 1 as a pure computation: nothing is written until the caller commits it
(:func:`dynaloss._commit.commit_round`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dynaloss._batches import Batch
from dynaloss._unroll import (
    StudentState,
    ValLoss,
    dln_parameters,
    grads_or_zeros,
    start_of_unroll,
    unroll,
    validation_error,
)
from dynaloss._update_rules import UpdateRule
from dynaloss.distributed import RankMean
from dynaloss.teachers.base import Memory, TeacherModel

__all__ = ["RoundOutcome", "compute_round", "soft_threshold", "sparse_parameter_mask"]


@dataclass
class RoundOutcome:
    """A computed, not yet committed round (all tensors detached).

    Attributes:
        error_before: validation error after stage I.
        error_after: validation error after stage III (``None``: stage III was not run).
        flat_grad: the DLN's hypergradient, flattened in ``named_parameters`` order.
        new_phi: the updated DLN parameters by name.
        update: ``new_phi - phi``, flattened.
        memory: the teacher model's memory after this round.
        teacher_grads: gradient of ``error_after`` w.r.t. each learnable teacher-model parameter.
        student: the student's state at the end of stage III (of stage I when stage III was not run), its
            optimizer's state included.
        stage_one: the student's state at the end of stage I (detached), what a guarded round keeps.
        rule: the update rule the student's steps followed (what writes the optimizer's state back).
        inputs_finite: device flags, whether the DLN's inputs stayed finite in stage I and in stage III (``True``
            where the loss did not check on the device).
        train_weights, val_weights: the sample weights of the round's train batches and of its val batch.
    """

    error_before: Tensor
    error_after: Tensor | None
    flat_grad: Tensor
    new_phi: dict[str, Tensor]
    update: Tensor
    memory: Memory
    teacher_grads: tuple[Tensor, ...]
    student: StudentState
    stage_one: StudentState
    rule: UpdateRule
    inputs_finite: list[Tensor] = field(default_factory=list)
    train_weights: list[Tensor] = field(default_factory=list)
    val_weights: list[Tensor] = field(default_factory=list)

    def first_problem(self, sync: RankMean | None = None) -> str | None:
        """Why this round must not be committed, or ``None``: a non-finite value, or a zero hypergradient.

        A round whose hypergradient is exactly zero has learned nothing (the student's learning rate is 0, so
        the unroll did not move it, or the DLN does not reach the validation error): it changes nothing, where
        the teacher's output at a zero input (the LSTM's, the anchor point's pull) would still move the DLN.

        With ``sync`` every rank's flags are combined first, so all ranks skip or commit the round together.
        """
        # a flag for the weights whether or not a batch has any: every rank combines as many flags
        none = [self.error_before.new_ones((), dtype=torch.bool)]
        checks = {
            # in the order things happen, so the first failure names the cause: NaN weights or logits in stage I
            # make everything after them NaN, and a NaN hypergradient makes stage III's logits NaN
            "the sample weights of a train batch contain NaN or Inf values": self.train_weights or none,
            "the sample weights of the val batch contain NaN or Inf values": self.val_weights or none,
            "the DLN's input contains NaN or Inf values (the student's outputs in stage I)": self.inputs_finite[:1],
            "the validation error after stage I or the DLN's hypergradient is not finite": [
                self.error_before.reshape(1),
                self.flat_grad,
            ],
            "the DLN's hypergradient is zero, so the round learned nothing (the student's learning rate is 0, or "
            "the DLN does not reach the validation error) and changed nothing": [self.flat_grad.ne(0).any()],
            "the DLN's input contains NaN or Inf values (the student's outputs in stage III)": self.inputs_finite[1:],
            "DLN update is not finite": [self.update],
            "validation error after stage III is not finite": [] if self.error_after is None else [self.error_after],
            "teacher model gradient is not finite": list(self.teacher_grads),
            "student parameters is not finite": list(self.student.params.values()),
            "the student optimizer's state is not finite": self.student.optim.tensors(),
        }
        # one flag per check, computed on the device and read back with a single synchronisation
        # (the unrolls' input flags are booleans already)
        flags = torch.stack([torch.stack([_all_finite(t) for t in ts]).all() for ts in checks.values() if ts])
        if sync is not None:
            flags = sync.all_true(flags)
        names = [name for name, ts in checks.items() if ts]
        for name, finite in zip(names, flags.tolist()):
            if not finite:
                return f"{name}; the round was not committed"
        return None


def compute_round(
    student: nn.Module,
    loss_fn: nn.Module,
    teacher_model: TeacherModel,
    memory: Memory | None,
    first: Sequence[Batch],
    second: Sequence[Batch],
    val: Batch,
    *,
    student_lr: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    dln_lr: float,
    val_loss: ValLoss,
    continue_stage_one: bool = True,
    anchor_point: Tensor | None = None,
    anchor_strength: float = 0.0,
    sparsity: float = 0.0,
    checkpoint: bool = False,
    autocast_dtype: torch.dtype | None = None,
    sync: RankMean | None = None,
    run_stage_three: bool = True,
) -> RoundOutcome:
    """Stages I-III of L2T-DLN from the student's current weights, without writing anything.

    Args:
        student: read through ``functional_call`` only.
        loss_fn: the DLN; its current parameters are ``phi``.
        teacher_model: the teacher model ``T``; ``memory`` is its memory (``None`` before the first round).
        first: stage I's batches. ``second``: stage III's.
        student_lr, optimizer: the student's steps are plain SGD at ``student_lr``, or ``optimizer``'s own
            (SGD, Adam, AdamW) from its current state and param groups; pass exactly one.
        val: the validation batch both stages are scored on.
        continue_stage_one: stage III starts where stage I ended (the paper) or, if ``False``, from the
            student's current weights again (the research code).
        anchor_point: flat DLN parameters the update is pulled back towards, by ``anchor_strength``:
            ``phi' = phi + dln_lr * T(grad) - anchor_strength * (phi - anchor_point)`` (default: no pull).
        sparsity: after that, the coordinates of :func:`sparse_parameter_mask` are soft-thresholded toward
            ``anchor_point`` (0 without one) by ``sparsity * dln_lr`` (:func:`soft_threshold`) (default: 0, off).
        checkpoint, autocast_dtype: memory options of both unrolls (:func:`dynaloss._unroll.unroll`).
        sync: data-parallel ranks to average over: every unrolled step uses the ranks' mean gradient, and the
            hypergradient, the teacher's gradients and the validation errors are the ranks' means, so every
            rank computes the same update (default: ``None``, one process).
        run_stage_three: run stage III. ``False`` is for a round whose stage III has no reader: a teacher model with
            nothing to learn, no guard, and a student that keeps none of its steps (lookahead); the outcome's
            ``error_after`` is then ``None`` and its ``student`` stage I's end (default: ``True``).

    Returns:
        The :class:`RoundOutcome`; ``teacher_grads`` is empty when ``teacher_model`` has nothing to learn.

    Nothing here reads a value back from the device (but a :class:`~dynaloss.PairwiseDLN`'s targets, once
    per unroll): a non-finite value is not raised on but reported by :meth:`RoundOutcome.first_problem`,
    which checks everything with one read-back.

    Raises:
        NonFiniteError: a loss module's own input check found a non-finite input in an unroll.
    """
    if (student_lr is None) == (optimizer is None):
        raise ValueError("pass exactly one of student_lr (plain SGD steps) and optimizer (its own update rule)")
    start, rule = start_of_unroll(student, optimizer, student_lr)
    phi = dln_parameters(loss_fn)
    grad_mean = None if sync is None else sync.mean
    unroll_options: dict[str, Any] = {
        "checkpoint": checkpoint,
        "autocast_dtype": autocast_dtype,
        "grad_mean": grad_mean,
    }
    stage_one = unroll(student, start, loss_fn, phi, first, rule=rule, **unroll_options)
    error_before = validation_error(student, stage_one, val, val_loss)
    flat_grad = torch.cat([g.flatten() for g in grads_or_zeros(error_before, list(phi.values()))]).detach()
    if sync is not None:
        # each rank's backward of its own validation shard is its share of the union's gradient (see distributed.py)
        flat_grad, error_before = sync.mean_detached([flat_grad, error_before])

    flat_phi = torch.cat([p.detach().flatten() for p in phi.values()])
    if memory is None:
        memory = teacher_model.initial_memory(flat_phi.numel(), like=flat_phi)
    direction, new_memory = _check_teacher_output(teacher_model(flat_grad, memory), flat_phi.numel(), teacher_model)
    new_flat_phi = flat_phi + dln_lr * direction.to(flat_phi.dtype)
    if anchor_point is not None and anchor_strength > 0:
        new_flat_phi = new_flat_phi - anchor_strength * (flat_phi - anchor_point)
    if sparsity > 0:
        centre = torch.zeros_like(flat_phi) if anchor_point is None else anchor_point.to(flat_phi)
        thresholded = soft_threshold(new_flat_phi, centre, sparsity * dln_lr)
        new_flat_phi = torch.where(sparse_parameter_mask(loss_fn, phi).to(flat_phi.device), thresholded, new_flat_phi)
    new_phi = dict(zip(phi, _unflatten(new_flat_phi, list(phi.values()))))

    learnable = teacher_model.learnable
    if not run_stage_three:
        if learnable:
            raise ValueError("run_stage_three=False: a learnable teacher model learns from stage III")
        stage_one_state = StudentState(
            {n: p.detach() for n, p in stage_one.params.items()},
            stage_one.buffers,
            start.trainable,
            stage_one.optim.detached(),
        )
        return RoundOutcome(
            error_before=error_before.detach(),
            error_after=None,
            flat_grad=flat_grad,
            new_phi={n: p.detach() for n, p in new_phi.items()},
            update=(new_flat_phi - flat_phi).detach(),
            memory=tuple(m.detach() for m in new_memory),
            teacher_grads=(),
            student=stage_one_state,
            stage_one=stage_one_state,
            rule=rule,
            inputs_finite=[
                error_before.new_ones((), dtype=torch.bool)
                if stage_one.inputs_finite is None
                else stage_one.inputs_finite
            ],
        )
    stage_three_start = stage_one.detached() if continue_stage_one else start.detached()
    stage_three = unroll(
        student, stage_three_start, loss_fn, new_phi, second, rule=rule, create_graph=learnable, **unroll_options
    )
    error_after = validation_error(student, stage_three, val, val_loss)
    teacher_params = [p for p in teacher_model.parameters() if p.requires_grad]
    teacher_grads = grads_or_zeros(error_after, teacher_params) if learnable else ()
    if sync is not None:
        error_after, *averaged = sync.mean_detached([error_after, *teacher_grads])
        teacher_grads = tuple(averaged)
    return RoundOutcome(
        error_before=error_before.detach(),
        error_after=error_after.detach(),
        flat_grad=flat_grad,
        new_phi={n: p.detach() for n, p in new_phi.items()},
        update=(new_flat_phi - flat_phi).detach(),
        memory=tuple(m.detach() for m in new_memory),
        teacher_grads=tuple(g.detach() for g in teacher_grads),
        student=stage_three,
        stage_one=StudentState(
            {n: p.detach() for n, p in stage_one.params.items()},
            stage_one.buffers,
            start.trainable,
            stage_one.optim.detached(),
        ),
        rule=rule,
        # a stage whose loss did not check on the device (another loss, or other batches) counts as finite
        inputs_finite=[
            error_before.new_ones((), dtype=torch.bool) if s.inputs_finite is None else s.inputs_finite
            for s in (stage_one, stage_three)
        ],
        train_weights=[b.sample_weight for b in (*first, *second) if b.sample_weight is not None],
        val_weights=[] if val.sample_weight is None else [val.sample_weight],
    )


def soft_threshold(values: Tensor, centre: Tensor, threshold: float) -> Tensor:
    """Each of ``values`` moved toward ``centre`` by ``threshold``, stopping at it: the proximal step of an L1
    prior ``threshold * |values - centre|`` (a value within ``threshold`` of its centre lands on it exactly)."""
    offset = values - centre
    return centre + torch.sign(offset) * (offset.abs() - threshold).clamp_min(0)


def sparse_parameter_mask(loss_fn: nn.Module, phi: dict[str, Tensor] | None = None) -> Tensor:
    """A flat boolean mask over ``phi`` (default: :func:`~dynaloss._unroll.dln_parameters` of ``loss_fn``), in its
    order: the coordinates a sparsity prior acts on.

    A module of ``loss_fn`` names its own in a ``sparse_parameters`` attribute (e.g. a
    :class:`~dynaloss.ClassAwareDLN`: its offsets and pair offsets, whose value where the labels are right is
    cross-entropy's 0, but not its robustness, whose right value under noise is far from it). Where no module
    names any, every coordinate is in the mask.
    """
    phi = dln_parameters(loss_fn) if phi is None else phi
    named: set[str] = set()
    for prefix, module in loss_fn.named_modules():
        for name in getattr(module, "sparse_parameters", ()):
            named.add(f"{prefix}.{name}" if prefix else name)
    if not named:
        return torch.ones(sum(p.numel() for p in phi.values()), dtype=torch.bool)
    return torch.cat([torch.full((p.numel(),), name in named, dtype=torch.bool) for name, p in phi.items()])


def _check_teacher_output(output: object, coordinates: int, model: TeacherModel) -> tuple[Tensor, Memory]:
    """``(direction, memory)`` from ``model``'s forward, or ``TypeError``/``ValueError`` naming what is wrong.

    A direction of another shape would broadcast: a scalar moves every DLN coordinate by the same amount.
    """
    name = f"the teacher model ({type(model).__name__})"
    if not isinstance(output, tuple) or len(output) != 2:
        raise TypeError(f"{name} must return (direction, memory), got {type(output).__name__}")
    direction, memory = output
    if not isinstance(direction, Tensor) or not direction.is_floating_point() or direction.shape != (coordinates,):
        is_tensor = isinstance(direction, Tensor)
        got = f"shape {tuple(direction.shape)} of {direction.dtype}" if is_tensor else type(direction).__name__
        raise ValueError(
            f"{name} must return a floating-point direction of shape ({coordinates},), one entry per DLN "
            f"coordinate, got {got}"
        )
    if not isinstance(memory, (tuple, list)) or not all(isinstance(m, Tensor) for m in memory):
        raise TypeError(f"{name} must return its memory as a tuple of tensors, got {type(memory).__name__}")
    return direction, tuple(memory)


def _all_finite(tensor: Tensor) -> Tensor:
    return tensor.all() if tensor.dtype == torch.bool else torch.isfinite(tensor).all()


def _unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    sizes = [p.numel() for p in like]
    return [chunk.view_as(p) for chunk, p in zip(flat.split(sizes), like)]
