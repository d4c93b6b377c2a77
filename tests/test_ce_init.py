"""PairwiseDLN(features='softmax', init='ce'): softmax cross-entropy, in values and logit gradients, teachable."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from test_hypergradient import CLASSES, LR, finite_difference_gradient, flat, make_batches, make_student

import dynaloss
from dynaloss import PairwiseDLN
from dynaloss import functional as DF
from dynaloss._stage_loss import StageLoss
from dynaloss.harness.plot import dln_weights
from dynaloss.settings import DEFAULT_DLN, FEATURES

# The bounds the docstring states: |error| <= RTOL * |cross-entropy| + ATOL, for values and gradient norms;
# ATOL is float rounding (float32 resolves a gradient entry p_j - [j = y] to 6e-8 near 1)
RTOL, ATOL = 1e-5, 1e-10
ATOL_FLOAT32 = 1e-6


def ce_dln(num_classes: int, **kwargs: object) -> PairwiseDLN:
    return PairwiseDLN(num_classes, features="softmax", init="ce", **kwargs)  # type: ignore[arg-type]


def logit_domain(num_classes: int, count: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every scale up to +-30: mild, saturated, and nearly perfect predictions."""
    g = torch.Generator().manual_seed(seed)
    scale = 10 ** (torch.rand(count, 1, generator=g, dtype=torch.float64) * 3 - 1.5)  # 0.03 .. 30
    scaled = torch.randn(count, num_classes, generator=g, dtype=torch.float64) * scale
    uniform = torch.rand(count, num_classes, generator=g, dtype=torch.float64) * 60 - 30
    target = torch.randint(num_classes, (3 * count,), generator=g)
    confident = torch.randn(count, num_classes, generator=g, dtype=torch.float64)
    confident[torch.arange(count), target[2 * count :]] += torch.rand(count, generator=g, dtype=torch.float64) * 30
    return torch.cat([scaled, uniform, confident]), target


def moderate_logits(num_classes: int, count: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a student in training: every sample's cross-entropy far under the cap."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, num_classes, generator=g, dtype=torch.float64) * 3, torch.randint(
        num_classes, (count,), generator=g
    )


