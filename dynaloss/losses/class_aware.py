"""ClassAwareDLN: a learnable classification loss of interpretable per-class and per-pair parameters, CE at 0."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dynaloss import functional as DF
from dynaloss._checks import (
    NonFiniteError,
    check_bool,
    check_class_weight,
    check_finite,
    check_ignore_index,
    check_positive_float,
    check_positive_int,
    check_same_device,
    check_tensor,
)
from dynaloss._state import ValidatedLoad
from dynaloss.settings import CLASS_AWARE_TEACHING, Reduction

__all__ = [
    "ClassAwareDLN",
    "class_aware_loss",
    "forward_log_weights",
    "generalized_ce",
    "pair_offset_matrix",
    "prior_shift",
    "q_to_robustness",
    "robustness_to_q",
]

# Below this |q| the loss is evaluated by its series in q: (1 - p^q)/q -> -log p without 0/0.
_SERIES_Q = 1e-6
# q = (Q + m) (sigmoid(k r + log(m / Q)) - sigmoid(log(m / Q))), m = _Q_FLOOR, k the slope (q_slope, default
# _Q_SLOPE), Q the ceiling (max_q, default _MAX_Q): 0 at r = 0 (cross-entropy, exactly), increasing, smooth, in
# (-m, Q). The floor is what keeps the loss from being taught into one that trains the student to NaN: with q < 0 a
# sample's gradient is p^q times cross-entropy's, unbounded as p -> 0 (measured: on a long-tailed set a teacher
# drove rare classes' q to -0.6 and the student diverged by step 1,000 of 6,000); at -0.1 an implausible sample
# (p = 1e-4) counts 2.5 times, not 250 times. dq/dr at the start is k m Q / (m + Q): 0.79 at k = 9, Q = 0.7, so a
# teacher's Adam steps of 0.05 in r move q by about 0.04 a round at first. The slope was 3 (0.27 at the start) until
# stop 37: q then arrived late under uniform noise (docs/results.md, "The rate grid"); 9 alone moved no cell beyond
# its seeds' spread, and with the logit pair form it competed with the pair offsets' correction ("A sparsity prior
# and a faster q"). The ceiling: with keep_scale, q held at 0.85 or 0.95 from the first step sent 10 students in
# 12 to chance at the rate 0.05 (0.7: none under 40 % uniform noise), while teachers drove q to 0.8-1.0 under
# uniform noise and a shared q to 0.9-1.0 on clean data; with the forward pair form and the sparsity prior, the
# ceiling 0.7 is the tuned grid's configuration (docs/results.md, "A ceiling on q").
_Q_FLOOR = 0.1
_Q_SLOPE = 9.0
_MAX_Q = 0.7
# q * log p is capped here before exp: with q < 0 the loss grows like p^q, which overflows float32 near 88.
_MAX_EXPONENT = 30.0
# A pair offset relative to its row's true class, B_yc - B_yy, is _PAIR_CAP (1 - softplus(-2 t / a) / log 2) of
# its parameter t, a = _PAIR_CAP / log 2: 0 at t = 0 (cross-entropy), slope 1 there (no kink at the start),
# unbounded below (a label y often given to class c may stop pushing away from c entirely) but at most _PAIR_CAP
# above. Raising an entry demands a margin CE does not, and a 10-step lookahead rewards that whatever the labels
# (it steepens the next steps): unbounded, the teacher raised entries by up to +2.3 and at the tuned rate 0.1 sent
# three students in fourteen to chance (all-dead ReLUs); capped at 0.5, more than half the entries still rose
# above +0.25 on uniformly noisy labels; at 0.1 (most still at the cap, demanding a fifth as much) every corrupted
# cell of the tuned CNN grid gained 1.3-2.1 points (docs/results.md, "Pair offsets").
_PAIR_CAP = 0.1
# pair_form="forward": the mixing weight of class c in the loss of label y is
# eps_yc = sigmoid(k t + logit(_FORWARD_START)) of its parameter t, k = _FORWARD_SLOPE: _FORWARD_START at t = 0,
# increasing, log eps_yc ~ k t + log _FORWARD_START while small, below 1 (class c never counts more than y
# itself). The start is not 0 (that would be a non-negative weight at its minimum, slope 0) and not large: at 1e-3
# a sample's loss is cross-entropy's until its label's probability falls below about 1e-3 of another class's, and
# a teacher's steps on t are steps in log eps, so a drift down costs nothing and a rise must be earned. The slope:
# 40 % pair flips want eps = 0.67, 7.6 units of log-odds from the start; at k = 1 a teacher's Adam steps of 0.05
# a round arrived too late (3 seeds, 78.9 % against 91.5 % at k = 3; docs/results.md, "Forward correction").
_FORWARD_START = 1e-3
_FORWARD_SLOPE = 3.0
PAIR_FORMS = ("logit", "forward")


def generalized_ce(log_prob: Tensor, q: Tensor) -> Tensor:
    r"""``(1 - p^q) / q`` with ``log p`` given: the generalized cross-entropy, smooth in ``q`` through 0 (= CE).

    Its logit gradient is :math:`p^q` times cross-entropy's: ``q > 0`` discounts samples the model finds
    unlikely (GCE, robust to wrong labels; ``q = 1`` is the mean absolute error), ``q < 0`` stresses them.
    """
    small = q.abs() < _SERIES_Q
    safe_q = torch.where(small, torch.full_like(q, _SERIES_Q), q)
    exponent = (safe_q * log_prob).clamp_max(_MAX_EXPONENT)
    exact = -torch.expm1(exponent) / safe_q
    # -l (1 + x / 2 + x^2 / 6 + x^3 / 24) with x = q l: its error, x^4 / 120, is below float64 rounding for
    # |q| < 1e-6 wherever |l| < 1e3
    x = q * log_prob
    series = -log_prob * (1 + x / 2 + x * x / 6 + x * x * x / 24)
    return torch.where(small, series, exact)


def robustness_to_q(robustness: Tensor, *, slope: float = _Q_SLOPE, max_q: float = _MAX_Q) -> Tensor:
    """The GCE exponents ``q`` of raw ``robustness`` parameters: 0 at 0, increasing with ``slope`` times the
    parameter, within ``(-0.1, max_q)``."""
    shift = torch.full_like(robustness, math.log(_Q_FLOOR / max_q))
    return (max_q + _Q_FLOOR) * (torch.sigmoid(slope * robustness + shift) - torch.sigmoid(shift))


def q_to_robustness(q: float | Tensor, *, slope: float = _Q_SLOPE, max_q: float = _MAX_Q) -> Tensor:
    """The inverse of :func:`robustness_to_q`: the raw parameter that gives the exponent ``q`` in
    ``(-0.1, max_q)``."""
    q = q if isinstance(q, Tensor) and q.is_floating_point() else torch.as_tensor(q, dtype=torch.get_default_dtype())
    if not bool(((q > -_Q_FLOOR) & (q < max_q)).all()):
        raise ValueError(f"q must lie in (-{_Q_FLOOR}, {max_q}), got {q}")
    shift = torch.log(torch.tensor(_Q_FLOOR / max_q, dtype=q.dtype))
    return (torch.logit(q / (max_q + _Q_FLOOR) + torch.sigmoid(shift)) - shift) / slope


def class_aware_loss(
    logits: Tensor,
    target: Tensor,
    offsets: Tensor,
    robustness: Tensor,
    pair_offsets: Tensor | None = None,
    pair_form: str = "forward",
    *,
    q_slope: float = _Q_SLOPE,
    max_q: float = _MAX_Q,
) -> Tensor:
    r"""Per-sample loss of :class:`ClassAwareDLN` (before ``keep_scale``) on ``(M, C)`` logits, ``(M,)`` classes.

    :math:`\ell = \mathrm{GCE}_{q_y}(\mathrm{softmax}(z + b + B_y)_y)` with :math:`q =`
    :func:`robustness_to_q`:math:`(r)` and :math:`B_y` the row ``y`` of :func:`pair_offset_matrix` of the
    ``(C, C)`` ``pair_offsets`` (none: 0) with ``pair_form='logit'``; there, at ``offsets = robustness =
    pair_offsets = 0``, it is ``F.cross_entropy(z, y, reduction='none')``. With ``pair_form='forward'`` (the
    default) the pair parameters instead mix
    the other classes' probabilities into the label's, :math:`\tilde p_y = p_y + \sum_{c \ne y} \epsilon_{yc} p_c`
    with :math:`\log \epsilon =` :func:`forward_log_weights` ``(pair_offsets)`` (a forward correction), and
    GCE is taken of :math:`\tilde p_y`. ``q_slope`` and ``max_q`` are :func:`robustness_to_q`'s ``slope`` and
    ``max_q``.
    """
    log_prob = _offset_log_prob(logits, target, offsets, pair_offsets, pair_form)
    return generalized_ce(log_prob, _sample_q(robustness, target, logits, q_slope, max_q))


def pair_offset_matrix(pair_offsets: Tensor) -> Tensor:
    """The ``(C, C)`` pair offsets ``B`` that raw ``pair_offsets`` parameters give: 0 on the diagonal, each
    off-diagonal entry an increasing function of its parameter, 0 at 0, below ``_PAIR_CAP`` (0.1)."""
    scale = _PAIR_CAP / math.log(2)
    relative = _PAIR_CAP - scale * nn.functional.softplus(-2 * pair_offsets / scale)
    off_diagonal = ~torch.eye(pair_offsets.shape[-1], dtype=torch.bool, device=pair_offsets.device)
    return relative * off_diagonal


def forward_log_weights(pair_offsets: Tensor) -> Tensor:
    """The ``(C, C)`` log mixing weights ``log eps`` of ``pair_form='forward'``: 0 on the diagonal (a label's own
    class counts fully), each off-diagonal entry ``log sigmoid(t + logit(1e-3))`` of its parameter ``t``:
    ``log 1e-3`` at 0, increasing, below 0."""
    start = math.log(_FORWARD_START / (1 - _FORWARD_START))
    log_eps = nn.functional.logsigmoid(_FORWARD_SLOPE * pair_offsets + start)
    off_diagonal = ~torch.eye(pair_offsets.shape[-1], dtype=torch.bool, device=pair_offsets.device)
    return log_eps * off_diagonal


def prior_shift(train_counts: Tensor, target_counts: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""``log pi_train - log pi_target`` of two ``(C,)`` label counts, each smoothed by one (Laplace): 0 while
    nothing is counted, or wherever the two priors agree.

    Added to the logits a loss trains on, it is logit adjustment with :math:`\tau = 1` (Menon et al., 2021):
    the model's own logits are then fitted to the target's prior, not to the training labels'. Computed in
    ``dtype`` (default: float64; the loss casts it to its offsets' dtype).
    """
    train = train_counts.to(dtype) + 1
    target = target_counts.to(dtype) + 1
    return torch.log(train / train.sum()) - torch.log(target / target.sum())


