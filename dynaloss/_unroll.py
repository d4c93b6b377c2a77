"""The differentiable student unroll and the DLN's hypergradient, as pure functions on parameter dicts.

The student is only ever *called* (through :func:`torch.func.functional_call`): its parameters and buffers
are read, never written. Buffers are cloned so BatchNorm's in-place running-stat updates land in our
copies; frozen parameters (``requires_grad=False``) take part in the forward but not in the SGD step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.func import functional_call

from dynaloss._batches import Batch, as_batch
from dynaloss._checks import check_loss_value, check_not_compiled
from dynaloss._stage_loss import StageLoss
from dynaloss._update_rules import PlainSGD, SlotState, UpdateRule, optimizer_rule

__all__ = [
    "CrossEntropyValLoss",
    "StudentState",
    "check_val_loss_takes_weight",
    "default_val_loss",
    "dln_parameters",
    "grads_or_zeros",
    "hypergradient",
    "start_of_unroll",
    "student_state",
    "unroll",
    "validation_error",
]

Params = dict[str, Tensor]
ValLoss = Callable[..., Tensor]
"""``val_loss(outputs, targets)``, or ``val_loss(outputs, targets, sample_weight)`` for weighted validation batches
(the weights by position)."""
GradMean = Callable[[Sequence[Tensor]], list[Tensor]]


class StudentState:
    """A functional snapshot of a student: parameters, buffers, which parameters train, and optimizer state.

    Snapshots are never modified: :func:`unroll` and :func:`validation_error` clone the buffers before a
    forward can update them in place.
    """

    def __init__(
        self, params: Params, buffers: Params, trainable: Sequence[str], optim: SlotState | None = None
    ) -> None:
        self.params = params
        self.buffers = buffers
        self.trainable = tuple(trainable)
        # the optimizer's state for the trainable parameters (momentum buffers, moments, step counts)
        self.optim = SlotState({}, ()) if optim is None else optim
        # set by unroll: whether the DLN's inputs stayed finite, checked on the device (None: not checked)
        self.inputs_finite: Tensor | None = None

    def detached(self) -> StudentState:
        """The same values as new leaves (trainable ones requiring grad): the start of a new unroll."""
        params = {n: p.detach().requires_grad_(n in self.trainable) for n, p in self.params.items()}
        return StudentState(params, self.buffers, self.trainable, self.optim.detached())


def student_state(
    student: nn.Module, trainable: Sequence[str] | None = None, optim: SlotState | None = None
) -> StudentState:
    """Snapshot ``student`` without copying anything: its parameters and buffers are only read.

    Args:
        trainable: the parameters the unroll steps (default: those with ``requires_grad``); the others take
            part in the forward only.
        optim: the optimizer's state for ``trainable`` (default: none, plain SGD).
    """
    if trainable is None:
        trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the student has no parameter with requires_grad=True: there is nothing to unroll")
    chosen = set(trainable)
    params = {n: p.detach().requires_grad_(n in chosen) for n, p in student.named_parameters()}
    buffers = {n: b.detach() for n, b in student.named_buffers()}
    return StudentState(params, buffers, trainable, optim)


def dln_parameters(loss_fn: nn.Module) -> Params:
    """The DLN's learnable parameters as fresh leaves that require grad."""
    params = {n: p.detach().requires_grad_() for n, p in loss_fn.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"loss_fn ({type(loss_fn).__name__}) has no learnable parameter: there is nothing to teach")
    return params


