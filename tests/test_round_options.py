"""The round's speed and memory options compute the same round: checkpointing exactly, bf16 within a bound."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_hypergradient import make_batches, make_dln, make_student
from test_teacher_round import make_lstm, run_compute_round
from torch import nn

import dynaloss
from dynaloss._batches import as_batch
from dynaloss._round import compute_round
from dynaloss._stage_loss import StageLoss
from dynaloss._unroll import default_val_loss
from dynaloss.teachers.lstm_cell import lstm_cell

BF16_TOLERANCE = 0.05  # relative L2 error of the bf16-autocast hypergradient; measured 0.004 here


def test_checkpointed_round_equals_the_plain_one() -> None:
    student, dln, model = make_student(batchnorm=True), make_dln(), make_lstm()
    first, second, (val,) = make_batches(3, 8, seed=1), make_batches(3, 8, seed=2), make_batches(1, 16, seed=3)
    plain = run_compute_round(student, dln, model, first, second, val)
    checkpointed = run_compute_round(student, dln, model, first, second, val, checkpoint=True)
    torch.testing.assert_close(checkpointed.flat_grad, plain.flat_grad, rtol=1e-12, atol=1e-15)
    for ours, theirs in zip(checkpointed.teacher_grads, plain.teacher_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
    for name, value in plain.student.buffers.items():  # BatchNorm's statistics were updated once per step
        torch.testing.assert_close(checkpointed.student.buffers[name], value, rtol=1e-12, atol=0)


def float32_setup() -> tuple[nn.Module, nn.Module, list, tuple]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    dln = dynaloss.PairwiseDLN(5)
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(25, 16, generator=generator), torch.randint(5, (25,), generator=generator)) for _ in range(4)
    ]
    val = (torch.randn(100, 16, generator=generator), torch.randint(5, (100,), generator=generator))
    return student, dln, batches, val


def bf16_hypergradient_error() -> float:
    student, dln, batches, val = float32_setup()
    cpu = torch.device("cpu")
    train = [as_batch(b, "train", cpu) for b in batches]
    grads = []
    for dtype in (None, torch.bfloat16):
        outcome = compute_round(
            student,
            dln,
            dynaloss.OptimizerTeacher("sgd"),
            None,
            train,
            train,
            as_batch(val, "val", cpu),
            student_lr=0.1,
            dln_lr=1e-3,
            val_loss=default_val_loss(dln),
            autocast_dtype=dtype,
        )
        grads.append(outcome.flat_grad)
    assert grads[0].norm() > 0
    return float((grads[1] - grads[0]).norm() / grads[0].norm())


def test_bf16_autocast_hypergradient_is_close_to_float32() -> None:
    assert bf16_hypergradient_error() < BF16_TOLERANCE


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"checkpoint": 1}, TypeError, "checkpoint must be a bool, got int"),
        ({"autocast_dtype": "bf16"}, TypeError, "autocast_dtype must be a torch.dtype or None, got str"),
        ({"autocast_dtype": torch.float64}, ValueError, "autocast_dtype must be one of"),
    ],
)
def test_bad_option_arguments_raise(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        dynaloss.Teacher(make_dln(), **kwargs)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_stage_loss_equals_the_dln_module(reduction: str) -> None:
    dln = dynaloss.PairwiseDLN(
        4, init="paper", hidden=5, depth=2, reduction=reduction, ignore_index=-1, fast=False
    ).double()
    logits = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, -1, 2, 1, -1, 3])
    batch = as_batch((torch.zeros(7, 1), target), "batch", torch.device("cpu"))
    params = dict(dln.named_parameters())
    stage = StageLoss(dln, params, [batch])
    ours, theirs = stage(logits, batch), dln(logits, target)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=0)
    for a, b in zip(
        torch.autograd.grad(ours, [logits, *params.values()]), torch.autograd.grad(theirs, [logits, *params.values()])
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert stage.inputs_finite is not None and bool(stage.inputs_finite)


def test_stage_loss_checks_targets_like_the_dln() -> None:
    dln = make_dln()
    batch = as_batch((torch.zeros(2, 1), torch.tensor([0, 5])), "batch", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"target holds class indices outside \[0, 3\)"):
        StageLoss(dln, dict(dln.named_parameters()), [batch])


def test_stage_loss_flags_non_finite_inputs_without_raising() -> None:
    dln = make_dln()
    batch = as_batch((torch.zeros(2, 1), torch.tensor([0, 2])), "batch", torch.device("cpu"))
    stage = StageLoss(dln, dict(dln.named_parameters()), [batch])
    stage(torch.tensor([[0.0, float("nan"), 1.0], [1.0, 2.0, 3.0]], dtype=torch.float64), batch)
    assert stage.inputs_finite is not None and not bool(stage.inputs_finite)


@pytest.mark.parametrize("with_memory_grads", [False, True])
def test_fused_lstm_cell_equals_nn_lstm_cell_and_its_gradients(with_memory_grads: bool) -> None:
    torch.manual_seed(0)
    cell = nn.LSTMCell(3, 6).double()
    x, h, c = (torch.randn(9, n, dtype=torch.float64, requires_grad=with_memory_grads) for n in (3, 6, 6))
    x.requires_grad_()
    ours, theirs = lstm_cell(x, h, c, cell), cell(x, (h, c))
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, rtol=1e-13, atol=1e-15)
    # both outputs feed the cotangent, so every branch of the hand-written backward is compared
    cotangent = [torch.randn_like(t) for t in theirs]
    inputs = [x, *([h, c] if with_memory_grads else []), *cell.parameters()]
    grads = torch.autograd.grad(ours, inputs, cotangent)
    expected = torch.autograd.grad(theirs, inputs, cotangent)
    for mine, reference in zip(grads, expected):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-14)


def test_fused_lstm_cell_passes_gradcheck_and_gradgradcheck() -> None:
    torch.manual_seed(1)
    cell = nn.LSTMCell(2, 4).double()
    x, h, c = (torch.randn(5, n, dtype=torch.float64, requires_grad=True) for n in (2, 4, 4))
    params = tuple(cell.parameters())

    def cell_of(*values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # lstm_cell reads only the cell's four tensors
        weights = SimpleNamespace(**dict(zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"], values[3:])))
        return lstm_cell(values[0], values[1], values[2], weights)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(cell_of, (x, h, c, *params))
    # a second derivative goes through the autograd formulation (create_graph), and must be right too
    assert torch.autograd.gradgradcheck(cell_of, (x, h, c, *params))


def test_a_module_that_wraps_a_dln_gets_its_stage_loss() -> None:
    # the stage-loss protocol: the PSPNet objective passes it on to its DLN, and computes what functional_call does
    from integrations.smp.objective import PSPNetDLNLoss

    objective = PSPNetDLNLoss(4, ignore_index=255, max_pixels=None, init="ce").double()
    g = torch.Generator().manual_seed(0)
    outputs = tuple(torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    target = torch.randint(4, (2, 3, 3), generator=g)
    target[0, 0] = 255
    batch = as_batch((torch.zeros(2, 1), target), "batch", torch.device("cpu"))
    params = {n: p.detach().clone().requires_grad_() for n, p in objective.named_parameters()}
    stage = StageLoss(objective, params, [batch])
    assert stage._staged is not None
    ours = stage(outputs, batch)
    theirs = torch.func.functional_call(objective, params, (outputs, target))
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=0)
    for a, b in zip(
        torch.autograd.grad(ours, list(params.values())), torch.autograd.grad(theirs, list(params.values()))
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert stage.inputs_finite is not None and bool(stage.inputs_finite)


def test_a_dln_subclass_with_its_own_forward_declines_the_stage_loss() -> None:
    class Doubled(dynaloss.PairwiseDLN):
        def forward(self, input, target, weight=None):  # type: ignore[no-untyped-def]
            return 2 * super().forward(input, target, weight)

    dln = Doubled(3, fast=False).double()
    batch = as_batch((torch.zeros(4, 1), torch.tensor([0, 1, 2, 1])), "batch", torch.device("cpu"))
    stage = StageLoss(dln, dict(dln.named_parameters()), [batch])
    assert stage._staged is None
    logits = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(stage(logits, batch), dln(logits, batch.targets))


def test_an_optimizer_teacher_in_lookahead_skips_stage_three_and_learns_the_same() -> None:
    """Nothing reads stage III there (no teacher parameters, no guard, the student keeps nothing): the round skips
    it, says so with a NaN val_error_after, and commits the very DLN update a round that runs it commits."""
    student = make_student()
    batches, (val,) = make_batches(3, 8, seed=1), make_batches(1, 16, seed=3)
    updates, afters = [], []
    for guard in (None, 1e9):  # a guard that never rejects makes the round run (and read) stage III
        dln = dynaloss.ClassAwareDLN(3).double()
        optimizer = torch.optim.SGD(student.parameters(), lr=0.3, momentum=0.9)
        teacher = dynaloss.Teacher(dln, optimizer=optimizer, steps=3, guard=guard)
        record = teacher.step(student, iter(batches), iter([val]))
        assert not record.skipped and not record.rejected
        updates.append(torch.cat([p.detach().flatten() for p in dln.parameters()]))
        afters.append(record.val_error_after)
    torch.testing.assert_close(updates[0], updates[1], rtol=0, atol=0)
    assert updates[0].abs().sum() > 0
    assert afters[0] != afters[0] and afters[1] == afters[1]  # NaN: not measured; measured with the guard
    with pytest.raises(ValueError, match="learnable teacher model learns from stage III"):
        compute_round(
            student,
            make_dln(),
            make_lstm(),
            None,
            [as_batch(b, "b", torch.device("cpu")) for b in batches],
            [],
            as_batch(val, "v", torch.device("cpu")),
            student_lr=0.1,
            dln_lr=1e-3,
            val_loss=default_val_loss(make_dln()),
            run_stage_three=False,
        )