def _offset_log_prob(
    logits: Tensor, target: Tensor, offsets: Tensor, pair_offsets: Tensor | None, pair_form: str = "logit"
) -> Tensor:
    """``log softmax(z + b + B_y)_y``, or with ``'forward'`` ``log sum_c eps_yc softmax(z + b)_c``: ``(M,)`` of
    ``(M, C)``."""
    target = target.long()
    shifted = logits + offsets.to(logits.dtype)
    if pair_offsets is not None and pair_form == "forward":
        mixed = shifted + forward_log_weights(pair_offsets.to(logits.dtype))[target]
        return torch.logsumexp(mixed, dim=-1) - torch.logsumexp(shifted, dim=-1)
    if pair_offsets is not None:
        shifted = shifted + pair_offset_matrix(pair_offsets.to(logits.dtype))[target]
    return torch.log_softmax(shifted, dim=-1).gather(1, target[:, None])[:, 0]


def _sample_q(robustness: Tensor, target: Tensor, logits: Tensor, slope: float, max_q: float) -> Tensor:
    """Each sample's exponent ``q_y`` (one shared robustness, or one a class), in the logits' dtype."""
    q = robustness_to_q(robustness.to(logits.dtype), slope=slope, max_q=max_q)
    return q.expand(logits.shape[-1])[target.long()]