class CrossEntropyValLoss:
    """Cross-entropy that ignores ``ignore_index``: the default validation error (a class, so it pickles).

    ``loss(outputs, targets)`` is ``F.cross_entropy``; ``loss(outputs, targets, sample_weight)``, for a weighted
    validation batch ``(x, y, w)``, the weighted mean ``sum(w * ce) / sum(w)`` over the counted elements.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index

    def __call__(self, outputs: Tensor, targets: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        if sample_weight is None:
            return F.cross_entropy(outputs, targets, ignore_index=self.ignore_index)
        per_sample = F.cross_entropy(outputs, targets, ignore_index=self.ignore_index, reduction="none")
        counted = sample_weight * (targets != self.ignore_index)
        return (per_sample * counted).sum() / counted.sum()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CrossEntropyValLoss) and other.ignore_index == self.ignore_index

    def __hash__(self) -> int:
        return hash((CrossEntropyValLoss, self.ignore_index))

    def __repr__(self) -> str:
        return f"CrossEntropyValLoss(ignore_index={self.ignore_index})"


def default_val_loss(loss_fn: nn.Module) -> ValLoss:
    """Cross-entropy that ignores what the DLN ignores: the validation error of classification."""
    return CrossEntropyValLoss(getattr(loss_fn, "ignore_index", -100))


def check_val_loss_takes_weight(val_loss: Callable[..., Tensor], name: str) -> None:
    """Raise ``TypeError`` unless ``val_loss`` can be called as ``val_loss(outputs, targets, sample_weight)``.

    A weighted validation batch ``(x, y, w)`` hands its weights to ``val_loss``; one that takes two arguments
    would drop them (or fail inside the round), so it is refused before the round starts.
    """
    try:
        inspect.signature(val_loss).bind(None, None, None)
    except ValueError:  # no signature to read (a builtin): let the call decide
        return
    except TypeError:
        raise TypeError(
            f"{name} yielded a weighted batch (inputs, targets, weight) but val_loss takes no weight: pass a "
            "val_loss(outputs, targets, weight) that uses it (the default does: a weighted mean), or yield "
            "(inputs, targets)"
        ) from None


def grads_or_zeros(output: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``d output / d input`` for each input, zeros for inputs that ``output`` does not depend on."""
    grads = torch.autograd.grad(output, list(inputs), allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads))


def unroll(
    student: nn.Module,
    state: StudentState,
    loss_fn: nn.Module,
    loss_params: Mapping[str, Tensor],
    batches: Sequence[Batch],
    *,
    rule: UpdateRule,
    create_graph: bool = True,
    checkpoint: bool = False,
    autocast_dtype: torch.dtype | None = None,
    grad_mean: GradMean | None = None,
) -> StudentState:
    """Take ``len(batches)`` optimizer steps of ``student`` with ``loss_fn`` (called with ``loss_params``) as the loss.

    ``theta_i = U(theta_{i-1}, d[w * L_phi(S(x), y)] / d theta_{i-1}, state_{i-1})``: the paper's Eq. 2 with
    ``rule``'s update ``U`` in place of plain SGD (:class:`dynaloss._update_rules.PlainSGD` is the paper's).

    Args:
        state: the starting point, optimizer state included; it is not modified (buffers are cloned before
            BatchNorm updates them).
        rule: the update rule (:mod:`dynaloss._update_rules`).
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
        loss checked that on the device (:class:`dynaloss._stage_loss.StageLoss`).
    """
    loss = StageLoss(loss_fn, loss_params, batches)
    trainable = state.trainable
    frozen = {n: p for n, p in state.params.items() if n not in trainable}
    params = [state.params[n] for n in trainable]
    buffer_names = list(state.buffers)
    buffers = [b.clone() for b in state.buffers.values()]
    optim = state.optim
    device_type = params[0].device.type
    for batch in batches:
        step = partial(
            _step,
            student=student,
            frozen=frozen,
            buffer_names=buffer_names,
            trainable=trainable,
            loss=loss,
            batch=batch,
            rule=rule,
            create_graph=create_graph,
            autocast_dtype=autocast_dtype,
            device_type=device_type,
            grad_mean=grad_mean,
            # a recomputed step must start from the buffer values the first computation saw, so a checkpointed
            # step updates copies (BatchNorm writes its running statistics in place)
            copy_buffers=checkpoint,
        )
        if checkpoint and create_graph:
            params, buffers, optim = torch.utils.checkpoint.checkpoint(
                step, params, buffers, optim, use_reentrant=False
            )
        else:
            params, buffers, optim = step(params, buffers, optim)
    end = StudentState({**frozen, **dict(zip(trainable, params))}, dict(zip(buffer_names, buffers)), trainable, optim)
    end.params = {n: end.params[n] for n in state.params}  # the student's own parameter order
    end.inputs_finite = loss.inputs_finite
    return end


