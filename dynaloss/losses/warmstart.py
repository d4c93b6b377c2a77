"""Warm start: fit a pairwise DLN to a known loss before teaching begins.

The paper starts from a random DLN, which in most seeds is anti-aligned with cross-entropy: the student
first learns the wrong thing until the teacher turns the DLN around. Regressing the DLN onto the 1-vs-1
binary cross-entropy first gives the teacher a loss that already teaches, to refine from there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynaloss import functional as DF

__all__ = ["binary_pair_ce", "fit_pairwise_dln", "fit_to_binary_ce"]

# Probabilities are drawn from this interval; the target is finite (at most ~9.2) there.
_PROB_MARGIN = 0.01


def binary_pair_ce(true_prob: Tensor, wrong_prob: Tensor) -> Tensor:
    """1-vs-1 binary cross-entropy ``-log s_y - log(1 - s_j)`` of a (true, wrong) prediction pair."""
    return -torch.log(true_prob) - torch.log1p(-wrong_prob)


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
    ``[0.01, 0.99]^2`` (Adam, cosine schedule, about 0.3 s on one CPU core). It is deterministic: its own
    generator, seeded by ``seed``, draws the data and the starting weights, so every warm DLN of a given
    width and depth is the same function.

    Returns:
        The final mean squared error of the fit.
    """
    layers = [p for name, p in dln.named_parameters() if name.startswith("layers.")]
    generator = torch.Generator().manual_seed(seed)
    fit_params = [
        (torch.randn(m.shape, generator=generator) * (2.0 / m.shape[0]) ** 0.5).requires_grad_() for m in layers
    ]
    probs = torch.rand(samples, 2, generator=generator) * (1 - 2 * _PROB_MARGIN) + _PROB_MARGIN
    target = target_loss(probs[:, 0], probs[:, 1])
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
    return float(loss.detach())


def fit_to_binary_ce(dln: nn.Module) -> float:
    """Fit ``dln`` to :func:`binary_pair_ce`; see :func:`fit_pairwise_dln`."""
    return fit_pairwise_dln(dln, binary_pair_ce)
