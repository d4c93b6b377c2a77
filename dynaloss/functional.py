"""Pure functions behind the Dynamic Loss Networks.

Everything here is a function of tensors only: no modules, no hidden state, no host-device
synchronisation. The modules in :mod:`dynaloss.losses` validate their inputs and call into these, and the
unroll calls the modules through :func:`torch.func.functional_call`, so one forward serves both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dynaloss._features import LOG_PROB_SPAN, feature_family
from dynaloss.settings import FEATURES, REDUCTIONS

__all__ = [
    "FEATURES",
    "LOG_PROB_SPAN",
    "REDUCTIONS",
    "check_reduction",
    "leaky_mlp",
    "loss_range",
    "monotone_weights",
    "pairwise_dln_loss",
    "pairwise_mean_loss",
    "pairwise_row_loss",
    "pin_loss_range",
    "reduce_loss",
]


# loss_range reads the pair loss this far inside the corners of the unit square, where every unit of the built
# starts is strictly on one side of its kink (docs/design-notes-core.md).
_CORNER_INSET = 1e-3


def check_reduction(reduction: object) -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`, else raise ``ValueError``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction  # type: ignore[return-value]


def leaky_mlp(matrices: Sequence[Tensor], rows: Tensor, negative_slope: float = 0.01) -> Tensor:
    """Bias-free MLP with LeakyReLU between layers.

    Args:
        matrices: layer matrices ``(out, in)``, first to last; the last has ``out = 1``.
        rows: ``(..., in)`` inputs.
        negative_slope: LeakyReLU slope (default: ``0.01``, PyTorch's).

    Returns:
        ``(...)``: the network's scalar output per row.
    """
    hidden = rows
    for matrix in matrices[:-1]:
        hidden = F.leaky_relu(hidden @ matrix.T, negative_slope)
    return (hidden @ matrices[-1].T).squeeze(-1)


def monotone_weights(raw: Sequence[Tensor]) -> list[Tensor]:
    """The layer matrices that make the pairwise MLP a *proper* loss of its rows ``[s_y, s_j, 1, 0]``.

    The first layer's true-class column becomes ``-|w|`` and its wrong-class column ``+|w|`` (the constant
    columns, the MLP's bias, stay free); every later matrix becomes ``|W|``. LeakyReLU is increasing, and
    non-negative sums of increasing functions are increasing, so the loss can only fall when the true class's
    prediction rises and only rise when a wrong class's does: no parameters, however a teacher moves them,
    make it reward a wrong prediction. (LeakyReLU is also convex, so the loss is convex in ``(s_y, s_j)``.)
    ``|.|`` keeps the MLP positively homogeneous in its last layer, which the warm start relies on.

    Args:
        raw: the unconstrained matrices, first layer first; the first has at least two columns.

    Returns:
        The constrained matrices, differentiable in ``raw``.
    """
    first = raw[0]
    signed = torch.cat([-first[:, :1].abs(), first[:, 1:2].abs(), first[:, 2:]], dim=1)
    return [signed, *(matrix.abs() for matrix in raw[1:])]


def loss_range(matrices: Sequence[Tensor]) -> Tensor:
    """The pair loss near its worst corner minus near its best: ``f(e, 1 - e) - f(1 - e, e)``, ``e = 1e-3``.

    For a monotone DLN (:func:`monotone_weights`) these points hold the loss's largest and smallest values
    over the square ``[e, 1 - e]^2``, so this is its range there. The inset keeps the range differentiable in
    the parameters of the built starts, whose units have their kinks on the corners themselves.
    """
    inner = 1.0 - _CORNER_INSET
    corners = matrices[0].new_tensor([[_CORNER_INSET, inner], [inner, _CORNER_INSET]])
    worst, best = pairwise_row_loss(matrices, corners[:, 0], corners[:, 1])
    return worst - best


def pin_loss_range(matrices: Sequence[Tensor], target_range: float) -> list[Tensor]:
    """``matrices`` with the last layer rescaled so that :func:`loss_range` is ``target_range``.

    The MLP is linear in its last layer, so this is the same loss divided by its range: a loss whose size
    no parameter can change, only its shape. A teacher then cannot buy a shorter-horizon gain by turning
    the student's effective learning rate up (which it otherwise does, until the student diverges).
    """
    current = loss_range(matrices).clamp_min(torch.finfo(matrices[-1].dtype).tiny)
    return [*matrices[:-1], matrices[-1] * (target_range / current)]


def pairwise_mean_loss(
    matrices: Sequence[Tensor],
    logits: Tensor,
    target: Tensor,
    negative_slope: float = 0.01,
    *,
    features: str = "sigmoid",
) -> Tensor:
    """Mean of the MLP over each sample's wrong-class pair rows, without building the rows.

    For every sample and every *wrong* class ``j`` the row is ``[a_y, a_j, 1, 0]``: the true-class and the
    wrong-class prediction and the pair's 1-vs-1 labels. The constant label features are what keep a
    bias-free MLP from being positively homogeneous (whose minimum would sit at ``a = 0`` for every class).
    Both predictions are in ``[0, 1]``, 1 the most confident:

    - ``'sigmoid'``: ``a_y = sigmoid(z_y)``, ``a_j = sigmoid(z_j)`` (the paper's).
    - ``'softmax'``: ``a_y = 1 - min(-log p_y, U) / U`` and ``a_j = sigmoid(z_j - z_y) = p_j / (p_y + p_j)``,
      with ``p = softmax(z)`` and ``U =`` :data:`LOG_PROB_SPAN`: cross-entropy is ``U (1 - a_y)``.

    The first layer's product with a row ``[a_y, a_j, 1, 0]`` is ``a_y W[:, 0] + a_j W[:, 1] + W[:, 2]``,
    formed for every class at once (:meth:`dynaloss._features.FeatureFamily.first_layer`); the true class's own
    row is computed too and left out of the mean.

    Args:
        matrices: the MLP's matrices (see :func:`leaky_mlp`).
        logits: ``(M, C)``.
        target: ``(M,)`` class indices in ``[0, C)``.
        negative_slope: LeakyReLU slope.
        features: ``'sigmoid'`` | ``'softmax'``, as above (default: ``'sigmoid'``).

    Returns:
        ``(M,)``, computed in the wider of the logits' and the matrices' dtypes (float64 logits with float32
        matrices: float64, as ``F.cross_entropy`` computes in its input's; half-precision logits: the
        matrices' float32).
    """
    num_classes = logits.shape[-1]
    dtype = torch.promote_types(logits.dtype, matrices[0].dtype)
    if matrices[0].dtype != dtype:
        matrices = [matrix.to(dtype) for matrix in matrices]  # differentiable: a teacher's hypergradient passes
    first = matrices[0]
    true_term, probs = feature_family(features).first_layer(first, logits, target)
    hidden = true_term[:, None, :] + probs[..., None] * first[:, 1]
    hidden = F.leaky_relu(hidden, negative_slope)
    for matrix in matrices[1:-1]:
        hidden = F.leaky_relu(hidden @ matrix.T, negative_slope)
    pair_loss = (hidden @ matrices[-1].T).squeeze(-1)  # (M, C)
    wrong = torch.ones_like(pair_loss).scatter_(1, target[:, None].long(), 0.0)
    return (pair_loss * wrong).sum(-1) / (num_classes - 1)


def pairwise_row_loss(
    matrices: Sequence[Tensor], true_prob: Tensor, wrong_prob: Tensor, negative_slope: float = 0.01
) -> Tensor:
    """DLN value of the pair (true-class prediction, wrong-class prediction), elementwise.

    This is the surface of the paper's Figure 3. Inputs are a row's two predictions (:func:`pairwise_mean_loss`),
    in ``[0, 1]``, of any matching shape.
    """
    ones = torch.ones_like(true_prob)
    rows = torch.stack([true_prob, wrong_prob, ones, torch.zeros_like(ones)], -1)
    return leaky_mlp(matrices, rows.to(matrices[0].dtype), negative_slope)


def reduce_loss(per_element: Tensor, element_weight: Tensor, normaliser: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` the way :class:`torch.nn.CrossEntropyLoss` does, but for nothing counted.

    ``'mean'`` divides the weighted sum by ``normaliser`` (the summed class weights of the counted
    elements), so per-sample weights rescale the loss and class weights give a weighted mean. Where nothing
    counts (``normaliser`` is 0: every target ``ignore_index``, e.g. an all-"void" crop, or every counted
    class of weight 0) the mean is ``0`` and its gradient zero, where ``nn.CrossEntropyLoss`` returns NaN
    (with zero gradients): a batch with nothing to learn from leaves the model as it is, and neither the
    loss's value nor a ``loss.backward()`` carries a NaN into a model, an optimizer or a log.
    """
    weighted = per_element * element_weight
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    # on the device, no read-back: the sum is 0 (an exact 0 times each element) wherever the normaliser is
    return total / torch.where(normaliser > 0, normaliser, torch.ones_like(normaliser))


def _subsample_pixels(valid: Tensor, max_pixels: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Pick up to ``max_pixels`` valid pixels per image uniformly without replacement.

    Args:
        valid: ``(B, P)`` bool, the pixels that count.

    Returns:
        ``(index, scale)``: ``(B, K)`` pixel indices, and ``(B, K)`` weights ``n_valid / n_picked`` for the
        picked valid pixels (0 elsewhere), which make the subsampled sum an unbiased estimate of the full one.
    """
    noise = torch.rand(valid.shape, generator=generator, device=valid.device)
    noise = noise.masked_fill(~valid, 2.0)  # invalid pixels sort last
    index = noise.topk(max_pixels, dim=1, largest=False).indices
    picked_valid = valid.gather(1, index)
    n_valid = valid.sum(1, keepdim=True)
    n_picked = picked_valid.sum(1, keepdim=True).clamp_min(1)
    scale = picked_valid * (n_valid / n_picked)
    return index, scale


def pairwise_dln_loss(
    matrices: Sequence[Tensor],
    logits: Tensor,
    target: Tensor,
    *,
    sample_weight: Tensor | None = None,
    class_weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    max_pixels: int | None = None,
    generator: torch.Generator | None = None,
    negative_slope: float = 0.01,
    features: str = "sigmoid",
    per_sample: Callable[[Tensor, Tensor], Tensor] | None = None,
    pair_mean: str = "wrong",
) -> Tensor:
    """The pairwise (1-vs-1) Dynamic Loss Network on classification or per-pixel logits.

    The loss of one sample (or pixel) is the mean of the DLN over its ``C - 1`` wrong-class rows
    (:func:`pairwise_mean_loss`), or with ``pair_mean='all'`` their sum over ``C``. Inputs are assumed
    valid; :class:`dynaloss.PairwiseDLN` checks them.

    Args:
        matrices: the DLN's layer matrices (see :func:`leaky_mlp`).
        logits: ``(B, C)`` or ``(B, C, d1, ...)``.
        target: ``(B,)`` or ``(B, d1, ...)`` class indices; ``ignore_index`` marks elements that don't count.
        sample_weight: per-sample (or per-pixel) weights of the target's shape, the paper's ``w`` (default: 1).
        class_weight: ``(C,)`` class weights, as ``nn.CrossEntropyLoss(weight=...)``.
        ignore_index: target value that is left out (default: ``-100``).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'`` (default: ``'mean'``).
        max_pixels: for spatial inputs, evaluate only this many random valid pixels per image; the mean and
            the sum stay unbiased (default: every pixel).
        generator: random source of the pixel subsampling (default: torch's global one).
        negative_slope: LeakyReLU slope.
        features: ``'sigmoid'`` | ``'softmax'``, what the rows are made of (default: ``'sigmoid'``).
        per_sample: computes the per-sample loss from ``(M, C)`` logits and ``(M,)`` targets in place of
            :func:`pairwise_mean_loss` with ``matrices`` (a fixed DLN's fast path,
            :func:`dynaloss._fast_pairwise.fast_pairwise_loss`); the reduction around it is the same
            (default: ``None``).
        pair_mean: ``'wrong'``: a sample's loss is the mean over its ``C - 1`` wrong-class rows; ``'all'``:
            the mean over all ``C`` rows with the true class's row counted as 0, i.e. ``(C - 1) / C`` times
            that (the authors' code) (default: ``'wrong'``).

    Returns:
        A scalar, or the target's shape with ``reduction='none'`` (0 where ignored). The ``'mean'`` of a
        batch in which nothing counts is 0, with zero gradients (:func:`reduce_loss`).
    """
    num_classes = logits.shape[1]
    target_shape = target.shape
    if logits.dim() > 2:
        logits = logits.movedim(1, -1)
    batch = logits.shape[0]
    flat_logits = logits.reshape(batch, -1, num_classes)  # (B, P, C), P = 1 for plain classification
    flat_target = target.reshape(batch, -1).long()
    valid = flat_target != ignore_index
    flat_weight = None if sample_weight is None else sample_weight.reshape(batch, -1)
    safe_target = flat_target.masked_fill(~valid, 0)
    # counted in float32 at least: a half-precision sum of the counts rounds (2,178 pixels sum to 2,176 in bf16)
    count_dtype = torch.promote_types(logits.dtype, torch.float32)
    class_w = valid.to(count_dtype)
    if class_weight is not None:
        class_w = class_w * class_weight.to(count_dtype)[safe_target]
    normaliser = class_w.sum()

    scale = None
    if max_pixels is not None and max_pixels < flat_logits.shape[1]:
        index, scale = _subsample_pixels(valid, max_pixels, generator)
        flat_logits = flat_logits.gather(1, index[..., None].expand(-1, -1, num_classes))
        safe_target = safe_target.gather(1, index)
        class_w = class_w.gather(1, index)
        if flat_weight is not None:
            flat_weight = flat_weight.gather(1, index)

    flat_logits, safe_target = flat_logits.reshape(-1, num_classes), safe_target.reshape(-1)
    if per_sample is None:
        per_element = pairwise_mean_loss(matrices, flat_logits, safe_target, negative_slope, features=features)
    else:
        per_element = per_sample(flat_logits, safe_target)
    if pair_mean == "all":
        per_element = per_element * ((num_classes - 1) / num_classes)
    per_element = per_element.reshape(class_w.shape)
    element_weight = class_w if flat_weight is None else class_w * flat_weight
    if scale is not None:
        element_weight = element_weight * scale
    out = reduce_loss(per_element, element_weight.to(per_element.dtype), normaliser, reduction)
    return out.reshape(target_shape) if reduction == "none" else out