def value_and_grad(loss_fn, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses and each sample's logit gradient (a sample's loss depends on its own logits only)."""
    logits = logits.clone().requires_grad_()
    value = loss_fn(logits, target)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    return value.detach(), grad


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction="none")


# ------------------------------------------------------------------------------------------ it is CE
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_values_and_logit_gradients_are_cross_entropys(num_classes, dtype):
    logits, target = logit_domain(num_classes)
    logits = logits.to(dtype)
    value, grad = value_and_grad(ce_dln(num_classes, reduction="none").to(dtype), logits, target)
    ce_value, ce_grad = value_and_grad(cross_entropy, logits, target)
    covered = ce_value <= DF.LOG_PROB_SPAN
    assert covered.float().mean() > 0.7 and (~covered).any()  # both sides of the cap are exercised
    atol = ATOL if dtype == torch.float64 else ATOL_FLOAT32
    value_error = (value - ce_value).abs()[covered]
    assert (value_error <= RTOL * ce_value[covered] + atol).all(), float(value_error.max())
    grad_error = (grad - ce_grad).norm(dim=1)[covered]
    assert (grad_error <= RTOL * ce_grad.norm(dim=1)[covered] + atol).all(), float(grad_error.max())


# The fast path rounds differently from autograd through log_softmax: its true-class gradient is
# expm1(log p_y), float32 CE's is p_y - 1, which near p_y = 1 - 1e-4 is itself 1e-3 off the float64 value.
@pytest.mark.parametrize(("fast", "bound"), [(False, 1e-5), (True, 3e-4)])
def test_typical_domain_relative_gradient_error_is_far_under_one_percent(fast, bound):
    # what the teacher's student sees: p_y in [1e-4, 1 - 1e-4], float32, 1e-2 was the target
    logits, target = logit_domain(10)
    logits = logits.float()
    value, grad = value_and_grad(ce_dln(10, reduction="none", fast=fast), logits, target)
    ce_value, ce_grad = value_and_grad(cross_entropy, logits, target)
    true_prob = torch.exp(-ce_value)
    typical = (true_prob >= 1e-4) & (true_prob <= 1 - 1e-4)
    assert typical.sum() > 500
    relative = (grad - ce_grad).norm(dim=1) / ce_grad.norm(dim=1)
    assert float(relative[typical].max()) < bound
    assert float(((value - ce_value).abs() / ce_value)[typical].max()) < 1e-5


def test_beyond_the_cap_the_loss_is_the_cap_and_its_gradient_zero():
    logits = torch.tensor([[-20.0, 20.0, 0.0], [0.0, 10.0, -5.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 0])
    value = ce_dln(3, reduction="none").double()(logits, target)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    assert float(F.cross_entropy(logits[:1].detach(), target[:1])) > DF.LOG_PROB_SPAN
    assert float(value[0].detach()) == pytest.approx(DF.LOG_PROB_SPAN, rel=1e-6)
    assert grad[0].abs().max() < 1e-9
    assert grad[1].abs().max() > 0.1  # 10 nats: inside


def test_batch_mean_and_class_weights_are_cross_entropys():
    logits, target = moderate_logits(5, seed=3)
    class_weight = torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) + 0.5
    for kwargs in ({}, {"weight": class_weight}):
        dln = ce_dln(5, **kwargs).double()
        expected = F.cross_entropy(logits, target, **kwargs)
        torch.testing.assert_close(dln(logits, target), expected, rtol=RTOL, atol=ATOL)


# -------------------------------------------------------------------------------------- per-pixel path
def test_per_pixel_with_ignore_index_is_cross_entropys():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64) * 3
    target = torch.randint(4, (2, 3, 5), generator=g)
    target[0, 1] = 255
    target[1, :, :2] = 255
    dln = ce_dln(4, ignore_index=255).double()
    torch.testing.assert_close(
        dln(logits, target), F.cross_entropy(logits, target, ignore_index=255), rtol=RTOL, atol=ATOL
    )
    per_pixel = ce_dln(4, ignore_index=255, reduction="none").double()(logits, target)
    expected = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    torch.testing.assert_close(per_pixel, expected, rtol=RTOL, atol=ATOL)


def test_max_pixels_is_cross_entropy_of_the_picked_pixels_rescaled():
    # sum over images of n_valid / n_picked * the picked pixels' CE; the gradient is CE's on them, rescaled
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).requires_grad_()
    target = torch.randint(3, (2, 4, 4), generator=g)
    target[0, 0] = -100
    torch.manual_seed(7)
    loss = ce_dln(3, reduction="sum", max_pixels=3).double()(logits, target)
    (grad,) = torch.autograd.grad(loss, logits)
    picked = grad.abs().sum(1) > 0
    assert picked.sum((1, 2)).tolist() == [3, 3]
    scale = (target != -100).sum((1, 2)).double() / 3  # n_valid / n_picked per image
    ce_map = F.cross_entropy(logits, target, reduction="none")
    (ce_grad,) = torch.autograd.grad((ce_map * picked * scale[:, None, None]).sum(), logits)
    torch.testing.assert_close(loss, (ce_map * picked * scale[:, None, None]).sum(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(grad, ce_grad, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------- a teachable DLN
def test_stage_loss_and_state_dict_weights_compute_the_same_loss():
    dln = ce_dln(4, fast=False).double()
    logits, target = moderate_logits(4, seed=8)
    batch = dynaloss._batches.Batch(torch.zeros(len(target), 1), target)
    stage = StageLoss(dln, dict(dln.named_parameters()), [batch])
    torch.testing.assert_close(stage(logits, batch), dln(logits, target), rtol=0, atol=0)
    # plot.dln_weights re-derives the constrained, pinned matrices from a state dict: the same convention
    for ours, saved in zip(dln.mlp_weights(), dln_weights(dln.state_dict())):
        torch.testing.assert_close(ours.detach(), saved, rtol=0, atol=0)


def test_teacher_moves_change_the_loss_but_never_its_pinned_range():
    dln = ce_dln(5).double()
    logits, target = moderate_logits(5, seed=9)
    before = dln(logits, target)
    with torch.no_grad():
        for matrix in dln.layers:
            matrix.add_(torch.randn(matrix.shape, dtype=matrix.dtype, generator=torch.Generator().manual_seed(1)) * 0.1)
    assert not torch.allclose(dln(logits, target), before)
    assert float(DF.loss_range(dln.mlp_weights()).detach()) == pytest.approx(dln.target_range, rel=1e-9)
    # the range is read between the features' values at 1e-3 and 1 - 1e-3, on which CE is linear
    assert dln.target_range == pytest.approx(DF.LOG_PROB_SPAN * (1 - 2e-3), rel=1e-6)


def test_spare_units_reach_the_validation_gradient_at_full_size():
    # they add nothing to the loss, yet the hypergradient of their last-layer entries is of order one
    student = make_student()
    dln = PairwiseDLN(CLASSES, init="ce", hidden=6, depth=2).double()
    batches, (val,) = make_batches(2, 8, seed=2), make_batches(1, 16, seed=3)
    grads = dynaloss.hypergradient(student, dln, batches, val, student_lr=LR)
    last = grads[f"layers.{len(dln.layers) - 1}"][0]
    assert (last[1:].abs() > 1e-2 * last[0].abs()).sum() >= 3


@pytest.mark.parametrize("seed", range(5))
def test_monotone_softmax_dln_never_rewards_a_wrong_prediction_whatever_its_parameters(seed):
    # Raising z_y lowers the cross-entropy and every pair probability sigmoid(z_j - z_y); raising a wrong z_j
    # raises both. (With p_j as the wrong-class feature, raising z_k would lower the other p_j, and random
    # monotone DLNs push a third of the wrong logits up.)
    torch.manual_seed(seed)
    dln = PairwiseDLN(5, init="paper", features="softmax", hidden=8, depth=3).double()
    with torch.no_grad():
        for matrix in dln.layers:
            matrix.mul_(10 ** (seed - 2))  # parameters of any size
    logits, target = logit_domain(5, count=30, seed=seed)
    _, grad = value_and_grad(dln, logits, target)
    true_mask = F.one_hot(target, 5).bool()
    assert (grad[true_mask] <= 0).all() and (grad[~true_mask] >= 0).all()


def test_hypergradient_matches_finite_differences():
    # a CE-started DLN as a teacher would have moved it (so no entry sits at |w|'s kink, where central
    # differences of width 2e-6 cannot see the slope of an entry of size 1e-12)
    student = make_student()
    dln = PairwiseDLN(CLASSES, init="ce", hidden=6, depth=2).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        for matrix in dln.layers:
            matrix.add_(torch.randn(matrix.shape, generator=g, dtype=torch.float64) * 0.05)
    batches, (val,) = make_batches(3, 8, seed=2), make_batches(1, 16, seed=3)
    analytic = flat(dynaloss.hypergradient(student, dln, batches, val, student_lr=LR))
    numeric = finite_difference_gradient(student, dln, batches, val)
    assert analytic.norm() > 1e-4  # the check is not vacuous
    assert (analytic - numeric).norm() / numeric.norm() < 1e-6


def test_the_ce_start_has_no_kink_in_its_range() -> None:
    """The pinned range reads the loss inside the corners, where no unit of the CE start sits at its kink.

    At the corners themselves a unit's pre-activation is exactly 0, so the range (and every pinned loss) had
    one-sided derivatives in the parameters that differed (47.97 and 47.81 here, autograd 47.89). Along
    directions that leave the entries built at +-1e-12 alone (|w| has its own kink a step of 1e-12 away), the
    two one-sided differences and autograd now agree.
    """
    dln = PairwiseDLN(10, init="ce", fast=False).double()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=generator, dtype=torch.float64) * 2
    target = torch.randint(10, (64,), generator=generator)
    start = [m.detach().clone() for m in dln.layers]
    directions = [torch.randn(m.shape, generator=generator, dtype=torch.float64) * (m.abs() > 1e-9) for m in start]

    def loss(t: torch.Tensor) -> torch.Tensor:
        return dln.loss_with(dln.mlp_weights([m + t * d for m, d in zip(start, directions)]), logits, target)

    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(loss(t), t)
    h = torch.tensor(1e-7, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    right, left = float((loss(h) - loss(zero)) / h), float((loss(zero) - loss(-h)) / h)
    assert abs(right - left) < 1e-5 * abs(float(slope))
    assert abs(right - float(slope)) < 1e-5 * abs(float(slope))


# -------------------------------------------------------------------------------------- options, state
def test_features_and_init_imply_each_other():
    assert PairwiseDLN(3, init="ce").features == "softmax"
    built_on = {"warm": "sigmoid", "ce": "softmax", "paper": "sigmoid"}
    assert (PairwiseDLN(3).init, PairwiseDLN(3).features) == (DEFAULT_DLN["init"], built_on[DEFAULT_DLN["init"]])
    assert PairwiseDLN(3, init="paper", features="softmax").features == "softmax"
    assert "features='softmax'" in repr(PairwiseDLN(3, init="ce"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"init": "ce", "features": "sigmoid"},
            "init='ce' builds its loss on features 'softmax', got features='sigmoid'",
        ),
        (
            {"init": "warm", "features": "softmax"},
            "init='warm' builds its loss on features 'sigmoid', got features='softmax'",
        ),
        ({"features": "logits"}, r"features must be one of \('sigmoid', 'softmax'\), got 'logits'"),
        ({"features": 1}, "features must be one of .*got 1"),
        ({"init": "CE"}, "init must be one of .*'CE'"),
    ],
)
def test_inconsistent_or_unknown_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PairwiseDLN(3, **kwargs)


def test_the_default_init_comes_from_the_settings_whatever_the_features():
    # PairwiseDLN(C, features=...) does not pick another init: features the default init is not built on raise
    default = DEFAULT_DLN["init"]
    assert inspect.signature(PairwiseDLN).parameters["init"].default == default
    others = [f for f in FEATURES if default != "paper" and PairwiseDLN(3).features != f]
    for features in others:
        with pytest.raises(ValueError, match=f"init={default!r} builds its loss on features"):
            PairwiseDLN(3, features=features)  # type: ignore[arg-type]


def test_the_features_are_saved_with_the_state_and_checked_on_load():
    softmax, sigmoid = ce_dln(3), PairwiseDLN(3)
    assert softmax.state_dict()["_extra_state"]["features"] == "softmax"
    assert sigmoid.state_dict()["_extra_state"]["features"] == "sigmoid"
    PairwiseDLN(3, init="paper", features="softmax").load_state_dict(softmax.state_dict())
    PairwiseDLN(3, init="paper").load_state_dict(sigmoid.state_dict())
    with pytest.raises(ValueError, match="features='softmax', this one has features='sigmoid'"):
        PairwiseDLN(3).load_state_dict(softmax.state_dict())
    with pytest.raises(ValueError, match="features='sigmoid', this one has features='softmax'"):
        ce_dln(3).load_state_dict(sigmoid.state_dict())


def test_smallest_dln_is_still_cross_entropy():
    logits, target = moderate_logits(3, seed=10)
    dln = PairwiseDLN(3, init="ce", hidden=1, depth=1).double()
    torch.testing.assert_close(dln(logits, target), F.cross_entropy(logits, target), rtol=RTOL, atol=ATOL)
