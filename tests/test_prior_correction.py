"""ClassAwareDLN's prior correction: the log ratio of the label priors a Teacher's rounds count, added to offsets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynaloss
from dynaloss.losses.class_aware import prior_shift

CLASSES = 4


def _counted(dln: dynaloss.ClassAwareDLN, train: list[int], target: list[int]) -> dynaloss.ClassAwareDLN:
    dln.add_label_counts(torch.tensor(train), torch.tensor(target))
    return dln


def test_the_correction_is_logit_adjustment_for_the_counted_priors() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, CLASSES, generator=generator, dtype=torch.float64)
    target = torch.randint(CLASSES, (32,), generator=generator)
    dln = _counted(dynaloss.ClassAwareDLN(CLASSES, pair_form="logit").double(), [899, 299, 99, 0], [9, 9, 9, 9])
    train, trusted = torch.tensor([900.0, 300, 100, 1]), torch.full((CLASSES,), 10.0)  # counts + 1 (Laplace)
    shift = (train / train.sum()).log() - (trusted / trusted.sum()).log()
    torch.testing.assert_close(dln.prior_correction, shift.double())
    torch.testing.assert_close(dln(logits, target), F.cross_entropy(logits + shift.double(), target))
    # on top of the learned offsets, which refine it
    with torch.no_grad():
        dln.offsets.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    expected = F.cross_entropy(logits + shift.double() + dln.offsets.detach(), target)
    torch.testing.assert_close(dln(logits, target), expected)


def test_nothing_counted_or_equal_priors_leave_the_loss_cross_entropy() -> None:
    logits, target = torch.randn(16, CLASSES, dtype=torch.float64), torch.randint(CLASSES, (16,))
    fresh = dynaloss.ClassAwareDLN(CLASSES, pair_form="logit").double()  # the form that is CE exactly
    assert torch.equal(fresh.prior_correction, torch.zeros(CLASSES, dtype=torch.float64))
    balanced = _counted(dynaloss.ClassAwareDLN(CLASSES, pair_form="logit").double(), [50, 50, 50, 50], [7, 7, 7, 7])
    for dln in (fresh, balanced):
        torch.testing.assert_close(dln(logits, target), F.cross_entropy(logits, target), rtol=1e-13, atol=1e-13)
    assert torch.equal(prior_shift(torch.zeros(3), torch.zeros(3)), torch.zeros(3, dtype=torch.float64))


def test_counts_leave_out_ignore_index_and_out_of_range_labels() -> None:
    dln = dynaloss.ClassAwareDLN(CLASSES, ignore_index=2)
    counts = dln.count_labels([torch.tensor([[0, 0, 2], [3, 255, 1]]), torch.tensor([3, -100])])
    assert counts.tolist() == [2, 1, 0, 2]


def test_without_prior_correction_nothing_is_counted_and_the_states_do_not_mix() -> None:
    off = dynaloss.ClassAwareDLN(CLASSES, prior_correction=False, pair_form="logit")
    assert off.prior_correction is None and off.train_label_counts is None
    off.add_label_counts(torch.tensor([5, 0, 0, 0]), torch.tensor([1, 1, 1, 1]))  # nothing to add to
    logits, target = torch.randn(8, CLASSES), torch.randint(CLASSES, (8,))
    torch.testing.assert_close(off(logits, target), F.cross_entropy(logits, target))
    assert "prior_correction=False" in repr(off)
    on = _counted(dynaloss.ClassAwareDLN(CLASSES), [5, 1, 1, 1], [2, 2, 2, 2])
    with pytest.raises(ValueError, match="prior_correction"):
        off.load_state_dict(on.state_dict())
    saved_before = {**off.state_dict(), "_extra_state": {**off.state_dict()["_extra_state"]}}
    del saved_before["_extra_state"]["prior_correction"]  # a state saved before the option existed
    dynaloss.ClassAwareDLN(CLASSES, prior_correction=False, pair_form="logit").load_state_dict(saved_before)
    with pytest.raises(ValueError, match="prior_correction"):
        dynaloss.ClassAwareDLN(CLASSES, pair_form="logit").load_state_dict(saved_before)
    copy = dynaloss.ClassAwareDLN(CLASSES)
    copy.load_state_dict(on.state_dict())
    assert copy.train_label_counts.tolist() == [5, 1, 1, 1] and copy.target_label_counts.tolist() == [2, 2, 2, 2]
    copy.reset_parameters()
    assert copy.train_label_counts.tolist() == [0] * CLASSES


@pytest.mark.parametrize(
    ("train", "target", "match"),
    [
        (torch.tensor([1.0, 0, 0, 0]), torch.tensor([1, 1, 1, 1]), "train counts"),
        (torch.tensor([1, 0, 0]), torch.tensor([1, 1, 1, 1]), "train counts"),
        (torch.tensor([1, 0, 0, 0]), torch.tensor([1, -1, 1, 1]), "target counts"),
    ],
)
def test_bad_counts_are_refused_and_change_nothing(train: torch.Tensor, target: torch.Tensor, match: str) -> None:
    dln = dynaloss.ClassAwareDLN(CLASSES)
    with pytest.raises(ValueError, match=match):
        dln.add_label_counts(train, target)
    assert int(dln.train_label_counts.sum()) == 0 and int(dln.target_label_counts.sum()) == 0


def test_add_labels_counts_whole_label_sets_once() -> None:
    """The README's line before training: the training and trusted labels, as tensors or lists of them."""
    dln = dynaloss.ClassAwareDLN(CLASSES, ignore_index=-1)
    dln.add_labels(torch.tensor([0, 0, 0, 1, 2, -1]), [torch.tensor([0, 1]), torch.tensor([[2, 3]], dtype=torch.int32)])
    assert dln.train_label_counts.tolist() == [3, 1, 1, 0]
    assert dln.target_label_counts.tolist() == [1, 1, 1, 1]
    expected = prior_shift(torch.tensor([3, 1, 1, 0]), torch.tensor([1, 1, 1, 1])).float()
    torch.testing.assert_close(dln.prior_correction, expected)
    dln.add_labels(torch.tensor([3]), torch.tensor([0]))  # adds, as a Teacher's rounds do
    assert dln.train_label_counts.tolist() == [3, 1, 1, 1] and dln.target_label_counts.tolist() == [2, 1, 1, 1]
    off = dynaloss.ClassAwareDLN(CLASSES, prior_correction=False)
    off.add_labels(torch.tensor([0, 1]), torch.tensor([2]))  # nothing to count into
    assert off.prior_correction is None


