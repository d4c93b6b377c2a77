"""MultiPartDLN: the detection DLN reproduces the framework's weighted sum and learns its weights."""

from __future__ import annotations

import math

import pytest
import torch

from dynaloss import MultiPartDLN

GAINS = [7.5, 0.5, 1.5]  # ultralytics: box, cls, dfl


def test_reproduces_the_gained_sum_exactly():
    parts = torch.tensor([1.0, 2.0, 3.0])  # dyadic values: every summation order is exact
    out = MultiPartDLN(3, GAINS)(parts)
    assert out.item() == 7.5 * 1.0 + 0.5 * 2.0 + 1.5 * 3.0 == 13.0


def test_reproduces_the_gained_sum_on_random_parts_in_float64():
    dln = MultiPartDLN(3, GAINS).double()
    parts = torch.rand(3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    expected = 7.5 * parts[0] + 0.5 * parts[1] + 1.5 * parts[2]
    torch.testing.assert_close(dln(parts), expected, rtol=1e-15, atol=0)


def test_gradient_with_respect_to_the_parts_is_the_gains():
    parts = torch.tensor([0.25, 4.0, 1.75], requires_grad=True)
    MultiPartDLN(3, GAINS)(parts).backward()
    assert torch.equal(parts.grad, torch.tensor(GAINS))


def test_gradient_with_respect_to_the_weights_is_the_parts_summed_over_the_batch():
    dln = MultiPartDLN(3, GAINS)
    parts = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.25, 4.0]])
    dln(parts).backward()
    assert torch.equal(dln.weight.grad, parts.sum(0))


def test_batched_none_is_one_weighted_sum_per_row():
    dln = MultiPartDLN(3, GAINS, reduction="none")
    parts = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.0, 1.0]])
    out = dln(parts)
    assert out.shape == (2,)
    assert out.tolist() == [13.0, 16.5]


def test_single_vector_none_is_a_scalar():
    out = MultiPartDLN(3, GAINS, reduction="none")(torch.tensor([1.0, 2.0, 3.0]))
    assert out.shape == () and out.item() == 13.0


@pytest.mark.parametrize(("reduction", "expected"), [("sum", 29.5), ("mean", 14.75)])
def test_batched_reductions(reduction, expected):
    parts = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.0, 1.0]])
    out = MultiPartDLN(3, GAINS, reduction=reduction)(parts)
    assert out.shape == () and out.item() == expected


def test_default_reduction_is_sum():
    parts = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.0, 1.0]])
    assert MultiPartDLN(3, GAINS)(parts).item() == 29.5


def test_weight_is_a_learnable_parameter():
    dln = MultiPartDLN(3, GAINS)
    assert [name for name, _ in dln.named_parameters()] == ["weight"]
    assert dln.weight.requires_grad
    assert torch.equal(dln.weight.detach(), torch.tensor(GAINS))
    parts = torch.tensor([1.0, 2.0, 3.0])
    optimizer = torch.optim.SGD(dln.parameters(), lr=0.5)
    dln(parts).backward()
    optimizer.step()
    assert torch.equal(dln.weight.detach(), torch.tensor(GAINS) - 0.5 * parts)
    assert dln(parts).item() == 13.0 - 0.5 * (1.0 + 4.0 + 9.0)


def test_init_weights_are_copied_not_shared():
    init = torch.tensor(GAINS)
    dln = MultiPartDLN(3, init)
    with torch.no_grad():
        dln.weight.add_(1.0)
    assert init.tolist() == GAINS


@pytest.mark.parametrize("shape", [(4,), (2, 2), (2, 3, 1), (1, 2, 3), ()])
def test_bad_part_shapes_raise(shape):
    with pytest.raises(ValueError, match=r"parts must be \(3,\) or \(B, 3\)"):
        MultiPartDLN(3, GAINS)(torch.ones(shape))


@pytest.mark.parametrize("weights", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0], []])
def test_wrong_number_of_init_weights_raises(weights):
    with pytest.raises(ValueError, match="init_weights must hold num_parts=3 values"):
        MultiPartDLN(3, weights)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_parts_raise(bad):
    with pytest.raises(ValueError, match="parts contains NaN or Inf"):
        MultiPartDLN(3, GAINS)(torch.tensor([[1.0, 2.0, 3.0], [1.0, bad, 3.0]]))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty_batch_of_parts_raises(reduction):
    with pytest.raises(ValueError, match=r"parts is empty \(shape \(0, 3\)\)"):
        MultiPartDLN(3, GAINS, reduction=reduction)(torch.ones(0, 3))


def test_non_finite_init_weights_raise():
    with pytest.raises(ValueError, match="init_weights contains NaN or Inf"):
        MultiPartDLN(3, [1.0, math.nan, 2.0])


def test_bad_num_parts_and_reduction_raise():
    with pytest.raises(ValueError, match="num_parts must be >= 1"):
        MultiPartDLN(0, [])
    with pytest.raises(ValueError, match="reduction must be one of"):
        MultiPartDLN(3, GAINS, reduction="avg")


def test_non_tensor_parts_raise_type_error():
    with pytest.raises(TypeError, match="parts must be a torch.Tensor, got list"):
        MultiPartDLN(3, GAINS)([1.0, 2.0, 3.0])
