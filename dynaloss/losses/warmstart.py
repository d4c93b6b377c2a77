"""Warm start: fit a pairwise DLN to a known loss before teaching begins.

The paper starts from a random DLN, which in most seeds is anti-aligned with cross-entropy: the student
first learns the wrong thing until the teacher turns the DLN around. Regressing the DLN onto a binary
cross-entropy first gives the teacher a loss that already teaches, to refine from there.

Which binary cross-entropy matters. The DLN averages its ``C - 1`` pair rows, so fitting each pair to the
plain 1-vs-1 BCE ``-log s_y - log(1 - s_j)`` divides every wrong-class gradient by ``C - 1``: the student
learns as if its learning rate were ~10x smaller for ten classes (and the teacher then spends its rounds
turning the loss's scale up). Weighting the wrong class by ``C - 1`` makes the per-sample loss exactly the
one-vs-all BCE ``-log s_y - sum_j log(1 - s_j)``, whose logit gradients ``(s_y - 1, s_j)`` match softmax
cross-entropy's in size. That is the default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynaloss import functional as DF

if TYPE_CHECKING:
    from dynaloss.losses.pairwise import PairwiseDLN

__all__ = ["binary_pair_ce", "fit_pairwise_dln", "fit_to_one_vs_all_ce", "one_vs_all_pair_ce"]

# Probabilities are drawn from this interval, where the targets are finite.
_PROB_MARGIN = 0.01


def binary_pair_ce(true_prob: Tensor, wrong_prob: Tensor) -> Tensor:
    """1-vs-1 binary cross-entropy ``-log s_y - log(1 - s_j)`` of a (true, wrong) prediction pair."""
    return -torch.log(true_prob) - torch.log1p(-wrong_prob)


def one_vs_all_pair_ce(num_classes: int) -> Callable[[Tensor, Tensor], Tensor]:
    """The pair loss whose mean over the ``C - 1`` wrong classes is the one-vs-all binary cross-entropy."""
    return lambda true_prob, wrong_prob: -torch.log(true_prob) - (num_classes - 1) * torch.log1p(-wrong_prob)


def fit_pairwise_dln(
    dln: nn.Module,
    target_loss: Callable[[Tensor, Tensor], Tensor],
    *,
    steps: int = 300,
    samples: int = 1024,
    lr: float = 1e-2,
    seed: int = 0,
) -> float:
    """Fit the DLN's MLP, in place, to ``target_loss(true_prob, wrong_prob)``.

    A least-squares regression of the loss value over prediction pairs drawn uniformly from
    ``[0.01, 0.99]^2`` (Adam, cosine schedule, about 0.3 s on one CPU core). The target is fitted divided by
    its largest value and the last layer scaled back, which the bias-free MLP allows exactly (it is
    positively homogeneous in its last layer), so targets of any size are fitted equally well. It is
    deterministic: its own generator, seeded by ``seed``, draws the data and the starting weights.

    Returns:
        The final mean squared error of the fit, relative to the target's largest value squared.
    """
    layers = [p for name, p in dln.named_parameters() if name.startswith("layers.")]
    generator = torch.Generator().manual_seed(seed)
    fit_params = [
        (torch.randn(m.shape, generator=generator) * (2.0 / m.shape[0]) ** 0.5).requires_grad_() for m in layers
    ]
    probs = torch.rand(samples, 2, generator=generator) * (1 - 2 * _PROB_MARGIN) + _PROB_MARGIN
    target = target_loss(probs[:, 0], probs[:, 1])
    scale = float(target.abs().max())
    target = target / scale
    optimizer = torch.optim.Adam(fit_params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.mse_loss(DF.pairwise_row_loss(fit_params, probs[:, 0], probs[:, 1]), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        for matrix, fitted in zip(layers, fit_params):
            matrix.copy_(fitted)
        layers[-1].mul_(scale)
    return float(loss.detach())


def fit_to_one_vs_all_ce(dln: PairwiseDLN) -> float:
    """Fit ``dln`` to :func:`one_vs_all_pair_ce` for its ``num_classes``; see :func:`fit_pairwise_dln`."""
    return fit_pairwise_dln(dln, one_vs_all_pair_ce(dln.num_classes))
