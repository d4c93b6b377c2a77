"""The differentiable student unroll and the DLN's hypergradient, as pure functions on parameter dicts.

The student is only ever *called* (through :func:`torch.func.functional_call`): its parameters and buffers
are read, never written. Buffers are cloned so BatchNorm's in-place running-stat updates land in our
copies; frozen parameters (``requires_grad=False``) take part in the forward but not in the SGD step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.func import functional_call

from dynaloss.batches import Batch, as_batch
from dynaloss.stage_loss import StageLoss

__all__ = [
    "StudentState",
    "default_val_loss",
    "dln_parameters",
    "grads_or_zeros",
    "hypergradient",
    "student_state",
    "unroll_sgd",
    "validation_error",
]

Params = dict[str, Tensor]
ValLoss = Callable[[Tensor, Tensor], Tensor]
GradMean = Callable[[Sequence[Tensor]], list[Tensor]]


class StudentState:
    """A functional snapshot of a student: parameters, buffers, and which parameters train.

    Snapshots are never modified: :func:`unroll_sgd` and :func:`validation_error` clone the buffers before a
    forward can update them in place.
    """

    def __init__(self, params: Params, buffers: Params, trainable: Sequence[str]) -> None:
        self.params = params
        self.buffers = buffers
        self.trainable = tuple(trainable)
        # set by unroll_sgd: whether the DLN's inputs stayed finite, checked on the device (None: not checked)
        self.inputs_finite: Tensor | None = None

    def detached(self) -> StudentState:
        """The same values as new leaves (trainable ones requiring grad): the start of a new unroll."""
        params = {n: p.detach().requires_grad_(n in self.trainable) for n, p in self.params.items()}
        return StudentState(params, self.buffers, self.trainable)


def student_state(student: nn.Module) -> StudentState:
    """Snapshot ``student`` without copying anything: its parameters and buffers are only read."""
    params = {n: p.detach().requires_grad_(p.requires_grad) for n, p in student.named_parameters()}
    buffers = {n: b.detach() for n, b in student.named_buffers()}
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the student has no parameter with requires_grad=True: there is nothing to unroll")
    return StudentState(params, buffers, trainable)


def dln_parameters(loss_fn: nn.Module) -> Params:
    """The DLN's learnable parameters as fresh leaves that require grad."""
    params = {n: p.detach().requires_grad_() for n, p in loss_fn.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"loss_fn ({type(loss_fn).__name__}) has no learnable parameter: there is nothing to teach")
    return params


def default_val_loss(loss_fn: nn.Module) -> ValLoss:
    """Cross-entropy that ignores what the DLN ignores: the validation error of classification."""
    ignore_index = getattr(loss_fn, "ignore_index", -100)
    return lambda outputs, targets: F.cross_entropy(outputs, targets, ignore_index=ignore_index)


