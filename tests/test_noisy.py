"""The demo's noisy-label task: a clean class-balanced trusted set, exactly the share of wrong labels asked for."""

from __future__ import annotations

import itertools

import pytest
import torch

from dynaloss.harness.data import Dataset
from dynaloss.harness.noisy import batches, gce_loss, make_noisy_task


def toy_data(per_class: int = 30, classes: int = 4) -> Dataset:
    y = torch.arange(classes).repeat_interleave(per_class)
    x = torch.arange(len(y), dtype=torch.float32)[:, None]  # each sample's x is its index
    return Dataset(x, y, x[:8], y[:8])


def test_the_trusted_set_is_clean_and_balanced_and_the_rest_has_exactly_the_noise() -> None:
    data = toy_data()
    task = make_noisy_task(data, trusted_per_class=6, noise_rate=0.4, seed=3)
    x, y = task.trusted
    assert torch.equal(y, data.y_train[x[:, 0].long()])  # clean
    for half in (y[:12], y[12:]):  # the tuning split's halves are class-balanced
        assert torch.equal(torch.bincount(half, minlength=4), torch.full((4,), 3))
    x, labels = task.noisy
    true = data.y_train[x[:, 0].long()]
    assert (
        len(labels) == 4 * 24
        and int((labels != true).sum()) == round(0.4 * 96)
        and task.noise_rate == pytest.approx(38 / 96)
    )
    assert len(set(x[:, 0].tolist()) | set(task.trusted[0][:, 0].tolist())) == 120  # disjoint, all used
    tuning = task.for_tuning()
    assert torch.equal(tuning.test[1], task.trusted[1][12:]) and torch.equal(tuning.trusted[1], task.trusted[1][:12])
    again = make_noisy_task(data, trusted_per_class=6, noise_rate=0.4, seed=3)
    assert torch.equal(again.noisy[1], labels)


def test_batches_are_endless_reshuffled_and_the_same_for_the_same_stream() -> None:
    data = toy_data(per_class=5, classes=2)  # 10 samples: batches of 4 drop the last 2 of every pass
    first = [b[1] for b in itertools.islice(batches((data.x_train, data.y_train), 4, 0, 1), 6)]
    again = [b[1] for b in itertools.islice(batches((data.x_train, data.y_train), 4, 0, 1), 6)]
    other = [b[1] for b in itertools.islice(batches((data.x_train, data.y_train), 4, 0, 2), 6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == 6
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_gce_is_cross_entropy_times_p_to_the_q_in_its_gradient() -> None:
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0, 1])
    (gce,) = torch.autograd.grad(gce_loss(logits, target, 0.7), logits)
    (ce,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, target), logits)
    p_y = logits.softmax(1).gather(1, target[:, None]).detach()
    assert torch.allclose(gce, ce * p_y**0.7, atol=1e-6)
