"""The loss contract of PairwiseDLN: value, reductions, weights, ignore_index, pixels, inits, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaloss import PairwiseDLN

LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4


# These tests check the DLN's arithmetic against references to float64 precision, so they use the exact MLP;
# tests/test_fast_pairwise.py checks the fast path against it.
EXACT = {"fast": False}


def warm_dln(num_classes: int, **kwargs: object) -> PairwiseDLN:
    """The warm-started DLN (a construction, no fit: cheap enough to build per test)."""
    return PairwiseDLN(num_classes, init="warm", **{**EXACT, **kwargs})  # type: ignore[arg-type]


def paper_dln(num_classes: int, seed: int = 0, **kwargs: object) -> PairwiseDLN:
    torch.manual_seed(seed)
    return PairwiseDLN(num_classes, init="paper", **{**EXACT, **kwargs})  # type: ignore[arg-type]


def reference_loss(layers: list[torch.Tensor], logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample loss from the documented formula, one row and one layer at a time."""
    out = []
    for z, y in zip(logits, target.tolist()):
        s = [1.0 / (1.0 + math.exp(-float(v))) for v in z]
        rows = []
        for j in range(len(s)):
            if j == y:
                continue
            h = torch.tensor([s[y], s[j], 1.0, 0.0], dtype=torch.float64)
            for matrix in layers[:-1]:
                pre = matrix.double() @ h
                h = torch.where(pre > 0, pre, 0.01 * pre)
            rows.append(float(layers[-1].double() @ h))
        out.append(sum(rows) / len(rows))
    return torch.tensor(out, dtype=torch.float64)


def hand_set_dln(**kwargs: object) -> PairwiseDLN:
    """A 4 -> 2 -> 1 DLN with weights chosen so the loss can be computed on paper."""
    dln = PairwiseDLN(3, init="paper", hidden=2, depth=1, monotone=False, **{**EXACT, **kwargs}).double()  # type: ignore[arg-type]
    with torch.no_grad():
        # the 7 multiplies the constant-0 feature, the 0.5 the constant-1 feature
        dln.layers[0].copy_(torch.tensor([[1.0, -1.0, 0.5, 7.0], [-2.0, 1.0, 0.0, 3.0]]))
        dln.layers[1].copy_(torch.tensor([[1.0, 2.0]]))
    return dln