def grads_or_zeros(output: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``d output / d input`` for each input, zeros for inputs that ``output`` does not depend on."""
    grads = torch.autograd.grad(output, list(inputs), allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads))


def unroll_sgd(
    student: nn.Module,
    state: StudentState,
    loss_fn: nn.Module,
    loss_params: Mapping[str, Tensor],
    batches: Sequence[Batch],
    *,
    lr: float,
    create_graph: bool = True,
    checkpoint: bool = False,
    autocast_dtype: torch.dtype | None = None,
    grad_mean: GradMean | None = None,
) -> StudentState:
    """Take ``len(batches)`` SGD steps of ``student`` with ``loss_fn`` (called with ``loss_params``) as the loss.

    ``theta_i = theta_{i-1} - lr * d[w * L_phi(S(x), y)] / d theta_{i-1}`` (the paper's Eq. 2).

    Args:
        state: the starting point; it is not modified (buffers are cloned before BatchNorm updates them).
        create_graph: keep the graph, so the result is a differentiable function of ``loss_params`` and
            the start (default: ``True``); ``False`` takes plain steps.
        checkpoint: keep only each step's inputs and recompute the step when the result is differentiated
            (``torch.utils.checkpoint``, non-reentrant): memory no longer grows with the activations of
            every step, for about one more forward and backward per step (default: ``False``).
        autocast_dtype: run the student's forward and the loss under ``torch.autocast`` with this dtype
            (e.g. ``torch.bfloat16``); parameters and their updates stay in their own dtype (default: off).
        grad_mean: replaces each step's gradients by their mean over data-parallel ranks, differentiably
            (:meth:`dynaloss.distributed.RankMean.mean`); ``None`` for a single process (default).

    Returns:
        The state after the steps; its ``inputs_finite`` says whether every DLN input was finite, where the
        loss checked that on the device (:class:`dynaloss.stage_loss.StageLoss`).
    """
    loss = StageLoss(loss_fn, loss_params, batches)
    trainable = state.trainable
    frozen = {n: p for n, p in state.params.items() if n not in trainable}
    params = [state.params[n] for n in trainable]
    buffer_names = list(state.buffers)
    buffers = [b.clone() for b in state.buffers.values()]
    device_type = params[0].device.type
    for batch in batches:
        step = partial(
            _sgd_step,
            student=student,
            frozen=frozen,
            buffer_names=buffer_names,
            trainable=trainable,
            loss=loss,
            batch=batch,
            lr=lr,
            create_graph=create_graph,
            autocast_dtype=autocast_dtype,
            device_type=device_type,
            grad_mean=grad_mean,
            # a recomputed step must start from the buffer values the first computation saw, so a checkpointed
            # step updates copies (BatchNorm writes its running statistics in place)
            copy_buffers=checkpoint,
        )
        if checkpoint and create_graph:
            outputs = torch.utils.checkpoint.checkpoint(step, *params, *buffers, use_reentrant=False)
        else:
            outputs = step(*params, *buffers)
        params, buffers = list(outputs[: len(trainable)]), list(outputs[len(trainable) :])
    end = StudentState({**frozen, **dict(zip(trainable, params))}, dict(zip(buffer_names, buffers)), trainable)
    end.params = {n: end.params[n] for n in state.params}  # the student's own parameter order
    end.inputs_finite = loss.inputs_finite
    return end


def _sgd_step(
    *values: Tensor,
    student: nn.Module,
    frozen: Params,
    buffer_names: Sequence[str],
    trainable: Sequence[str],
    loss: StageLoss,
    batch: Batch,
    lr: float,
    create_graph: bool,
    autocast_dtype: torch.dtype | None,
    device_type: str,
    grad_mean: GradMean | None,
    copy_buffers: bool,
) -> tuple[Tensor, ...]:
    """One SGD step: ``(*trainable parameters, *buffers)`` in, the same after the step out."""
    current = list(values[: len(trainable)])
    buffers = list(values[len(trainable) :])
    if copy_buffers:
        buffers = [b.clone() for b in buffers]
    params = {**frozen, **dict(zip(trainable, current))}
    precision = nullcontext() if autocast_dtype is None else torch.autocast(device_type, dtype=autocast_dtype)
    with precision:
        outputs = functional_call(student, (params, dict(zip(buffer_names, buffers))), (batch.inputs,))
        value = loss(outputs, batch)
    grads = torch.autograd.grad(value, current, create_graph=create_graph, allow_unused=True)
    if grad_mean is not None:
        # every rank must reduce the same tensors, whether or not its shard reached a parameter
        grads = tuple(grad_mean([torch.zeros_like(p) if g is None else g for p, g in zip(current, grads)]))
    # a parameter this batch does not reach keeps its value
    reached = [i for i, g in enumerate(grads) if g is not None]
    stepped = list(current)
    if reached:
        # one fused (and, with create_graph, differentiable) update instead of two ops per parameter
        new = torch._foreach_add([current[i] for i in reached], [grads[i] for i in reached], alpha=-lr)
        for i, tensor in zip(reached, new):
            stepped[i] = tensor if create_graph else tensor.detach().requires_grad_()
    return (*stepped, *buffers)


def validation_error(student: nn.Module, state: StudentState, batch: Batch, val_loss: ValLoss) -> Tensor:
    """``val_loss(S(x_val), y_val)`` at ``state``; buffer updates of this forward are thrown away."""
    buffers = {n: b.clone() for n, b in state.buffers.items()}
    return val_loss(functional_call(student, (state.params, buffers), (batch.inputs,)), batch.targets)


def hypergradient(
    student: nn.Module,
    loss_fn: nn.Module,
    train_batches: Sequence[object],
    val_batch: object,
    *,
    lr: float,
    val_loss: ValLoss | None = None,
) -> dict[str, Tensor]:
    """Gradient of the validation error after unrolled SGD steps with respect to each DLN parameter.

    Runs ``len(train_batches)`` differentiable SGD steps of ``student`` with ``loss_fn`` as the loss, then
    ``val_loss`` (default: cross-entropy) on ``val_batch``, and differentiates through the steps. The
    student and the DLN are left untouched.

    Args:
        student: any module whose forward is a function of its parameters, buffers and inputs.
        loss_fn: the DLN (any module whose learnable parameters define the loss).
        train_batches: ``(x, y)`` or ``(x, y, w)`` batches, one per step.
        val_batch: ``(x, y)``.
        lr: the student's SGD learning rate.

    Returns:
        ``{name: gradient}`` for every learnable parameter of ``loss_fn``.
    """
    if not isinstance(student, nn.Module) or not isinstance(loss_fn, nn.Module):
        raise TypeError("student and loss_fn must be torch.nn.Module instances")
    if not train_batches:
        raise ValueError("train_batches is empty: the unroll needs at least one step")
    device = next(student.parameters()).device
    train = [as_batch(b, "train_batches", device) for b in train_batches]
    val = as_batch(val_batch, "val_batch", device)
    phi = dln_parameters(loss_fn)
    end = unroll_sgd(student, student_state(student), loss_fn, phi, train, lr=lr)
    error = validation_error(student, end, val, val_loss or default_val_loss(loss_fn))
    return dict(zip(phi, grads_or_zeros(error, list(phi.values()))))
