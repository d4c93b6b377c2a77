"""The DLN's hypergradient equals finite differences and an independent hand-written unroll (float64)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynaloss

LR = 0.3
CLASSES = 3


def make_student(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 6)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(6))
    layers += [nn.Tanh(), nn.Linear(6, CLASSES)]
    return nn.Sequential(*layers).double()


def make_dln(seed: int = 1, monotone: bool = True) -> dynaloss.PairwiseDLN:
    torch.manual_seed(seed)
    # the exact MLP: the unroll is checked against steps taken through the module, to 1e-12
    return dynaloss.PairwiseDLN(CLASSES, init="paper", hidden=6, depth=2, monotone=monotone, fast=False).double()


def make_batches(count: int, size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, 4, generator=generator, dtype=torch.float64),
            torch.randint(CLASSES, (size,), generator=generator),
        )
        for _ in range(count)
    ]


def val_error_after_plain_sgd(student: nn.Module, dln: nn.Module, batches: list, val: tuple, lr: float) -> float:
    """The quantity being differentiated, computed with ordinary modules and torch.optim.SGD (no unroll code)."""
    student = copy.deepcopy(student)
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    for x, y in batches:
        optimizer.zero_grad()
        dln(student(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        return float(F.cross_entropy(student(val[0]), val[1]))


def finite_difference_gradient(student: nn.Module, dln: nn.Module, batches: list, val: tuple, eps: float = 1e-6):
    grads = []
    for param in dln.parameters():
        flat = param.data.view(-1)
        for i in range(flat.numel()):
            original = flat[i].item()
            flat[i] = original + eps
            plus = val_error_after_plain_sgd(student, dln, batches, val, LR)
            flat[i] = original - eps
            minus = val_error_after_plain_sgd(student, dln, batches, val, LR)
            flat[i] = original
            grads.append((plus - minus) / (2 * eps))
    return torch.tensor(grads, dtype=torch.float64)


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


@pytest.mark.parametrize("steps", [1, 3])
def test_hypergradient_matches_finite_differences(steps: int) -> None:
    student, dln = make_student(), make_dln()
    batches, (val,) = make_batches(steps, 8, seed=2), make_batches(1, 16, seed=3)
    analytic = flat(dynaloss.hypergradient(student, dln, batches, val, student_lr=LR))
    numeric = finite_difference_gradient(student, dln, batches, val)
    assert analytic.norm() > 1e-4  # the check is not vacuous
    assert (analytic - numeric).norm() / numeric.norm() < 1e-6


def test_hypergradient_matches_finite_differences_through_batchnorm() -> None:
    student, dln = make_student(batchnorm=True), make_dln()
    batches, (val,) = make_batches(2, 8, seed=4), make_batches(1, 16, seed=5)
    analytic = flat(dynaloss.hypergradient(student, dln, batches, val, student_lr=LR))
    numeric = finite_difference_gradient(student, dln, batches, val)
    assert (analytic - numeric).norm() / numeric.norm() < 1e-6


# ------------------------------------------------------------------------------------------ reference unroll
def reference_dln(
    weights: list[torch.Tensor], logits: torch.Tensor, target: torch.Tensor, target_range: float | None
) -> torch.Tensor:
    """The 1-vs-1 DLN written out row by row from its definition; monotone (and range-pinned) with a range."""
    if target_range is not None:  # true-class column <= 0, wrong-class column >= 0, bias free, later layers >= 0
        signs = torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=weights[0].dtype)
        free = torch.tensor([False, False, True, True])
        weights = [torch.where(free, weights[0], signs * weights[0].abs()), *(w.abs() for w in weights[1:])]

    def mlp(row: torch.Tensor) -> torch.Tensor:
        for w in weights[:-1]:
            row = F.leaky_relu(w @ row, 0.01)
        return (weights[-1] @ row).squeeze()

    probs = torch.sigmoid(logits)
    losses = []
    for b in range(logits.shape[0]):
        rows = []
        for j in range(logits.shape[1]):
            if j == int(target[b]):
                continue
            rows.append(
                mlp(torch.stack([probs[b, target[b]], probs[b, j], probs.new_tensor(1.0), probs.new_tensor(0.0)]))
            )
        losses.append(torch.stack(rows).mean())
    loss = torch.stack(losses).mean()
    if target_range is None:
        return loss
    # the range is read 1e-3 inside the corners of the unit square (dynaloss.functional.loss_range)
    worst, best = (
        mlp(torch.tensor(corner, dtype=probs.dtype)) for corner in ([1e-3, 0.999, 1.0, 0.0], [0.999, 1e-3, 1.0, 0.0])
    )
    return loss * target_range / (worst - best)


def reference_student(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = params
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def reference_unroll(params, weights, batches, lr, target_range):
    for x, y in batches:
        loss = reference_dln(weights, reference_student(params, x), y, target_range)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        params = [p - lr * g for p, g in zip(params, grads)]
    return params


def reference_hypergradient(student, dln, batches, val, lr):
    params = [p.detach().clone().requires_grad_() for p in student.parameters()]
    weights = [w.detach().clone().requires_grad_() for w in dln.parameters()]
    end = reference_unroll(params, weights, batches, lr, dln.target_range)
    error = F.cross_entropy(reference_student(end, val[0]), val[1])
    return torch.cat([g.flatten() for g in torch.autograd.grad(error, weights)])


@pytest.mark.parametrize("monotone", [True, False])
def test_hypergradient_matches_reference_unroll(monotone: bool) -> None:
    student, dln = make_student(seed=7), make_dln(seed=8, monotone=monotone)
    batches, (val,) = make_batches(4, 6, seed=9), make_batches(1, 10, seed=10)
    ours = flat(dynaloss.hypergradient(student, dln, batches, val, student_lr=LR))
    reference = reference_hypergradient(student, dln, batches, val, LR)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-13)


def test_sample_weights_scale_the_step_like_the_learning_rate() -> None:
    student, dln = make_student(), make_dln()
    batches, (val,) = make_batches(2, 8, seed=11), make_batches(1, 16, seed=12)
    weighted = [(x, y, torch.full((x.shape[0],), 2.0, dtype=torch.float64)) for x, y in batches]
    with_weights = flat(dynaloss.hypergradient(student, dln, weighted, val, student_lr=LR))
    with_lr = flat(dynaloss.hypergradient(student, dln, batches, val, student_lr=2 * LR))
    torch.testing.assert_close(with_weights, with_lr, rtol=1e-10, atol=1e-13)


def test_hypergradient_leaves_student_and_dln_untouched() -> None:
    student, dln = make_student(batchnorm=True), make_dln()
    before_student, before_dln = copy.deepcopy(student.state_dict()), copy.deepcopy(dln.state_dict())
    dynaloss.hypergradient(student, dln, make_batches(3, 8, seed=13), make_batches(1, 8, seed=14)[0], student_lr=LR)
    for key, value in student.state_dict().items():
        assert torch.equal(value, before_student[key]), key
    for key, value in dln.state_dict().items():
        assert torch.equal(value, before_dln[key]) if torch.is_tensor(value) else value == before_dln[key], key
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is None for p in dln.parameters())


def test_frozen_parameters_are_used_but_not_stepped() -> None:
    student, dln = make_student(), make_dln()
    student[0].weight.requires_grad_(False)
    batches, (val,) = make_batches(2, 8, seed=15), make_batches(1, 16, seed=16)
    analytic = flat(dynaloss.hypergradient(student, dln, batches, val, student_lr=LR))
    numeric = finite_difference_gradient(student, dln, batches, val)  # torch.optim.SGD skips frozen params too
    assert (analytic - numeric).norm() / numeric.norm() < 1e-6