@pytest.mark.parametrize(
    ("train", "target", "match"),
    [
        (torch.tensor([0.0, 1.0]), torch.tensor([0]), "train must hold integer class indices"),
        (torch.tensor([0, 1]), torch.tensor([True, False]), "target must hold integer class indices"),
        ([torch.tensor([0]), [1, 2]], torch.tensor([0]), "train must hold integer class indices"),
        ({0: torch.tensor([0])}, torch.tensor([0]), "train must be a tensor of class indices"),
        (torch.tensor([0]), "labels", "target must be a tensor of class indices"),
    ],
)
def test_add_labels_refuses_what_is_not_class_indices_and_counts_nothing(
    train: object, target: object, match: str
) -> None:
    dln = dynaloss.ClassAwareDLN(CLASSES)
    with pytest.raises(TypeError, match=match):
        dln.add_labels(train, target)  # type: ignore[arg-type]
    assert int(dln.train_label_counts.sum()) == 0 and int(dln.target_label_counts.sum()) == 0


def _student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, CLASSES))


def _batch(labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(len(labels), 3), torch.tensor(labels)


def test_a_committed_round_counts_its_labels_and_a_skipped_round_none() -> None:
    student = _student()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    teacher = dynaloss.pairwise_teacher(CLASSES, optimizer=optimizer)
    dln = teacher.loss_fn
    train = [_batch([0, 0, 0, 1]), _batch([0, 1, 2, 0])] * 5  # the round's N = 10 batches
    val = _batch([0, 1, 2, 3, 3, 2])
    assert not teacher.step(student, iter(train), iter([val])).skipped
    assert dln.train_label_counts.tolist() == [25, 10, 5, 0]
    assert dln.target_label_counts.tolist() == [1, 1, 2, 2]
    bad_val = (torch.full((6, 3), float("nan")), val[1])
    assert teacher.step(student, iter(train), iter([bad_val])).skipped  # nothing changes, counts included
    assert dln.train_label_counts.tolist() == [25, 10, 5, 0]
    # a teacher's state carries the counts: a resumed run goes on with the same correction
    resumed = dynaloss.pairwise_teacher(CLASSES, optimizer=optimizer)
    resumed.load_state_dict(teacher.state_dict())
    assert torch.equal(resumed.loss_fn.prior_correction, dln.prior_correction)


def test_a_teacher_corrects_a_long_tailed_training_prior() -> None:
    """Training labels 8:4:2:1, a balanced trusted set: after some rounds the loss holds ~ log(8:4:2:1)."""
    generator = torch.Generator().manual_seed(1)
    prior = torch.tensor([8.0, 4, 2, 1])

    def train_batches():  # an endless shuffled long-tailed stream
        while True:
            yield torch.randn(25, 3, generator=generator), torch.multinomial(prior, 25, True, generator=generator)

    def val_batches():
        while True:
            yield torch.randn(100, 3, generator=generator), torch.arange(100) % CLASSES

    student = _student()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    teacher = dynaloss.pairwise_teacher(CLASSES, optimizer=optimizer)
    train, val = train_batches(), val_batches()
    for _ in range(20):
        assert not teacher.step(student, train, val).skipped
    correction = teacher.loss_fn.prior_correction
    expected = (prior / prior.sum()).log() - torch.full((CLASSES,), 0.25).log()
    torch.testing.assert_close(correction, expected, atol=0.12, rtol=0)