HAND_LOGITS = torch.tensor([[0.0, LN3, -LN3], [LN3, 0.0, -LN3]], dtype=torch.float64)
HAND_TARGET = torch.tensor([0, 2])
# sample 0: s = (1/2, 3/4, 1/4), y = 0: rows [.5,.75,1,0] -> .25 + 2*leaky(-.25) = .245
#                                         [.5,.25,1,0] -> .75 + 2*leaky(-.75) = .735   => mean .49
# sample 1: s = (3/4, 1/2, 1/4), y = 2: rows [.25,.75,1,0] -> 0 + 2*.25 = .5
#                                         [.25,.5,1,0]  -> .25 + 2*0  = .25            => mean .375
HAND_EXPECTED = torch.tensor([0.49, 0.375], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------- value
def test_value_matches_hand_computation_on_tiny_dln():
    dln = hand_set_dln(reduction="none")
    torch.testing.assert_close(dln(HAND_LOGITS, HAND_TARGET), HAND_EXPECTED, rtol=1e-12, atol=1e-14)


def test_mean_of_hand_example():
    dln = hand_set_dln()
    torch.testing.assert_close(dln(HAND_LOGITS, HAND_TARGET), HAND_EXPECTED.mean(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_value_matches_independent_reference_on_default_size(num_classes):
    dln = paper_dln(num_classes, seed=num_classes, reduction="none").double()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, num_classes, generator=g, dtype=torch.float64) * 3
    target = torch.randint(num_classes, (4,), generator=g)
    expected = reference_loss([p.detach() for p in dln.mlp_weights()], logits, target)
    torch.testing.assert_close(dln(logits, target).detach(), expected, rtol=1e-10, atol=1e-12)


def test_warm_value_matches_independent_reference():
    dln = warm_dln(4, reduction="none").double()
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, generator=g, dtype=torch.float64) * 2
    target = torch.tensor([3, 0, 1])
    expected = reference_loss([p.detach() for p in dln.mlp_weights()], logits, target)
    torch.testing.assert_close(dln(logits, target).detach(), expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------- reductions
def _random_case(num_classes=4, batch=5, spatial=(), seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_classes, *spatial, generator=g, dtype=torch.float64) * scale
    target = torch.randint(num_classes, (batch, *spatial), generator=g)
    return logits, target


@pytest.mark.parametrize("spatial", [(), (2, 3)])
def test_sum_equals_none_sum_and_mean_equals_sum_over_count(spatial):
    logits, target = _random_case(spatial=spatial)
    dlns = {r: warm_dln(4, reduction=r).double() for r in ("none", "sum", "mean")}
    none, total, mean = (dlns[r](logits, target) for r in ("none", "sum", "mean"))
    torch.testing.assert_close(total, none.sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(mean, total / target.numel(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("spatial", [(), (3, 2), (4,)])
def test_none_has_the_target_shape(spatial):
    logits, target = _random_case(batch=2, spatial=spatial)
    out = warm_dln(4, reduction="none")(logits.float(), target)
    assert out.shape == target.shape


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_scalar_reductions_are_scalars(reduction):
    logits, target = _random_case(spatial=(2, 2))
    assert warm_dln(4, reduction=reduction)(logits.float(), target).shape == ()


def test_class_weight_gives_cross_entropy_style_weighted_mean():
    logits, target = _random_case(num_classes=3, batch=6, seed=3)
    target = torch.tensor([0, 1, 2, 2, 1, 2])
    class_weight = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    plain = warm_dln(3, reduction="none").double()(logits, target)
    w = class_weight[target]
    weighted = {
        r: warm_dln(3, reduction=r, weight=class_weight).double()(logits, target) for r in ("none", "sum", "mean")
    }
    torch.testing.assert_close(weighted["none"], w * plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(weighted["sum"], (w * plain).sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(weighted["mean"], (w * plain).sum() / w.sum(), rtol=1e-12, atol=0)


def test_uniform_class_weights_equal_no_weights():
    logits, target = _random_case(num_classes=5, batch=7, spatial=(2,), seed=4)
    plain = warm_dln(5).double()(logits, target)
    uniform = warm_dln(5, weight=torch.full((5,), 2.5, dtype=torch.float64)).double()(logits, target)
    torch.testing.assert_close(uniform, plain, rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_unit_class_weights_equal_no_weights(reduction):
    logits, target = _random_case(num_classes=5, batch=7, spatial=(2,), seed=4)
    plain = warm_dln(5, reduction=reduction).double()(logits, target)
    ones = warm_dln(5, reduction=reduction, weight=torch.ones(5, dtype=torch.float64)).double()(logits, target)
    torch.testing.assert_close(ones, plain, rtol=1e-15, atol=0)


def test_per_sample_weight_rescales():
    logits, target = _random_case(num_classes=3, batch=4, seed=5)
    w = torch.tensor([0.5, 2.0, 0.0, 1.0], dtype=torch.float64)
    dlns = {r: warm_dln(3, reduction=r).double() for r in ("none", "sum", "mean")}
    plain = dlns["none"](logits, target)
    torch.testing.assert_close(dlns["none"](logits, target, w), w * plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(dlns["sum"](logits, target, w), (w * plain).sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(dlns["mean"](logits, target, w), (w * plain).sum() / 4, rtol=1e-12, atol=0)


def test_per_sample_and_class_weights_combine():
    logits, target = _random_case(num_classes=3, batch=4, seed=6)
    target = torch.tensor([0, 1, 2, 1])
    w = torch.tensor([0.5, 2.0, 3.0, 1.0], dtype=torch.float64)
    cw = torch.tensor([2.0, 1.0, 4.0], dtype=torch.float64)
    plain = warm_dln(3, reduction="none").double()(logits, target)
    mean = warm_dln(3, weight=cw).double()(logits, target, w)
    torch.testing.assert_close(mean, (cw[target] * w * plain).sum() / cw[target].sum(), rtol=1e-12, atol=0)


def test_ignored_elements_are_zero_and_do_not_count():
    logits, _ = _random_case(num_classes=3, batch=4, seed=7)
    target = torch.tensor([0, -100, 2, -100])
    none = warm_dln(3, reduction="none").double()(logits, target)
    assert none[1].item() == 0.0 and none[3].item() == 0.0
    kept = warm_dln(3, reduction="none").double()(logits[[0, 2]], target[[0, 2]])
    torch.testing.assert_close(none[[0, 2]], kept, rtol=0, atol=0)
    mean = warm_dln(3).double()(logits, target)
    torch.testing.assert_close(mean, kept.sum() / 2, rtol=1e-12, atol=0)
    total = warm_dln(3, reduction="sum").double()(logits, target)
    torch.testing.assert_close(total, kept.sum(), rtol=1e-12, atol=0)


def test_custom_ignore_index_with_class_weights():
    logits, _ = _random_case(num_classes=3, spatial=(2, 2), batch=1, seed=8)
    target = torch.tensor([[[0, 255], [2, 1]]])
    cw = torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64)
    none = warm_dln(3, reduction="none", ignore_index=255).double()(logits, target)
    assert none[0, 0, 1].item() == 0.0
    plain = warm_dln(3, reduction="none", ignore_index=255).double()(logits, target)
    mean = warm_dln(3, ignore_index=255, weight=cw).double()(logits, target)
    counted = target != 255
    w = cw[target.clamp_max(2)] * counted
    torch.testing.assert_close(mean, (w * plain).sum() / w.sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_per_pixel_equals_flattened(reduction):
    logits, target = _random_case(num_classes=4, batch=2, spatial=(3, 2), seed=9)
    target[0, 1, 1] = -100
    dln = warm_dln(4, reduction=reduction).double()
    flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, 4)
    flat = dln(flat_logits, target.reshape(-1))
    spatial = dln(logits, target)
    expected = flat.reshape(target.shape) if reduction == "none" else flat
    torch.testing.assert_close(spatial, expected, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------ pixel subsampling
@pytest.mark.parametrize("max_pixels", [6, 100])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_max_pixels_at_least_image_size_equals_full_loss(max_pixels, reduction):
    logits, target = _random_case(num_classes=3, batch=2, spatial=(2, 3), seed=10)
    full = warm_dln(3, reduction=reduction)(logits.float(), target)
    sub = warm_dln(3, reduction=reduction, max_pixels=max_pixels)(logits.float(), target)
    assert torch.equal(full, sub)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_max_pixels_subsampling_is_unbiased(reduction):
    # heterogeneous pixel losses and a different number of ignored pixels per image, so that a missing or
    # wrong n_valid / n_picked rescaling moves the average far outside the tolerance
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64) * 4
    target = torch.randint(3, (2, 3, 3), generator=g)
    target[0, 0, :2] = -100
    target[1, :, 0] = -100
    target[1, 2, 2] = -100
    full = warm_dln(3, reduction=reduction).double()(logits, target).item()
    dln = warm_dln(3, reduction=reduction, max_pixels=2).double()
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([dln(logits, target) for _ in range(800)])
    assert draws.std() > 0  # it does subsample
    standard_error = (draws.std() / math.sqrt(len(draws))).item()
    assert abs(draws.mean().item() - full) < 5 * standard_error + 1e-12
    assert abs(draws.mean().item() - full) < 0.05 * abs(full)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_max_pixels_keeps_every_valid_pixel_of_sparsely_labelled_images(reduction):
    # 9 pixels per image but only 1 and 2 valid: max_pixels=2 picks every valid pixel, so no estimate is left
    logits, target = _random_case(num_classes=3, batch=2, spatial=(3, 3), seed=17)
    target[0] = -100
    target[0, 1, 2] = 1
    target[1] = -100
    target[1, 0, 0], target[1, 2, 1] = 0, 2
    full = warm_dln(3, reduction=reduction).double()(logits, target)
    torch.manual_seed(3)
    for _ in range(5):
        sub = warm_dln(3, reduction=reduction, max_pixels=2).double()(logits, target)
        torch.testing.assert_close(sub, full, rtol=1e-12, atol=0)


def test_max_pixels_needs_a_scalar_reduction():
    with pytest.raises(ValueError, match="max_pixels.*reduction"):
        PairwiseDLN(3, init="paper", reduction="none", max_pixels=4)


def test_max_pixels_gradient_reaches_only_picked_pixels():
    logits, target = _random_case(num_classes=3, batch=2, spatial=(3, 3), seed=12)
    logits.requires_grad_()
    torch.manual_seed(1)
    warm_dln(3, reduction="sum", max_pixels=2).double()(logits, target).backward()
    touched = (logits.grad.abs().sum(1) > 0).sum((1, 2))
    assert touched.tolist() == [2, 2]


# ----------------------------------------------------------------------------------------------- inits
def test_paper_init_is_kaiming_normal_fan_out_and_seeded():
    torch.manual_seed(123)
    expected = [
        torch.nn.init.kaiming_normal_(torch.empty(shape), mode="fan_out")
        for shape in [(40, 4), (40, 40), (40, 40), (40, 40), (1, 40)]
    ]
    torch.manual_seed(123)
    dln = PairwiseDLN(5, init="paper")
    assert [tuple(p.shape) for p in dln.layers] == [tuple(e.shape) for e in expected]
    for param, reference in zip(dln.layers, expected):
        assert torch.equal(param.detach(), reference)
    again = paper_dln(5, seed=123)
    other = paper_dln(5, seed=124)
    assert all(torch.equal(a, b) for a, b in zip(dln.layers, again.layers))
    assert not any(torch.equal(a, b) for a, b in zip(dln.layers, other.layers))


def test_paper_init_scale_is_fan_out_not_fan_in():
    # first layer (40, 4): fan_out 40 -> std sqrt(2/40) = 0.224; fan_in would give sqrt(2/4) = 0.707
    stds = torch.stack([paper_dln(3, seed=s).layers[0].detach().std() for s in range(10)])
    assert 0.19 < stds.mean().item() < 0.26


def test_warm_init_is_deterministic_and_the_default():
    torch.manual_seed(0)
    first = PairwiseDLN(7, init="warm")
    torch.manual_seed(99)
    second = PairwiseDLN(7)
    for a, b in zip(first.layers, second.layers):
        assert torch.equal(a, b)


@pytest.mark.parametrize("monotone", [True, False])
def test_warm_dln_interpolates_one_vs_all_cross_entropy_with_either_constraint(monotone):
    from dynaloss.functional import pairwise_row_loss
    from dynaloss.losses.warmstart import one_vs_all_pair_ce

    dln = PairwiseDLN(10, monotone=monotone).double()
    z = torch.linspace(-6, 6, 25, dtype=torch.float64)
    true_prob, wrong_prob = (g.flatten() for g in torch.meshgrid(torch.sigmoid(z), torch.sigmoid(z), indexing="ij"))
    expected = one_vs_all_pair_ce(10)(true_prob, wrong_prob)
    value = pairwise_row_loss(dln.mlp_weights(), true_prob, wrong_prob).detach()
    assert ((value - expected).abs() / expected).max() < 0.1  # piecewise-linear between knots, exact on them


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warm_logit_gradient_is_aligned_with_cross_entropy(seed):
    dln = warm_dln(10).double()
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(64, 10, generator=g, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(10, (64,), generator=g)
    (dln_grad,) = torch.autograd.grad(dln(logits, target), logits)
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(logits, target), logits)
    one_vs_all = F.binary_cross_entropy_with_logits(logits, F.one_hot(target, 10).double(), reduction="sum") / 64
    (ova_grad,) = torch.autograd.grad(one_vs_all, logits)
    # close to the one-vs-all BCE it interpolates; that loss itself has cosine ~0.6 with softmax CE
    assert F.cosine_similarity(dln_grad.flatten(), ova_grad.flatten(), dim=0).item() > 0.95
    assert F.cosine_similarity(dln_grad.flatten(), ce_grad.flatten(), dim=0).item() > 0.25


def test_warm_value_approximates_one_vs_all_binary_cross_entropy():
    dln = warm_dln(4, reduction="none").double()
    probs = torch.tensor([[0.9, 0.1, 0.2, 0.05], [0.5, 0.5, 0.5, 0.5], [0.2, 0.7, 0.1, 0.3]], dtype=torch.float64)
    logits = torch.log(probs / (1 - probs))
    target = torch.zeros(3, dtype=torch.long)
    expected = -torch.log(probs[:, 0]) - torch.log1p(-probs[:, 1:]).sum(1)
    torch.testing.assert_close(dln(logits, target).detach(), expected, rtol=0.05, atol=0.1)


def test_warm_value_approximates_pairwise_binary_cross_entropy():
    dln = warm_dln(2, reduction="none").double()
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.7]], dtype=torch.float64)
    logits = torch.log(probs / (1 - probs))
    target = torch.zeros(3, dtype=torch.long)
    expected = -torch.log(probs[:, 0]) - torch.log1p(-probs[:, 1])
    torch.testing.assert_close(dln(logits, target).detach(), expected, rtol=0.1, atol=0.1)


def test_warm_dln_is_not_minimised_by_pushing_every_sigmoid_to_zero():
    # a bias-free MLP without the constant features would be positively homogeneous, minimum at s = 0
    dln = warm_dln(5, reduction="none").double()
    target = torch.tensor([0, 1, 2, 3, 4])
    all_low = torch.full((5, 5), -30.0, dtype=torch.float64)
    correct = all_low.clone()
    correct[torch.arange(5), target] = 30.0
    assert (dln(correct, target) < dln(all_low, target)).all()
    assert (dln(correct, target) < dln(torch.zeros(5, 5, dtype=torch.float64), target)).all()


# ------------------------------------------------------------------------------------ gradients and dtypes
def test_gradients_reach_input_and_every_dln_parameter():
    dln = paper_dln(4, seed=3)
    logits, target = _random_case(num_classes=4, seed=13)
    logits = logits.float().requires_grad_()
    dln(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    for param in dln.layers:
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_gradient_matches_finite_differences_in_float64():
    dln = paper_dln(3, seed=4, hidden=6, depth=2).double()
    logits, target = _random_case(num_classes=3, batch=3, spatial=(2,), seed=14)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: dln(z, target), (logits,))


def test_float64_module_computes_in_float64():
    dln = warm_dln(3).double()
    logits, target = _random_case(num_classes=3, seed=15)
    out = dln(logits, target)
    assert out.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in dln.parameters())


def test_output_follows_input_device():
    dln = warm_dln(3, reduction="none")
    logits, target = _random_case(num_classes=3, seed=16)
    assert dln(logits.float(), target).device == logits.device


# ------------------------------------------------------------------------------------------- properties
_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 4),
    num_classes=st.integers(2, 12),
    spatial=_shapes,
    scale=st.sampled_from([0.1, 1.0, 10.0, 50.0]),
    saturate=st.booleans(),
    reduction=st.sampled_from(["none", "mean", "sum"]),
    ignore_fraction=st.sampled_from([0.0, 0.3, 0.9]),
    use_max_pixels=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_output_is_finite_with_documented_shape(
    batch, num_classes, spatial, scale, saturate, reduction, ignore_fraction, use_max_pixels, seed
):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *spatial)
    logits = torch.randn(batch, num_classes, *spatial, generator=g) * scale
    if saturate:  # exactly +-50 everywhere: sigmoids of 1 and ~0
        logits = torch.where(logits >= 0, 50.0, -50.0)
    target = torch.randint(num_classes, shape, generator=g)
    ignored = torch.rand(shape, generator=g) < ignore_fraction
    ignored.view(-1)[0] = False  # at least one element counts, else 'mean' is 0/0 as in cross-entropy
    target = target.masked_fill(ignored, -100)
    max_pixels = 1 if use_max_pixels and spatial and reduction != "none" else None
    dln = warm_dln(num_classes, reduction=reduction, max_pixels=max_pixels)
    logits.requires_grad_()
    out = dln(logits, target)
    assert out.shape == (shape if reduction == "none" else ())
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if reduction == "none":
        assert (out[ignored] == 0).all()
    (grad,) = torch.autograd.grad(out.sum(), logits)
    assert torch.isfinite(grad).all()


# ------------------------------------------------------------------------------------- monotone constraint
def _logit_gradient_signs(dln: PairwiseDLN, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample logit gradients of the loss: the true class's, and the wrong classes'."""
    logits, target = _random_case(num_classes=dln.num_classes, batch=16, seed=seed)
    logits = (logits * 4).requires_grad_()
    (grad,) = torch.autograd.grad(dln(logits, target), logits)
    true_mask = F.one_hot(target, dln.num_classes).bool()
    return grad[true_mask], grad[~true_mask]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 100.0))
def test_monotone_dln_never_rewards_a_wrong_prediction_whatever_its_parameters(seed, scale):
    # any parameters a teacher could reach: random, of any size
    dln = paper_dln(5, seed=seed, hidden=8, depth=3).double()
    with torch.no_grad():
        for matrix in dln.layers:
            matrix.mul_(scale)
    true_grad, wrong_grad = _logit_gradient_signs(dln, seed)
    assert (true_grad <= 0).all() and (wrong_grad >= 0).all()


def test_unconstrained_dln_can_reward_a_wrong_prediction():
    # what the constraint prevents: the paper's random DLN pushes some true classes down
    found = False
    for seed in range(5):
        true_grad, wrong_grad = _logit_gradient_signs(paper_dln(5, seed=seed, monotone=False).double(), seed)
        found = found or bool((true_grad > 0).any() or (wrong_grad < 0).any())
    assert found


def test_the_constraint_is_saved_with_the_state_and_checked_on_load():
    monotone, free = PairwiseDLN(3), PairwiseDLN(3, monotone=False)
    extra = monotone.state_dict()["_extra_state"]
    assert extra == {
        "monotone": True,
        "target_range": monotone.target_range,
        "num_classes": 3,
        "features": "sigmoid",
        "pair_mean": "wrong",
    }
    PairwiseDLN(3, init="paper").load_state_dict(monotone.state_dict())
    with pytest.raises(ValueError, match="monotone=True"):
        free.load_state_dict(monotone.state_dict())
    unpinned = {**monotone.state_dict(), "_extra_state": {**extra, "target_range": None}}
    with pytest.raises(ValueError, match="pinned range"):
        PairwiseDLN(3).load_state_dict(unpinned)
    incomplete = {**monotone.state_dict(), "_extra_state": {"monotone": True, "target_range": 1.0}}
    with pytest.raises(ValueError, match=r"must hold \['num_classes', 'features', 'pair_mean'\]"):
        PairwiseDLN(3).load_state_dict(incomplete)
    with pytest.raises(TypeError, match="monotone must be a bool"):
        PairwiseDLN(3, monotone="yes")  # type: ignore[arg-type]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), layer=st.integers(0, 2), factor=st.floats(0.01, 100.0))
def test_monotone_dln_size_is_pinned_only_its_shape_can_change(seed, layer, factor):
    # Scaling any layer scales a plain MLP's loss (and the student's step); the pinned loss does not move.
    from dynaloss.functional import loss_range

    dln = paper_dln(4, seed=seed, hidden=8, depth=2).double()
    logits, target = _random_case(num_classes=4, batch=6, seed=seed)
    before = dln(logits, target)
    with torch.no_grad():
        dln.layers[layer].mul_(factor)
    torch.testing.assert_close(dln(logits, target), before, rtol=1e-9, atol=1e-12)
    assert float(loss_range(dln.mlp_weights()).detach()) == pytest.approx(dln.target_range, rel=1e-9)


def test_every_feature_name_of_the_settings_has_its_family():
    from dynaloss._features import FAMILIES, feature_family
    from dynaloss.settings import FEATURES

    assert tuple(FAMILIES) == FEATURES and all(feature_family(name).name == name for name in FEATURES)
    assert PairwiseDLN(3, init="paper", features="softmax").family is FAMILIES["softmax"]
    with pytest.raises(ValueError, match="features must be one of"):
        feature_family("tanh")
