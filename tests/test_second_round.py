"""Issue 22, the second adversarial round: nothing silently wrong, each fix with the test that pins it.

Each test names the item of the issue it covers. Every fix is either a clear ``TypeError``/``ValueError``
naming the value, raised before anything changes, or correct behaviour.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dynaloss import PairwiseDLN
from dynaloss import functional as DF


def dln3(**kwargs: object) -> PairwiseDLN:
    torch.manual_seed(0)
    return PairwiseDLN(3, **{"init": "paper", "hidden": 4, "depth": 1, **kwargs})


def student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def batches(count: int, seed: int = 0, weight: torch.Tensor | None = None) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x, y = torch.randn(6, 4, generator=g), torch.randint(3, (6,), generator=g)
        out.append((x, y) if weight is None else (x, y, weight))
    return out


# ------------------------------------------------------------------------- 1. an all-ignored batch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(("init", "features"), [("ce", "softmax"), ("warm", "sigmoid"), ("paper", "sigmoid")])
def test_an_all_ignored_batch_gives_zero_loss_and_zero_gradients(reduction, fast, init, features):
    # before: NaN loss and NaN gradients for 'mean' (fast, exact and warm paths), and one optimizer step made
    # the model NaN; nn.CrossEntropyLoss returns NaN there but zero gradients
    torch.manual_seed(0)
    model = nn.Conv2d(2, 3, 1)
    loss_fn = PairwiseDLN(3, init=init, features=features, reduction=reduction, fast=fast, ignore_index=255)
    x, void = torch.randn(4, 2, 40, 40), torch.full((4, 40, 40), 255)  # 6,400 pixels: the fast path's table
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = copy.deepcopy(model.state_dict())
    loss = loss_fn(model(x), void)
    assert bool((loss == 0).all())
    loss.sum().backward()
    assert all(bool((p.grad == 0).all()) for p in model.parameters())
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_all_ignored_batch_through_the_functional_api_and_a_class_weighted_dln_is_zero():
    logits = torch.randn(5, 3, requires_grad=True)
    layers = list(dln3().mlp_weights())
    value = DF.pairwise_dln_loss(layers, logits, torch.full((5,), -100))
    value.backward()
    assert value.item() == 0.0 and bool((logits.grad == 0).all())
    # classes whose weights are all 0: nothing counts either
    weighted = dln3(weight=torch.tensor([0.0, 0.0, 1.0]))
    logits.grad = None
    weighted(logits, torch.tensor([0, 1, 0, 1, 0])).backward()
    assert bool((logits.grad == 0).all())


def test_an_all_void_crop_leaves_a_segmentation_objective_finite():
    from dynaloss.integrations.smp import PSPNetDLNLoss

    objective = PSPNetDLNLoss(3, max_pixels=16)
    main, aux = (torch.randn(2, 3, 8, 8, requires_grad=True) for _ in range(2))
    value = objective((main, aux), torch.full((2, 8, 8), 255))
    value.backward()
    assert value.item() == 0.0 and bool((main.grad == 0).all()) and bool((aux.grad == 0).all())
