"""The sparsity prior: a round soft-thresholds the loss's sparse parameters toward where teaching started."""

from __future__ import annotations

import pytest
import torch
from test_hypergradient import CLASSES as FD_CLASSES
from test_hypergradient import make_batches, make_student
from torch import nn

import dynaloss
from dynaloss import Teacher
from dynaloss._batches import as_batch
from dynaloss._round import RoundOutcome, compute_round, soft_threshold, sparse_parameter_mask
from dynaloss._unroll import default_val_loss
from dynaloss.teachers import make_teacher_model

CLASSES = 4


class _Holder(nn.Module):
    """An objective that holds the DLN under a name, as the adapters' objectives do."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(2))
        self.dln = dynaloss.ClassAwareDLN(CLASSES)


def test_the_mask_holds_the_offsets_and_pair_offsets_of_a_class_aware_dln() -> None:
    mask = sparse_parameter_mask(dynaloss.ClassAwareDLN(CLASSES))
    # named_parameters order: offsets (C), robustness (C), pair_offsets (C x C)
    expected = torch.cat([torch.ones(CLASSES), torch.zeros(CLASSES), torch.ones(CLASSES * CLASSES)]).bool()
    assert torch.equal(mask, expected)
    # prefixed by the module's name inside another module; that module's own parameter is not named
    held = sparse_parameter_mask(_Holder())
    assert torch.equal(held, torch.cat([torch.zeros(2, dtype=torch.bool), expected]))
    # a loss that names none: every coordinate
    pairwise = dynaloss.PairwiseDLN(CLASSES)
    count = sum(p.numel() for p in pairwise.parameters() if p.requires_grad)
    assert torch.equal(sparse_parameter_mask(pairwise), torch.ones(count, dtype=torch.bool))


def test_soft_threshold_is_the_proximal_step_of_an_l1_prior() -> None:
    values = torch.tensor([1.0, -1.0, 0.05, -0.05, 0.3, 2.0], dtype=torch.float64)
    centre = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.3, 1.0], dtype=torch.float64)
    expected = torch.tensor([0.9, -0.9, 0.0, 0.0, 0.3, 1.9], dtype=torch.float64)
    torch.testing.assert_close(soft_threshold(values, centre, 0.1), expected, rtol=0, atol=1e-15)


def _moved_dln() -> dynaloss.ClassAwareDLN:
    dln = dynaloss.ClassAwareDLN(FD_CLASSES).double()
    with torch.no_grad():
        dln.offsets.copy_(torch.tensor([0.03, -0.2, 0.5]))
        dln.robustness.copy_(torch.tensor([0.1, -0.05, 0.2]))
        dln.pair_offsets.copy_(torch.tensor([[0.0, -0.01, 0.4], [0.2, 0.0, -0.7], [-0.02, 0.3, 0.0]]))
    return dln


@pytest.mark.parametrize("anchored", [False, True])
def test_a_round_thresholds_the_update_of_the_sparse_coordinates_only(anchored: bool) -> None:
    dln = _moved_dln()
    phi = torch.cat([p.detach().flatten() for p in dln.parameters()])
    anchor = phi + 0.01 if anchored else None
    cpu = torch.device("cpu")
    batches = [as_batch(b, "train", cpu) for b in make_batches(3, 8, seed=2)]
    val = as_batch(make_batches(1, 16, seed=3)[0], "val", cpu)

    def run(sparsity: float) -> RoundOutcome:
        return compute_round(
            make_student(),
            dln,
            make_teacher_model("adam"),
            None,
            batches,
            batches,
            val,
            student_lr=0.3,
            dln_lr=0.05,
            val_loss=default_val_loss(dln),
            anchor_point=anchor,
            sparsity=sparsity,
            run_stage_three=False,
        )

    plain, sparse = run(0.0), run(2.0)
    torch.testing.assert_close(sparse.flat_grad, plain.flat_grad, rtol=0, atol=0)  # the prior changes the step only
    new_plain = torch.cat([p.flatten() for p in plain.new_phi.values()])
    new_sparse = torch.cat([p.flatten() for p in sparse.new_phi.values()])
    centre = torch.zeros_like(phi) if anchor is None else anchor
    mask = sparse_parameter_mask(dln)
    torch.testing.assert_close(new_sparse[mask], soft_threshold(new_plain, centre, 0.1)[mask], rtol=0, atol=1e-15)
    torch.testing.assert_close(new_sparse[~mask], new_plain[~mask], rtol=0, atol=0)  # the robustness is untouched
    assert bool((new_sparse[mask] == centre[mask]).any())  # coordinates within the threshold land on the centre
    assert not torch.equal(new_sparse[mask], new_plain[mask])


def _noisy_teaching(sparsity: float | None) -> dynaloss.ClassAwareDLN:
    """60 % uniformly wrong training labels, a clean trusted batch, the README's loop (as in test_class_aware_dln)."""
    generator = torch.Generator().manual_seed(5)
    centres = torch.randn(CLASSES, 4, generator=generator) * 3

    def draw(size: int, noisy: float) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(CLASSES, (size,), generator=generator)
        x = centres[y] + torch.randn(size, 4, generator=generator)
        flip = torch.rand(size, generator=generator) < noisy
        return x, torch.where(flip, torch.randint(CLASSES, (size,), generator=generator), y)

    train, val = [draw(25, 0.6) for _ in range(20)], draw(100, 0.0)
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, CLASSES))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    overrides = {} if sparsity is None else {"sparsity": sparsity}
    teacher = dynaloss.pairwise_teacher(CLASSES, optimizer=optimizer, **overrides)
    dln = teacher.loss_fn
    assert isinstance(dln, dynaloss.ClassAwareDLN)
    stream = iter(train * 100)
    for it in range(100):
        x, y = next(stream)
        optimizer.zero_grad()
        dln(student(x), y).backward()
        optimizer.step()
        if it % 10 == 0:
            assert not teacher.step(student, stream, iter([val] * 3)).skipped
    return dln