class ClassAwareDLN(ValidatedLoad):
    r"""A learnable loss for training labels that disagree with the target: noisy labels, skewed class priors.

    The loss of a sample with logits :math:`z` and label :math:`y` is the generalized cross-entropy of the
    offset logits,

    .. math::
        \ell(z, y) = \frac{1 - p_y^{q_y}}{q_y}, \qquad p = \mathrm{softmax}(z + b + B_y),

    with learnable parameters that all start at 0. With ``pair_form='logit'`` the loss *is* ``F.cross_entropy``
    there (values and gradients, to float rounding); with the default ``pair_form='forward'`` (below) it is
    within :math:`10^{-3}` of it. By default (the recommended configuration, ``pairwise_teacher(C)``'s):
    ``pair_form='forward'``, ``q_slope=9``, ``max_q=0.7``, and a Teacher's sparsity prior of 0.05
    (``settings.CLASS_AWARE_TEACHING``); docs/results.md, "A ceiling on q", has the grid behind it.

    - a robustness :math:`r_c` per class (``robustness``) sets the exponent :math:`q_c \in (-0.1, q_{max})`,
      increasing in :math:`r_c` (:func:`robustness_to_q`; :func:`q_to_robustness` inverts it). :math:`q_c > 0`
      scales the gradient of a sample labelled :math:`c` by :math:`p_c^{q_c}`, so samples the model finds
      implausible (most wrongly labelled ones) count less: GCE (Zhang & Sabuncu, 2018) with a learned,
      per-class :math:`q`; :math:`q_c < 0` makes them count a little more (at most :math:`p^{-0.1}` times).
    - a logit offset :math:`b_c` per class (``offsets``): logit adjustment (Menon et al., 2021) with learned
      offsets. Training on :math:`z + b` leaves the model's own logits :math:`z` free of a skewed training
      prior (:math:`b_c \approx \log \pi_c`).
    - with ``prior_correction=True`` (the default), the logit offsets also hold :func:`prior_shift`, the log
      ratio of the class priors of the training labels and of the validation (trusted) labels that a
      :class:`dynaloss.Teacher` has counted in its rounds (``train_label_counts``, ``target_label_counts``;
      0 until a round counts any): logit adjustment for whatever prior shift the data has, which the
      ``offsets`` then refine. Measured: a teacher's rounds alone moved the offsets of a 100:1 long tail half as
      far as logit adjustment, while a count finds them in a few rounds (docs/results.md, "Prior correction").
    - with ``pair_offsets=True`` (the default), a ``(C, C)`` matrix :math:`B` (:func:`pair_offset_matrix` of the raw
      ``pair_offsets``; else 0): :math:`B_{yc}` is added to logit :math:`c` of a sample labelled :math:`y`,
      :math:`B_{yy} = 0`. A label :math:`y` often given to samples of class :math:`c` (class-dependent noise:
      pair flips) is corrected by :math:`B_{yc} < 0`: the loss then stops pushing those samples away from
      :math:`c`, a learned, soft forward correction (Patrini et al., 2017) that needs no transition matrix.
      :math:`B_{yc}` may fall without bound but rises to 0.1 at most: a short lookahead rewards larger margins
      than CE's whatever the labels, and unbounded they drove students to chance. On by default: measured, it
      turns pair flips from the teacher's worst case into its best and costs a little on the other cells
      (docs/results.md, "Pair offsets").
    - with ``pair_form='forward'`` the same ``(C, C)`` parameters are a forward correction in probabilities
      instead (Patrini et al., 2017, with a learned transition): the loss is GCE of
      :math:`\tilde p_y = p_y + \sum_{c \ne y} \epsilon_{yc} p_c`, :math:`p = \mathrm{softmax}(z + b)`, with
      :math:`\epsilon_{yc} = \sigma(3 t_{yc} + \mathrm{logit}(10^{-3}))` in :math:`(0, 1)` (``pair_matrix``;
      :func:`forward_log_weights`). Unlike an offset, it saturates: a sample labelled :math:`y` that the model
      confidently calls :math:`c` stops pushing once :math:`\epsilon_{yc} p_c` outweighs :math:`p_y`. The weights
      start at :math:`10^{-3}`, not 0 (a non-negative weight at 0 would sit at its minimum, where the loss has slope
      0 in it): the loss is then cross-entropy but for samples whose label the model finds about a thousand
      times less likely than another class (their loss stops near :math:`-\log 10^{-3}`).

    A :class:`dynaloss.Teacher` validating on a small trusted set moves them where the training labels call
    for it. The model's predictions are its own logits, as always; only the training loss has the
    parameters. Every parameter value gives a proper loss: it falls whenever the true class's offset logit
    rises relative to the others. Adding a constant to every offset changes nothing; the diagonal of
    ``pair_offsets`` is unused.

    Args:
        num_classes: number of classes ``C`` (at least 2).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'`` (default: ``'mean'``).
        weight: ``(C,)`` class weights, as in ``nn.CrossEntropyLoss`` (default: none).
        ignore_index: target value that does not count (default: ``-100``).
        keep_scale: divide the loss by the batch's mean of :math:`p_y^{q_y}` (taken as a constant of the
            logits), so that the per-sample gradient factors average 1, as Meta-Weight-Net normalises its weights:
            ``q`` then moves weight between samples without changing the size of the student's step. A teacher
            that looks a few steps ahead would otherwise favour ``q > 0`` on clean data too, for the smaller
            steps alone (a short-horizon bias; docs/results.md has the measurement). With ``False`` the loss
            is GCE as published (default: ``True``; taught with ``False``, the tuned grid was lower in every
            cell, docs/results.md, stop 38). With ``True`` the student's steps are cross-entropy's size,
            so train at cross-entropy's learning rate, not at GCE's: GCE's own steps are ``p^q`` times smaller
            (about a fifth early on at ``q = 0.7``), and it tunes to rates where cross-entropy diverges
            (measured under 40 % uniform noise: ``q = 0.7`` held fixed and normalised scored 85.8 % at the rate
            0.03 and 88.2 % at 0.05, where GCE itself scores 88.2 % at 0.1 and 88.8 % at 0.2, but at 0.1 it
            sent two students in three to chance, as cross-entropy did; docs/results.md, "The rate grid").
        shared_robustness: one robustness (and ``q``) for every class instead of one per class; ``robustness``
            then has shape ``(1,)`` (default: ``False``).
        pair_offsets: also learn the ``(C, C)`` pair offsets (for class-dependent noise); with ``False`` the
            loss has the ``2C`` per-class parameters only and ``pair_offsets`` is ``None`` (default: ``True``).
        pair_form: ``'logit'``, the pair parameters are offsets :math:`B` added to the logits, or ``'forward'``,
            mixing weights :math:`\epsilon` of the other classes' probabilities into the label's (default:
            ``'forward'``; it was ``'logit'`` before the configuration of "A ceiling on q").
        prior_correction: add :func:`prior_shift` of the label counts a Teacher's rounds make (unweighted,
            ``ignore_index`` left out) to the offsets; with ``False`` nothing is counted and the two count
            buffers are ``None`` (default: ``True``). The validation batches should be a shuffled (or balanced)
            draw of the trusted set: their first rounds' counts are the target prior's first estimate.
        q_slope: how fast ``q`` moves with its raw parameter, ``k`` of :func:`robustness_to_q` (``dq/dr`` at the
            start is ``0.1 k q_max / (0.1 + q_max)``): a teacher's steps on ``robustness`` move ``q`` that much
            faster (default: 9; 3 before "A ceiling on q": at 3, ``q`` arrived late under uniform noise).
        max_q: the ceiling ``q_max`` of ``q``, in ``(0, 1]`` (default: 0.7, GCE's published value; 1 is the mean
            absolute error, the ceiling before). Measured with
            ``keep_scale``: ``q`` held at 0.85 or 0.95 from the first step sent 10 students in 12 to chance, 0.7
            none under 40 % uniform noise (docs/results.md, "A ceiling on q").

    Shape:
        - input: ``(B, C)`` or ``(B, C, d1, ...)`` logits.
        - target: ``(B,)`` or ``(B, d1, ...)`` class indices.
        - sample_weight (forward): optional per-sample (per-pixel) weights of the target's shape.
        - output: scalar, or the target's shape with ``reduction='none'``.

    Examples::

        >>> loss_fn = ClassAwareDLN(num_classes=10)  # within 1e-3 of F.cross_entropy until a Teacher moves it
        >>> loss = loss_fn(torch.randn(8, 10, requires_grad=True), torch.randint(10, (8,)))
        >>> loss_fn.q  # the per-class GCE exponents (robustness_to_q of robustness): 0 at the start
    """

    # a Teacher's defaults for these parameters (dynaloss.teaching_defaults): Adam steps of 0.05, no anchor
    teaching_defaults = CLASS_AWARE_TEACHING
    # what a Teacher's sparsity prior acts on (dynaloss._round.sparse_parameter_mask): the parameters whose right
    # value where the labels are right is cross-entropy's 0; not the robustness, whose right value under noise is
    # far from it
    sparse_parameters = ("offsets", "pair_offsets")

    def __init__(
        self,
        num_classes: int,
        *,
        reduction: Reduction = "mean",
        weight: Tensor | None = None,
        ignore_index: int = -100,
        keep_scale: bool = True,
        shared_robustness: bool = False,
        pair_offsets: bool = True,
        pair_form: str = "forward",
        prior_correction: bool = True,
        q_slope: float = _Q_SLOPE,
        max_q: float = _MAX_Q,
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.reduction = DF.check_reduction(reduction)
        self.ignore_index = check_ignore_index(ignore_index)
        self.weight: Tensor | None
        self.register_buffer("weight", check_class_weight(weight, num_classes))
        self.offsets = nn.Parameter(torch.zeros(num_classes))
        self.keep_scale = check_bool(keep_scale, "keep_scale")
        self.shared_robustness = check_bool(shared_robustness, "shared_robustness")
        self.robustness = nn.Parameter(torch.zeros(1 if shared_robustness else num_classes))
        self.pair_offsets: nn.Parameter | None = None
        if check_bool(pair_offsets, "pair_offsets"):
            self.pair_offsets = nn.Parameter(torch.zeros(num_classes, num_classes))
        if pair_form not in PAIR_FORMS:
            raise ValueError(f"pair_form must be one of {PAIR_FORMS}, got {pair_form!r}")
        self.pair_form = pair_form
        self.q_slope = check_positive_float(q_slope, "q_slope")
        self.max_q = check_positive_float(max_q, "max_q")
        if self.max_q > 1:
            raise ValueError(f"max_q must lie in (0, 1], got {max_q}")
        self.train_label_counts: Tensor | None
        self.target_label_counts: Tensor | None
        counts = check_bool(prior_correction, "prior_correction")
        for name in ("train_label_counts", "target_label_counts"):
            self.register_buffer(name, torch.zeros(num_classes, dtype=torch.long) if counts else None)

    def reset_parameters(self) -> None:
        """Back to cross-entropy: every offset, pair offset and robustness 0, and no label counted."""
        with torch.no_grad():
            for tensor in (*self.parameters(), *self.buffers()):
                if tensor is not self.weight:
                    tensor.zero_()

    def count_labels(self, targets: Sequence[Tensor]) -> Tensor:
        """The ``(C,)`` counts of the class labels in ``targets`` (``ignore_index`` and anything else outside
        ``[0, C)`` left out), on the DLN's device."""
        device = self.offsets.device
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        for target in targets:
            labels = target.to(device).reshape(-1).long()
            labels = labels[(labels >= 0) & (labels < self.num_classes) & (labels != self.ignore_index)]
            counts += torch.bincount(labels, minlength=self.num_classes)
        return counts

    def add_label_counts(self, train: Tensor, target: Tensor) -> None:
        """Add counts (:meth:`count_labels`) of training and of validation labels to the prior correction's
        (a Teacher does, once per committed round); nothing with ``prior_correction=False``."""
        if self.train_label_counts is None or self.target_label_counts is None:
            return
        for name, counts in (("train", train), ("target", target)):
            if counts.shape != (self.num_classes,) or counts.is_floating_point() or bool((counts < 0).any()):
                raise ValueError(
                    f"{name} counts must be {self.num_classes} non-negative integers, got {counts.dtype} "
                    f"of shape {tuple(counts.shape)}"
                )
        self.train_label_counts += train.to(self.train_label_counts)
        self.target_label_counts += target.to(self.target_label_counts)

    def add_labels(self, train: Tensor | Sequence[Tensor], target: Tensor | Sequence[Tensor]) -> None:
        """Count whole label sets into the prior correction at once: ``train``, the labels the student trains on
        (e.g. ``train_set.targets``), and ``target``, the trusted (validation) set's; each a tensor of class
        indices or a sequence of them. Nothing with ``prior_correction=False``.

        A Teacher's rounds count only the batches they draw, a few hundred labels a round, so without it the
        first rounds' correction is a noisy estimate (a rare class is a handful of labels). A student that
        settles early gains from the exact count (measured: a 100:1 long tail under AdamW); under SGD it did not
        pay (docs/results.md, "Counting the labels up front"), and the README's loop leaves it out. A Teacher's
        rounds go on adding their counts: both estimate the same two priors.
        """
        counts = [
            self.count_labels(_label_tensors(labels, name)) for name, labels in (("train", train), ("target", target))
        ]
        self.add_label_counts(*counts)

    @property
    def prior_correction(self) -> Tensor | None:
        """The :func:`prior_shift` of the counts so far, ``(C,)``, added to the offsets (``None`` when off)."""
        if self.train_label_counts is None or self.target_label_counts is None:
            return None
        # float64 where the device has it (Apple's MPS has not)
        dtype = torch.float32 if self.offsets.device.type == "mps" else torch.float64
        return prior_shift(self.train_label_counts, self.target_label_counts, dtype).to(self.offsets.dtype)

    def _logit_offsets(self) -> Tensor:
        """What the loss adds to every sample's logits: the learned offsets and the prior correction."""
        correction = self.prior_correction  # the counts are buffers: on the offsets' device already
        return self.offsets if correction is None else self.offsets + correction

    @property
    def q(self) -> Tensor:
        """The per-class GCE exponents (detached; :func:`robustness_to_q` with this loss's ``q_slope`` and
        ``max_q``): 0 is CE, 1 would be the mean absolute error (the default ceiling is 0.7)."""
        q = robustness_to_q(self.robustness.detach(), slope=self.q_slope, max_q=self.max_q)
        return q.expand(self.num_classes).clone()

    @property
    def pair_matrix(self) -> Tensor | None:
        """The ``(C, C)`` pair offsets ``B`` (detached; :func:`pair_offset_matrix`): row ``y`` is added to the
        logits of a sample labelled ``y``; with ``pair_form='forward'`` the mixing weights ``eps`` instead
        (:func:`forward_log_weights`, exponentiated; 1 on the diagonal); ``None`` without pair offsets."""
        if self.pair_offsets is None:
            return None
        if self.pair_form == "forward":
            return forward_log_weights(self.pair_offsets.detach()).exp()
        return pair_offset_matrix(self.pair_offsets.detach())

    def extra_repr(self) -> str:
        shared = ", shared_robustness=True" if self.shared_robustness else ""
        pairs = "" if self.pair_offsets is not None else ", pair_offsets=False"
        form = f", pair_form={self.pair_form!r}" if self.pair_form != "forward" else ""
        prior = "" if self.train_label_counts is not None else ", prior_correction=False"
        slope = f", q_slope={self.q_slope}" if self.q_slope != _Q_SLOPE else ""
        ceiling = f", max_q={self.max_q}" if self.max_q != _MAX_Q else ""
        options = f"{shared}{pairs}{form}{prior}{slope}{ceiling}"
        return f"num_classes={self.num_classes}, reduction={self.reduction!r}{options}"

    def get_extra_state(self) -> dict[str, Any]:
        # the same numbers are another loss with the other keep_scale or shape of robustness
        return {
            "num_classes": self.num_classes,
            "shared_robustness": self.shared_robustness,
            "keep_scale": self.keep_scale,
            "pair_offsets": self.pair_offsets is not None,
            "pair_form": self.pair_form,
            "prior_correction": self.train_label_counts is not None,
            "q_slope": self.q_slope,
            "max_q": self.max_q,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("num_classes") != self.num_classes:
            found = state.get("num_classes") if isinstance(state, dict) else state
            raise ValueError(
                f"the state is of a ClassAwareDLN with num_classes={found!r}, "
                f"this one has num_classes={self.num_classes}"
            )
        mine = self.get_extra_state()
        # a state saved before an option existed is one without it
        # (q_slope and max_q: the parametrization of q before they were options; the logit pair form)
        before = {"prior_correction": False, "pair_form": "logit", "q_slope": 3.0, "max_q": 1.0}
        for option in ("shared_robustness", "keep_scale", "pair_offsets", *before):
            theirs = state.get(option, before.get(option))
            if theirs != mine[option]:
                raise ValueError(
                    f"the state is of a ClassAwareDLN with {option}={theirs!r}, this one has {option}={mine[option]}"
                )

    def forward(self, input: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        """The loss of ``input`` logits for ``target`` classes, each sample (pixel) weighted by ``sample_weight``."""
        may_ignore = _check_class_batch(input, target, sample_weight, self.num_classes, self.ignore_index, self.offsets)
        if (
            input.dim() == 2
            and sample_weight is None
            and self.weight is None
            and not may_ignore
            and self.reduction == "mean"
        ):
            # plain classification, the common case: no masks, no reshaping
            log_prob = _offset_log_prob(input, target, self._logit_offsets(), self.pair_offsets, self.pair_form)
            q = _sample_q(self.robustness, target, input, self.q_slope, self.max_q)
            loss, scale = generalized_ce(log_prob, q).mean(), torch.exp(q * log_prob).mean()
        else:
            reduce = functools.partial(
                DF.pairwise_dln_loss,
                [],
                target=target,
                sample_weight=sample_weight,
                class_weight=self.weight,
                ignore_index=self.ignore_index,
            )
            loss = reduce(input, reduction=self.reduction, per_sample=self._per_sample)
            if not self.keep_scale:
                return loss
            scale = reduce(input, reduction="mean", per_sample=self._gradient_factor)
        if not self.keep_scale:
            return loss
        return _DividedBy.apply(loss, scale.clamp_min(torch.finfo(scale.dtype).tiny))

    def _per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return class_aware_loss(
            logits,
            target,
            self._logit_offsets(),
            self.robustness,
            self.pair_offsets,
            self.pair_form,
            q_slope=self.q_slope,
            max_q=self.max_q,
        )

    def _gradient_factor(self, logits: Tensor, target: Tensor) -> Tensor:
        """``p_y^q``: how much a sample's logit gradient is of cross-entropy's (on the offset logits)."""
        q = _sample_q(self.robustness, target, logits, self.q_slope, self.max_q)
        log_prob = _offset_log_prob(logits, target, self._logit_offsets(), self.pair_offsets, self.pair_form)
        return torch.exp(q * log_prob)


class _DividedBy(torch.autograd.Function):
    """``loss / scale`` whose gradient treats ``scale`` as a constant: ``d loss / scale`` only.

    The student's step is then cross-entropy's reweighted by ``p^q / mean(p^q)``. The backward is written in
    differentiable operations, so the step itself (a function of the student's weights and the DLN's
    parameters, ``scale`` included) differentiates exactly: the hypergradient through an unroll of such steps
    is the true one, as finite differences of real optimizer steps check (tests/test_class_aware_dln.py).
    """

    @staticmethod
    def forward(ctx: Any, loss: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return loss / scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad / scale, None


def _label_tensors(labels: object, name: str) -> Sequence[Tensor]:
    """``labels`` (a tensor of class indices, or a sequence of them) as a sequence of tensors; ``TypeError``
    naming ``name`` for anything else."""
    tensors = [labels] if isinstance(labels, Tensor) else labels
    if isinstance(tensors, (str, bytes)) or not isinstance(tensors, Sequence):
        raise TypeError(f"{name} must be a tensor of class indices or a sequence of them, got {type(labels)}")
    for tensor in tensors:
        if (
            not isinstance(tensor, Tensor)
            or tensor.is_floating_point()
            or tensor.is_complex()
            or tensor.dtype == torch.bool
        ):
            found = tensor.dtype if isinstance(tensor, Tensor) else type(tensor)
            raise TypeError(f"{name} must hold integer class indices, got {found}")
    return tensors


def _check_class_batch(
    input: object, target: object, sample_weight: object, num_classes: int, ignore_index: int, dln: Tensor
) -> bool:
    """Raise ``TypeError``/``ValueError`` naming what is wrong with a classification loss's arguments.

    Returns:
        Whether ``target`` may hold ``ignore_index`` (``False``: every element is a class index).
    """
    input = check_tensor(input, "input")
    target = check_tensor(target, "target")
    named = {"input": input, "target": target}
    if sample_weight is not None:
        named["sample_weight"] = check_tensor(sample_weight, "sample_weight")
    check_same_device(named, dln, "the DLN")  # dln: a tensor of the DLN's
    if not input.is_floating_point():
        raise TypeError(f"input must be floating-point logits, got dtype {input.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if input.dim() < 2:
        raise ValueError(f"input must be (B, C) or (B, C, d1, ...) logits, got shape {tuple(input.shape)}")
    if input.shape[1] != num_classes:
        raise ValueError(f"input has {input.shape[1]} classes in dim 1, expected num_classes={num_classes}")
    expected = input.shape[:1] + input.shape[2:]
    if target.shape != expected:
        raise ValueError(
            f"target must have shape {tuple(expected)} for input {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    if input.numel() == 0:
        raise ValueError(f"input is empty (shape {tuple(input.shape)})")
    if sample_weight is not None:
        sample_weight = check_tensor(sample_weight, "sample_weight")
        if not sample_weight.is_floating_point():
            raise TypeError(f"sample_weight must be floating-point per-sample weights, got dtype {sample_weight.dtype}")
        if sample_weight.shape != target.shape:
            raise ValueError(
                f"sample_weight must have the target's shape {tuple(target.shape)}, got {tuple(sample_weight.shape)}"
            )
        check_finite(sample_weight, "sample_weight")
    low, high = target.aminmax()
    # one read-back from the device for the common case
    finite, low_value, high_value = torch.stack([torch.isfinite(input).all().long(), low.long(), high.long()]).tolist()
    if not finite:
        raise NonFiniteError("input contains NaN or Inf values")
    if low_value >= 0 and high_value < num_classes:
        return 0 <= ignore_index < num_classes
    counted = target[target != ignore_index]
    if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= num_classes):
        raise ValueError(
            f"target holds class indices outside [0, {num_classes}) "
            f"(min {int(counted.min())}, max {int(counted.max())}; ignore_index={ignore_index})"
        )
    return True
