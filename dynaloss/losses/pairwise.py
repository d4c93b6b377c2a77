"""PairwiseDLN: the paper's 1-vs-1 Dynamic Loss Network for classification and per-pixel segmentation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dynaloss import _fast_pairwise as fast_pairwise
from dynaloss import functional as DF
from dynaloss._checks import (
    check_bool,
    check_class_weight,
    check_finite,
    check_floating,
    check_ignore_index,
    check_positive_int,
    check_same_device,
    check_tensor,
)
from dynaloss._fast_pairwise import ExactPairs, PairSurface, fast_pairwise_loss
from dynaloss._features import feature_family
from dynaloss._stage_loss import StageLossFn
from dynaloss._state import ValidatedLoad
from dynaloss.losses.warmstart import cross_entropy_weights, one_vs_all_weights
from dynaloss.settings import DEFAULT_DLN, INITS, PAIR_MEANS, Features, Init, PairMean, Reduction

__all__ = ["INITS", "PairwiseDLN"]

# The features each init builds its loss on ('paper' is random, so either); features=None picks the first.
_INIT_FEATURES = {"warm": ("sigmoid",), "ce": ("softmax",), "paper": DF.FEATURES}
# The matrices each built init starts from, by (num_classes, hidden, depth).
_BUILT = {
    "warm": one_vs_all_weights,
    "ce": lambda num_classes, hidden, depth: cross_entropy_weights(hidden, depth),
}


class PairwiseDLN(ValidatedLoad):
    r"""A learnable classification loss: a small MLP over 1-vs-1 prediction pairs (L2T-DLN).

    For logits :math:`z` and label :math:`y`, with :math:`s = \sigma(z)`, the loss of a sample is

    .. math::
        \ell(z, y) = \frac{1}{C-1} \sum_{j \ne y} \mathrm{MLP}_\phi([s_y, s_j, 1, 0])

    where the MLP is bias-free, ``4 -> 40 -> 40 -> 40 -> 40 -> 1`` with LeakyReLU. Drop it in where
    ``nn.CrossEntropyLoss()`` was, and let a :class:`dynaloss.Teacher` learn :math:`\phi`.

    With ``features='softmax'`` the rows are :math:`[1 - \min(-\log p_y, U) / U,\ \sigma(z_j - z_y),\ 1,\ 0]`
    with :math:`p = \mathrm{softmax}(z)` and :math:`U = 32` (:data:`dynaloss.functional.LOG_PROB_SPAN`): the
    true-class feature is the cross-entropy mapped to ``[0, 1]``, 1 for a perfect prediction, and the
    wrong-class feature the pair's softmax probability :math:`p_j / (p_y + p_j)`. Softmax cross-entropy is
    linear in the first, so this family holds CE exactly, and ``init='ce'`` starts there.

    Args:
        num_classes: number of classes ``C`` (at least 2).
        init: ``'warm'`` builds the MLP so that the loss is the one-vs-all binary cross-entropy
            :math:`-\log s_y - \sum_{j \ne y} \log(1 - s_j)`, interpolated at knots
            (:func:`~dynaloss.losses.warmstart.one_vs_all_weights`; sigmoid features); ``'ce'`` builds it so
            that the loss *is* softmax cross-entropy ``F.cross_entropy(z, y)`` wherever
            :math:`p_y \ge e^{-32}`, values and logit gradients within 1e-5 relative of it (below, the
            feature is clamped, the loss stays at 32 and its gradient is zero;
            :func:`~dynaloss.losses.warmstart.cross_entropy_weights`; softmax features); ``'paper'`` is the
            paper's random Kaiming-normal (fan_out) DLN, on either features
            (default: ``dynaloss.settings.DEFAULT_DLN['init']``).
        features: what the rows are made of: ``'sigmoid'`` (the paper's) or ``'softmax'`` (above); it must
            be the one ``init`` builds on (default: ``init``'s, ``'sigmoid'`` for ``'paper'``).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'`` (default: ``'mean'``). The mean over a batch in which
            nothing counts (every target ``ignore_index``) is 0 with zero gradients, where
            ``nn.CrossEntropyLoss`` returns NaN (its gradients are zero too).
        weight: ``(C,)`` class weights, as in ``nn.CrossEntropyLoss`` (default: none).
        ignore_index: target value that does not count (default: ``-100``; VOC uses 255).
        max_pixels: for per-pixel inputs, evaluate this many random valid pixels per image; the mean
            stays unbiased and the cost per image is bounded (default: every pixel).
        hidden: width of the hidden layers (default: ``40``).
        depth: number of hidden layers (default: ``4``).
        monotone: constrain the MLP's signs so the loss never rewards a wrong prediction: it is
            non-increasing in :math:`s_y` and non-decreasing in every :math:`s_j` for *any* parameters
            (:func:`dynaloss.functional.monotone_weights`); with ``'softmax'`` features, non-decreasing in the
            cross-entropy and in every pair probability, so, again, non-increasing in :math:`z_y` and
            non-decreasing in every :math:`z_j`. The parameters stay unconstrained, so a teacher
            updates them freely. ``False`` is the paper's unconstrained DLN
            (default: ``dynaloss.settings.DEFAULT_DLN['monotone']``).
        fast: with the module's own parameters, compute the loss's logit gradient in the forward
            (:mod:`dynaloss._fast_pairwise`): calls of fewer than :data:`~dynaloss._fast_pairwise.TABLE_ROWS`
            rows (``B x C``) evaluate the MLP exactly, in one forward-mode pass; larger ones read a table of
            its surface in certified affine pieces, rebuilt when the parameters change, each slope within
            1e-5 (relative) of the MLP's. That path differentiates in the logits (and ``sample_weight``)
            only, once: the DLN's own parameters get no gradient from it, and a second derivative
            (``create_graph=True``) raises. Calls with substituted parameters (a teacher's unroll, through
            :func:`torch.func.functional_call`) take the exact MLP. ``False`` always computes the exact MLP,
            differentiable in everything (default: ``True``).
        pair_mean: ``'wrong'``: a sample's loss is the mean over its ``C - 1`` wrong classes (the formula
            above); ``'all'``: the mean over all ``C`` rows, the true class's row counting 0, i.e.
            ``(C - 1) / C`` times that, as the authors' code computes it (the paper does not say; the
            ``"research"`` preset uses it) (default: ``'wrong'``).

    Shape:
        - input: ``(B, C)`` or ``(B, C, d1, ...)`` logits.
        - target: ``(B,)`` or ``(B, d1, ...)`` class indices.
        - sample_weight (forward): optional per-sample (per-pixel) weights of the target's shape (the
          paper's ``w``; ``weight`` is the class weights, as in torch).
        - output: scalar, or the target's shape with ``reduction='none'``; in the wider of the input's and the
          DLN's dtype, which it is computed in (float64 logits with the float32 DLN: float64, as
          ``F.cross_entropy``; half-precision logits: float32), on every path.

    Examples::

        >>> loss_fn = PairwiseDLN(num_classes=10)
        >>> logits = torch.randn(8, 10, requires_grad=True)
        >>> loss = loss_fn(logits, torch.randint(10, (8,)))
        >>> loss.backward()
        >>> ce = PairwiseDLN(num_classes=10, init="ce")  # F.cross_entropy, teachable
    """

    def __init__(
        self,
        num_classes: int,
        *,
        init: Init = DEFAULT_DLN["init"],
        features: Features | None = None,
        reduction: Reduction = "mean",
        weight: Tensor | None = None,
        ignore_index: int = -100,
        max_pixels: int | None = None,
        hidden: int = 40,
        depth: int = 4,
        monotone: bool = DEFAULT_DLN["monotone"],
        fast: bool = True,
        pair_mean: PairMean = "wrong",
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.init, self.features = _resolve_init_features(init, features)
        self.family = feature_family(self.features)
        self.reduction = DF.check_reduction(reduction)
        self.ignore_index = check_ignore_index(ignore_index)
        if max_pixels is not None:
            check_positive_int(max_pixels, "max_pixels")
            if reduction == "none":
                raise ValueError("max_pixels subsamples pixels, so it needs reduction 'mean' or 'sum', not 'none'")
        self.max_pixels = max_pixels
        self.weight: Tensor | None
        self.register_buffer("weight", check_class_weight(weight, num_classes))
        widths = [4] + [check_positive_int(hidden, "hidden")] * check_positive_int(depth, "depth") + [1]
        self.layers = nn.ParameterList(
            nn.Parameter(torch.empty(out_f, in_f)) for in_f, out_f in zip(widths[:-1], widths[1:])
        )
        self.monotone = check_bool(monotone, "monotone")
        self.fast = check_bool(fast, "fast")
        if pair_mean not in PAIR_MEANS:
            raise ValueError(f"pair_mean must be one of {PAIR_MEANS}, got {pair_mean!r}")
        self.pair_mean = pair_mean
        # the fast path's table and what it was built from: (target_range, copies of the raw layers), table
        self._surface: tuple[tuple[float | None, list[Tensor]], PairSurface] | None = None
        self.target_range: float | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the MLP as ``init`` says."""
        build = _BUILT.get(self.init)
        if build is not None:
            built = build(self.num_classes, self.layers[0].shape[0], len(self.layers) - 1)
            with torch.no_grad():
                for matrix, value in zip(self.layers, built):
                    matrix.copy_(value)
        else:
            for matrix in self.layers:
                nn.init.kaiming_normal_(matrix, mode="fan_out")
        self.target_range = None
        if self.monotone:
            with torch.no_grad():
                self.target_range = float(DF.loss_range(DF.monotone_weights(list(self.layers))))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, init={self.init!r}, features={self.features!r}, "
            f"monotone={self.monotone}, reduction={self.reduction!r}, fast={self.fast}"
            + ("" if self.pair_mean == "wrong" else f", pair_mean={self.pair_mean!r}")
        )

    def mlp_weights(self, layers: Sequence[Tensor] | None = None) -> list[Tensor]:
        """The matrices the MLP computes with: ``layers`` (default: this DLN's), constrained if ``monotone``.

        A monotone DLN's matrices are sign-constrained (:func:`dynaloss.functional.monotone_weights`) and
        its range is pinned to the one it started with (:func:`dynaloss.functional.pin_loss_range`).
        """
        raw = list(self.layers if layers is None else layers)
        if not self.monotone:
            return raw
        # set by reset_parameters, and by set_extra_state, which refuses a monotone state without it
        assert self.target_range is not None
        return DF.pin_loss_range(DF.monotone_weights(raw), self.target_range)

    def get_extra_state(self) -> dict[str, Any]:
        # the same numbers mean another loss under the other constraint, on other features, or for another C
        # (a warm start's pinned range depends on it), so the state says which it is
        return {
            "monotone": self.monotone,
            "target_range": self.target_range,
            "num_classes": self.num_classes,
            "features": self.features,
            "pair_mean": self.pair_mean,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        missing = [key for key in self.get_extra_state() if key not in state]
        if missing:
            raise ValueError(f"the state of a PairwiseDLN must hold {missing} (it holds {sorted(state)})")
        for key in ("num_classes", "monotone", "features", "pair_mean"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"the state is of a DLN with {key}={state[key]!r}, this one has {key}={getattr(self, key)!r}"
                )
        target_range = state["target_range"]
        if self.monotone and not isinstance(target_range, (int, float)):
            raise ValueError(
                f"the state of a monotone DLN must hold its pinned range ('target_range'), got {target_range!r}"
            )
        self.target_range = None if target_range is None else float(target_range)

    def forward(self, input: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        """The loss of ``input`` logits for ``target`` classes, each sample (pixel) weighted by ``sample_weight``."""
        ignored = self._check(input, target, sample_weight)
        layers = list(self.layers)
        # The module's own parameters (or none that need a gradient): nobody differentiates through the DLN.
        # Substitutes from torch.func.functional_call (a teacher's unroll) are plain tensors: exact path.
        if not (self.fast and all(isinstance(m, nn.Parameter) or not m.requires_grad for m in layers)):
            return self.loss_with(self.mlp_weights(), input, target, sample_weight)
        dtype = torch.promote_types(input.dtype, layers[0].dtype)

        def per_sample(logits: Tensor, target: Tensor, mean: bool = False) -> Tensor:
            return fast_pairwise_loss(self._pairs(logits.numel(), dtype), logits, target, mean=mean)

        plain = sample_weight is None and self.weight is None and not ignored and self.reduction == "mean"
        if input.dim() == 2 and plain:
            loss = per_sample(input, target, mean=True)  # plain classification: no reshaping
            return loss if self.pair_mean == "wrong" else loss * ((self.num_classes - 1) / self.num_classes)
        return self.loss_with([], input, target, sample_weight, per_sample=per_sample)

    def _pairs(self, rows: int, dtype: torch.dtype) -> ExactPairs | PairSurface:
        """The fast path's evaluator for a call of ``rows`` rows, in ``dtype`` (the exact path's: the wider of
        the logits' and the DLN's): the MLP itself below :data:`~dynaloss._fast_pairwise.TABLE_ROWS`, computed
        from the parameters as they are (no read-back), else the table."""
        if rows < fast_pairwise.TABLE_ROWS:
            with torch.no_grad():
                return ExactPairs([m.to(dtype) for m in self.mlp_weights()], self.family)
        return self._surface_for(list(self.layers), dtype)

    def _surface_for(self, layers: list[Tensor], dtype: torch.dtype) -> PairSurface:
        """The fast path's table of the DLN as it is now, in ``dtype``: kept while the parameters are unchanged."""
        # Compared by value (a read-back per parameter, beside the table's own), not by version counter:
        # writes through .data do not bump a parameter's _version.
        kept = self._surface
        if (
            kept is None
            or kept[1].first.dtype != dtype
            or kept[0][0] != self.target_range
            or not all(map(_same, kept[0][1], layers))
        ):
            with torch.no_grad():
                copies = [m.detach().clone() for m in layers]
                matrices = [m.to(dtype) for m in self.mlp_weights(copies)]
                kept = (self.target_range, copies), PairSurface(matrices, self.family)
            self._surface = kept
        return kept[1]

    def __getstate__(self) -> dict[str, Any]:
        # the table is a cache, rebuilt on demand: copies and pickles leave it behind
        return {**super().__getstate__(), "_surface": None}

    def loss_with(
        self,
        matrices: Sequence[Tensor],
        input: Tensor,
        target: Tensor,
        sample_weight: Tensor | None = None,
        *,
        per_sample: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """The loss with the MLP's matrices given (as :meth:`mlp_weights` returns them), inputs unchecked.

        What :meth:`forward` computes after its checks. A teacher's unroll calls it with matrices computed
        once per stage, since the DLN does not change within one; the fast path, with ``per_sample`` (see
        :func:`dynaloss.functional.pairwise_dln_loss`) in their place.
        """
        return DF.pairwise_dln_loss(
            matrices,
            input,
            target,
            sample_weight=sample_weight,
            class_weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            max_pixels=self.max_pixels,
            features=self.features,
            per_sample=per_sample,
            pair_mean=self.pair_mean,
        )

    def stage_loss(self, params: Mapping[str, Tensor], targets: Sequence[Tensor]) -> StageLossFn | None:
        """The loss of a teacher's unroll stage, the DLN's parameters fixed at ``params`` (exact MLP).

        The stage-loss protocol (:mod:`dynaloss._stage_loss`): the constrained matrices are computed once for
        the stage and the stage's ``targets`` checked at once. A subclass with its own ``forward`` declines
        (``None``), since its loss may be another.
        """
        if type(self).forward is not PairwiseDLN.forward:
            return None
        if targets:
            self.check_target(torch.cat([target.reshape(-1) for target in targets]))
        matrices = self.mlp_weights([params.get(name, param) for name, param in self.named_parameters()])

        def loss(input: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
            self.check_shapes(input, target, sample_weight)
            return self.loss_with(matrices, input, target, sample_weight)

        return loss

    def check_target(self, target: Tensor) -> bool:
        """Raise ``ValueError`` if ``target`` holds a class index outside ``[0, C)`` (``ignore_index`` aside).

        Returns:
            Whether it may hold ``ignore_index`` (``False``: every element is a class index).
        """
        low, high = (int(end) for end in target.aminmax())  # in the common case, the only read-back
        if low >= 0 and high < self.num_classes:
            return 0 <= self.ignore_index < self.num_classes
        counted = target[target != self.ignore_index]
        if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= self.num_classes):
            raise ValueError(
                f"target holds class indices outside [0, {self.num_classes}) "
                f"(min {int(counted.min())}, max {int(counted.max())}; ignore_index={self.ignore_index})"
            )
        return True

    def _check(self, input: object, target: object, sample_weight: object) -> bool:
        """The checks of :meth:`forward`; returns whether ``target`` may hold ``ignore_index``."""
        self.check_shapes(input, target, sample_weight)
        if sample_weight is not None:
            check_finite(sample_weight, "sample_weight")  # type: ignore[arg-type]
        check_finite(input, "input")  # type: ignore[arg-type]
        return self.check_target(target)  # type: ignore[arg-type]

    def check_shapes(self, input: object, target: object, sample_weight: object = None) -> None:
        """The checks of :meth:`forward` that need no values: types, dtypes, shapes and devices (no read-back)."""
        input = check_tensor(input, "input")
        target = check_tensor(target, "target")
        named = {"input": input, "target": target}
        if sample_weight is not None:
            named["sample_weight"] = check_tensor(sample_weight, "sample_weight")
        check_same_device(named, self.layers[0], "the DLN")
        if not input.is_floating_point():
            raise TypeError(f"input must be floating-point logits, got dtype {input.dtype}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        if input.dim() < 2:
            raise ValueError(f"input must be (B, C) or (B, C, d1, ...) logits, got shape {tuple(input.shape)}")
        if input.shape[1] != self.num_classes:
            raise ValueError(f"input has {input.shape[1]} classes in dim 1, expected num_classes={self.num_classes}")
        expected = input.shape[:1] + input.shape[2:]
        if target.shape != expected:
            raise ValueError(
                f"target must have shape {tuple(expected)} for input {tuple(input.shape)}, got {tuple(target.shape)}"
            )
        if input.shape[0] == 0 or input.numel() == 0:
            raise ValueError(f"input is empty (shape {tuple(input.shape)})")
        if sample_weight is not None:
            sample_weight = named["sample_weight"]
            what = "floating-point per-sample weights (class weights are the constructor's weight=)"
            check_floating(sample_weight, "sample_weight (the third argument)", what)
            if sample_weight.shape != target.shape:
                want, got = tuple(target.shape), tuple(sample_weight.shape)
                raise ValueError(f"sample_weight must have the target's shape {want}, got {got}")


def _same(kept: Tensor, current: Tensor) -> bool:
    """Whether ``current`` still holds exactly ``kept`` (its values, on the same device and in the same dtype)."""
    return kept.device == current.device and kept.dtype == current.dtype and torch.equal(kept, current)


def _resolve_init_features(init: object, features: object) -> tuple[str, str]:
    """``(init, features)`` with features' default filled in; raise ``ValueError`` for a pair that does not go
    together."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    allowed = _INIT_FEATURES[init]  # type: ignore[index]
    chosen = allowed[0] if features is None else feature_family(features).name
    if chosen not in allowed:
        raise ValueError(
            f"init={init!r} builds its loss on features {' or '.join(map(repr, allowed))}, got features={chosen!r} "
            "(init='warm' is the one-vs-all BCE of sigmoids, init='ce' softmax cross-entropy, init='paper' either)"
        )
    return init, chosen  # type: ignore[return-value]