def _step(
    current: list[Tensor],
    buffers: list[Tensor],
    optim: SlotState,
    *,
    student: nn.Module,
    frozen: Params,
    buffer_names: Sequence[str],
    trainable: Sequence[str],
    loss: StageLoss,
    batch: Batch,
    rule: UpdateRule,
    create_graph: bool,
    autocast_dtype: torch.dtype | None,
    device_type: str,
    grad_mean: GradMean | None,
    copy_buffers: bool,
) -> tuple[list[Tensor], list[Tensor], SlotState]:
    """One optimizer step: trainable parameters, buffers and optimizer state in, the same after the step out."""
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
    # a parameter this batch does not reach keeps its value (and its optimizer state), as in torch.optim
    stepped, optim = rule.apply(current, grads, optim)
    if not create_graph:
        stepped = [p.detach().requires_grad_() for p in stepped]
        optim = optim.detached()
    return stepped, buffers, optim


def validation_error(student: nn.Module, state: StudentState, batch: Batch, val_loss: ValLoss) -> Tensor:
    """``val_loss(S(x_val), y_val)`` (``val_loss(S(x_val), y_val, w_val)`` for a weighted batch) at ``state``;
    buffer updates of this forward are thrown away.

    Raises:
        TypeError, ValueError: ``val_loss`` returned something other than a differentiable 0-d tensor.
    """
    buffers = {n: b.clone() for n, b in state.buffers.items()}
    outputs = functional_call(student, (state.params, buffers), (batch.inputs,))
    extra = () if batch.sample_weight is None else (batch.sample_weight,)
    return check_loss_value(val_loss(outputs, batch.targets, *extra), "val_loss", outputs)


def hypergradient(
    student: nn.Module,
    loss_fn: nn.Module,
    train_batches: Sequence[object],
    val_batch: object,
    *,
    student_lr: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    val_loss: ValLoss | None = None,
) -> dict[str, Tensor]:
    """Gradient of the validation error after unrolled student steps with respect to each DLN parameter.

    Runs ``len(train_batches)`` differentiable steps of ``student`` with ``loss_fn`` as the loss, then
    ``val_loss`` (default: cross-entropy) on ``val_batch``, and differentiates through the steps. The
    student, its optimizer and the DLN are left untouched.

    Args:
        student: any module whose forward is a function of its parameters, buffers and inputs.
        loss_fn: the DLN (any module whose learnable parameters define the loss).
        train_batches: ``(x, y)`` or ``(x, y, w)`` batches, one per step.
        val_batch: ``(x, y)``, or ``(x, y, w)``, whose weights go to ``val_loss`` as its third argument (the
            default's: a weighted mean).
        student_lr: the student's learning rate, for plain SGD steps (give this or ``optimizer``).
        optimizer: the student's ``torch.optim`` SGD, Adam or AdamW: the steps are its steps, from its
            current state and param groups (give this or ``student_lr``).
        val_loss: the validation error (default: cross-entropy that ignores what ``loss_fn`` ignores).

    Returns:
        ``{name: gradient}`` for every learnable parameter of ``loss_fn``.
    """
    if not isinstance(student, nn.Module) or not isinstance(loss_fn, nn.Module):
        raise TypeError("student and loss_fn must be torch.nn.Module instances")
    check_not_compiled(student, "student")
    check_not_compiled(loss_fn, "loss_fn")
    if (student_lr is None) == (optimizer is None):
        raise ValueError("pass exactly one of student_lr (plain SGD steps) and optimizer (its own update rule)")
    if not train_batches:
        raise ValueError("train_batches is empty: the unroll needs at least one step")
    device = next(student.parameters()).device
    train = [as_batch(b, "train_batches", device) for b in train_batches]
    val = as_batch(val_batch, "val_batch", device)
    val_loss = val_loss or default_val_loss(loss_fn)
    if val.sample_weight is not None:
        check_val_loss_takes_weight(val_loss, "val_batch")
    phi = dln_parameters(loss_fn)
    start, rule = start_of_unroll(student, optimizer, student_lr)
    end = unroll(student, start, loss_fn, phi, train, rule=rule)
    error = validation_error(student, end, val, val_loss)
    return dict(zip(phi, grads_or_zeros(error, list(phi.values()))))


def start_of_unroll(
    student: nn.Module, optimizer: torch.optim.Optimizer | None, lr: float | None
) -> tuple[StudentState, UpdateRule]:
    """The student's snapshot and the rule its steps follow: ``optimizer``'s, or plain SGD at ``lr``."""
    if optimizer is None:
        if lr is None:
            raise ValueError("the unroll needs the student's learning rate (lr) when there is no optimizer")
        return student_state(student), PlainSGD(lr)
    rule, trainable = optimizer_rule(optimizer, student)
    return student_state(student, trainable, rule.initial()), rule