def test_a_prior_above_the_step_holds_the_offsets_at_cross_entropy_while_q_moves() -> None:
    # a threshold of 4 * 0.05 per round is above any Adam step of 0.05: nothing sparse can leave 0
    held = _noisy_teaching(sparsity=4.0)
    assert bool((held.offsets == 0).all()) and held.pair_offsets is not None and bool((held.pair_offsets == 0).all())
    assert float(held.q.mean()) > 0.1
    free = _noisy_teaching(sparsity=0.0)  # without it the same rounds move them
    assert free.pair_offsets is not None and bool((free.pair_offsets != 0).any())


def test_the_defaults_per_loss_and_preset() -> None:
    # on for ClassAwareDLN, the recommended configuration (docs/results.md, "A ceiling on q"), off elsewhere
    assert Teacher(dynaloss.ClassAwareDLN(CLASSES)).sparsity == 0.05
    assert dynaloss.pairwise_teacher(CLASSES).sparsity == 0.05
    assert Teacher(dynaloss.ClassAwareDLN(CLASSES), sparsity=0.1).sparsity == 0.1
    assert Teacher(dynaloss.PairwiseDLN(CLASSES)).sparsity == 0.0
    for preset in ("pairwise", "ce", "paper", "research"):
        assert dynaloss.pairwise_teacher(CLASSES, preset).sparsity == 0.0


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("0.1", TypeError, "sparsity must be a float, got str"),
        (True, TypeError, "sparsity must be a float, got bool"),
        (-0.1, ValueError, r"sparsity must be a finite number >= 0, got -0.1"),
        (float("nan"), ValueError, r"sparsity must be a finite number >= 0, got nan"),
        (float("inf"), ValueError, r"sparsity must be a finite number >= 0, got inf"),
    ],
)
def test_a_bad_sparsity_is_a_clear_error_in_the_constructor_and_the_setter(value, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        Teacher(dynaloss.ClassAwareDLN(CLASSES), sparsity=value)
    teacher = Teacher(dynaloss.ClassAwareDLN(CLASSES))
    with pytest.raises(error, match=match):
        teacher.sparsity = value
    assert teacher.sparsity == 0.05
