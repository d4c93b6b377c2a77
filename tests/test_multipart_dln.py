"""MultiPartDLN: the detection DLN reproduces the framework's weighted sum and learns its gains, relatively."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynaloss import MultiPartDLN, Teacher

GAINS = [7.5, 0.5, 1.5]  # ultralytics: box, cls, dfl


# exp(log(w)) is w up to float rounding: one ulp (7.5 comes back as 7.5000005 in float32)
ULP = {"rtol": 2e-7, "atol": 0.0}


def test_reproduces_the_gained_sum():
    parts = torch.tensor([1.0, 2.0, 3.0])
    out = MultiPartDLN(3, GAINS)(parts)
    torch.testing.assert_close(out, torch.tensor(7.5 * 1.0 + 0.5 * 2.0 + 1.5 * 3.0), **ULP)


def test_dyadic_gains_are_reproduced_exactly():
    dln = MultiPartDLN(3, [0.5, 1.5, 4.0])  # exp(log(w)) rounds back to w for these
    assert torch.equal(dln.weight.detach(), torch.tensor([0.5, 1.5, 4.0]))
    assert dln(torch.tensor([1.0, 2.0, 3.0])).item() == 15.5


def test_reproduces_the_gained_sum_on_random_parts_in_float64():
    dln = MultiPartDLN(3, GAINS).double()  # the log-gains were rounded to float32 before widening
    parts = torch.rand(3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    expected = 7.5 * parts[0] + 0.5 * parts[1] + 1.5 * parts[2]
    assert dln(parts).dtype == torch.float64
    torch.testing.assert_close(dln(parts), expected, **ULP)


def test_gradient_with_respect_to_the_parts_is_the_gains():
    parts = torch.tensor([0.25, 4.0, 1.75], requires_grad=True)
    MultiPartDLN(3, GAINS)(parts).backward()
    torch.testing.assert_close(parts.grad, torch.tensor(GAINS), **ULP)


def test_gradient_with_respect_to_the_log_gains_is_gain_times_summed_parts():
    dln = MultiPartDLN(3, GAINS)
    parts = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.25, 4.0]])
    dln(parts).backward()
    torch.testing.assert_close(dln.log_weight.grad, torch.tensor(GAINS) * parts.sum(0), **ULP)


def test_batched_none_is_one_weighted_sum_per_row():
    dln = MultiPartDLN(3, GAINS, reduction="none")
    parts = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.0, 1.0]])
    out = dln(parts)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([13.0, 16.5]), **ULP)


def test_single_vector_none_is_a_scalar():
    out = MultiPartDLN(3, GAINS, reduction="none")(torch.tensor([1.0, 2.0, 3.0]))
    assert out.shape == ()
    torch.testing.assert_close(out, torch.tensor(13.0), **ULP)


@pytest.mark.parametrize(("reduction", "expected"), [("sum", 29.5), ("mean", 14.75)])
def test_batched_reductions(reduction, expected):
    parts = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.0, 1.0]])
    out = MultiPartDLN(3, GAINS, reduction=reduction)(parts)
    assert out.shape == ()
    torch.testing.assert_close(out, torch.tensor(expected), **ULP)


def test_default_reduction_is_sum():
    parts = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.0, 1.0]])
    torch.testing.assert_close(MultiPartDLN(3, GAINS)(parts), torch.tensor(29.5), **ULP)


def test_log_weight_is_the_learnable_parameter_and_weight_its_exp():
    dln = MultiPartDLN(3, GAINS)
    assert [name for name, _ in dln.named_parameters()] == ["log_weight"]
    assert dln.log_weight.requires_grad and dln.weight.requires_grad  # weight is differentiable
    torch.testing.assert_close(dln.log_weight.detach(), torch.tensor(GAINS).log())
    torch.testing.assert_close(dln.weight.detach(), torch.tensor(GAINS), **ULP)
    parts = torch.tensor([1.0, 2.0, 3.0])
    optimizer = torch.optim.SGD(dln.parameters(), lr=0.01)
    dln(parts).backward()
    optimizer.step()
    # a step on the log-gains is a relative change of each gain: w' = w * exp(-lr * w * part)
    expected = torch.tensor(GAINS) * torch.exp(-0.01 * torch.tensor(GAINS) * parts)
    torch.testing.assert_close(dln.weight.detach(), expected)
    with pytest.raises(AttributeError):
        dln.weight = torch.ones(3)  # type: ignore[misc]  # read-only: set log_weight instead


def test_gains_stay_positive_whatever_the_log_gains():
    dln = MultiPartDLN(3, GAINS)
    with torch.no_grad():
        dln.log_weight.sub_(100.0)
    assert (dln.weight > 0).all()


def test_init_weights_are_copied_not_shared():
    init = torch.tensor(GAINS)
    dln = MultiPartDLN(3, init)
    with torch.no_grad():
        dln.log_weight.add_(1.0)
    assert init.tolist() == GAINS


@pytest.mark.parametrize("weights", [[7.5, 0.0, 1.5], [7.5, -0.5, 1.5]])
def test_non_positive_init_weights_raise_naming_them(weights):
    with pytest.raises(ValueError, match=r"init_weights must all be > 0.*got \[7\.5, -?0\.[05], 1\.5\]"):
        MultiPartDLN(3, weights)


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


# ---------------------------------------------------------------------------------------------- teaching
class ThreeTargets(nn.Module):
    """A 3-part objective on (outputs, targets (B, 3)): squared error to each target column, gained by the DLN."""

    def __init__(self, gains: list[float]) -> None:
        super().__init__()
        self.dln = MultiPartDLN(3, gains)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.dln(((outputs - targets) ** 2).mean(0))


def regression_batches(seed: int, batch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """x -> (x @ wrong, x @ true, x @ true + noise): column 0 is a harmful target, columns 1 and 2 helpful."""
    generator = torch.Generator().manual_seed(seed)
    true, wrong = torch.tensor([1.0, -2.0, 0.5, 1.5]), torch.tensor([-1.0, 1.0, 2.0, -0.5])
    while True:
        x = torch.randn(batch, 4, generator=generator)
        noise = 0.1 * torch.randn(batch, generator=generator)
        y = x @ true
        yield x, torch.stack([x @ wrong, y, y + noise], 1)


def test_teacher_moves_the_gains_relatively():
    """The harmful part's gain falls by a share of itself, far more than an additive step of ``dln_lr`` could.

    Each round moves every log-gain by about ``dln_lr`` (the 'adam' teacher's step is normalised to
    ``dln_lr``, like the LSTM's ``(-1, 1)`` output), less the anchor's pull (0.05 of the distance): after 20
    rounds at ``dln_lr=1e-2`` that is a log-distance of ``0.2 (1 - 0.95**20) = 0.13``, a 12 % fall of the
    gain. Had the gains themselves been the parameters, 20 rounds could move the 7.5 by at most 0.2 (2.7 %).
    """
    torch.manual_seed(0)
    student = nn.Linear(4, 1, bias=False)
    objective = ThreeTargets([7.5, 0.5, 1.5])
    val_loss = lambda outputs, targets: F.mse_loss(outputs, targets[:, 1:2])  # noqa: E731
    teacher = Teacher(objective, teacher="adam", steps=2, student_lr=0.02, dln_lr=1e-2, val_loss=val_loss)
    train, val = regression_batches(1, 16), regression_batches(2, 64)
    records = [teacher.step(student, train, val) for _ in range(20)]
    assert not any(r.skipped or r.rejected for r in records)
    gains = objective.dln.weight.detach()
    harmful_fall = 1 - gains[0].item() / 7.5
    assert 0.05 < harmful_fall < 0.2, gains  # relative: ~12 %; an additive rule could not pass 0.2 / 7.5 = 2.7 %
    assert gains[1] > 0.5 * 1.05 and gains[2] > 1.5 * 1.05, gains  # the helpful parts rise, relatively too
