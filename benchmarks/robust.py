"""The corrupted-data benchmark (issue 20, part 1): does the taught DLN pay where a fixed loss is wrong?

Every cell (student x data x recipe x corruption x trusted fraction) corrupts the training set, keeps a small
clean *trusted* set, and trains every arm from the same initial weights, data and step budget per seed (batch 25).
The test set stays clean and balanced.

Corruptions (training part only, deterministic per data set, corruption, trusted fraction and seed; the trusted set
is drawn first, per class, and never corrupted):

- ``clean``;
- ``sym20``, ``sym40``, ``sym60``: exactly that share of the labels replaced by a uniformly drawn OTHER class;
- ``pair40``: 40 % of each class c flipped to (c + 1) mod C;
- ``lt10``, ``lt100``: a long-tailed training set, class c keeps ``n_max * ratio ** (-c / (C - 1))`` of its samples
  (at least one), ``n_max`` the smallest class's count after the trusted set is taken, so every class can supply
  its quota and the counts are the profile exactly.

Trusted set: ``--trusted`` of the training set (10 % by default; ``--trusted 0.1 0.02`` adds the 2 % sweep), drawn
class-balanced (``round(share * N) // C`` samples per class) under every corruption, before any subsampling.

Arms (``noisy`` = the corrupted part, ``trusted`` = the trusted set):

- ``ce``: cross-entropy on noisy ∪ trusted. ``ce-ft``: the same for 90 % of the steps, then the last 10 % of the
  SAME step budget on the trusted set only (same optimizer; its cosine continues over the total budget).
- fixed robust losses, on noisy ∪ trusted: under noise ``gce`` (generalized CE, q in {0.7, 0.4}), ``sce``
  (symmetric CE, (alpha, beta) in {(0.1, 1.0), (1.0, 1.0)}, log 0 clipped at log 1e-4 as the authors' code),
  ``ls`` (label smoothing, eps in {0.1, 0.3}); under imbalance ``la`` (logit-adjusted CE, tau in {1.0, 2.0}),
  ``bs`` (balanced softmax) and ``cw`` (class-weighted CE, weights 1 / (C * prior): one on average per sample).
  Priors are the labels' frequencies in the arm's training data, as observed. Balanced softmax is logit
  adjustment at tau = 1 (log counts and log priors differ by a constant that the softmax cancels); ``la`` differs
  from it only by its tuned tau. On ``clean`` every fixed loss runs.
- ``mwn``: Meta-Weight-Net (Shu et al. 2019; :class:`MetaWeightNet`), on noisy ∪ trusted, meta data = trusted.
- ``dln-fixed``, ``dln-taught``, ``dln-taught-valonly``: the library as its README tells a user, built by
  ``teacher = dynaloss.pairwise_teacher(C, optimizer=optimizer)`` (``--preset`` picks another preset) and
  ``loss_fn = teacher.loss_fn``. ``dln-fixed`` trains with ``loss_fn`` and no rounds, on noisy ∪ trusted.
  ``dln-taught`` trains on noisy ∪ trusted with ``teacher.step(model, train_iter, val_iter)`` every K iterations
  (K = ``dynaloss.settings.TEACH_EVERY`` read at run time, ``--teach-every`` overrides), ``train_iter`` an endless
  reshuffling stream over the same training data with its own generator, ``val_iter`` endless reshuffled batches
  of 100 from the trusted set. ``dln-taught-valonly``: the same, but the student (and ``train_iter``) sees only
  the noisy part: the trusted set only validates. With ``--count-labels`` the DLN arms first call
  ``loss_fn.add_labels(training labels, trusted labels)`` (an option of ``ClassAwareDLN``, not the README's loop).
- ``ce-time``: compute-matched CE: ``ce``'s rate, its steps scaled by the same seed's ``dln-taught``-to-``ce``
  training CPU time ratio, its cosine over the longer budget.

Protocol. Tune phase first, on two tuning seeds that are no evaluation seeds: every arm's learning rate over the
recipe's 3-value grid (``user_loop.RECIPES``: ``sgdm`` SGD momentum 0.9, weight decay 5e-4, cosine; ``adamw`` weight
decay 1e-2, cosine), or the ``--lrs`` grid, times its loss settings, scored by accuracy on a held-out half of the
trusted set (the halves are class-balanced), averaged over the tuning seeds (``--tune-seeds``: one seed's 200 held-out
samples could not tell adjacent rates apart, one sample decided a pick). The arms train on noisy ∪ the other half, and
``mwn`` and the DLN arms meta-learn / validate on that other half only. An arm whose best rate is the grid's largest
or smallest then tries the next rate outward (the grid's own ratio), up to ``--extend-edges`` times: GCE's steps are
``p^q`` times CE's, so its best rate lies above every CE-sized arm's. The test set is never used for picking. Then
seeds 0-4 at the picked settings, then ``ce-time``. Batches of 100 (teacher validation, meta data) shrink to the
trusted part's size when it is smaller. "Best fixed" is the non-meta arm (``ce``, ``ce-ft`` and the cell's fixed
losses) with the best tune score in the cell; with ``--no-tune`` there is none, and the report takes the best TEST
mean instead, an oracle that can only favour the baseline (marked "oracle"). Each cell reports every arm's mean ± std
of the final test accuracy and every seed, wall and training CPU time and the CPU ratio to ``ce``, the taught rounds
skipped and rolled back, and the issue's bar numbers: dln-taught − best fixed, − ce, − mwn, and the worst seed's
dln-taught − its ce twin; then averages over the corrupted cells and the clean cells against ce.

Every finished job is appended to ``OUT/runs.jsonl`` and skipped on a re-run (a job is identified by its
configuration, not by the code: start a new ``--out`` after changing either); ``OUT/robust.json`` (machine,
configuration, settings picked, every run, the summary) and ``OUT/robust.md`` are written at the end.

    OMP_NUM_THREADS=1 python benchmarks/robust.py --fast          # ~15 min on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/robust.py                 # the full grid: 10,428 jobs, ~13 h
    OMP_NUM_THREADS=1 python benchmarks/robust.py --case issue    # issue 20's case, ~2-4 min
    OMP_NUM_THREADS=1 python benchmarks/robust.py --trusted 0.02 --out benchmarks/results/robust_trusted2
    OMP_NUM_THREADS=1 python benchmarks/robust.py --students cnn --data mnist1d --recipes sgdm \\
        --corruptions sym40 --arms ce gce dln-taught --teach-every 50     # one cell, another K
    OMP_NUM_THREADS=1 python benchmarks/robust.py --students cnn --data mnist1d --recipes sgdm \\
        --lrs 0.01 0.03 0.05 0.1 0.2 --out benchmarks/results/robust_cnn_lrs      # a finer rate grid

``--fast``: the ``cnn`` and ``resmlp`` students on MNIST-1D, corruptions clean, sym40, pair40 and lt100, recipe
``sgdm`` at its middle rate 0.03 and each loss's first setting (no tune phase), seeds 0 and 1, 3,000 steps, arms
ce, gce, la, mwn, dln-fixed and dln-taught: 8 cells, 84 jobs. How it was sized, on the 2-core machine this was
written on (one torch thread a worker): a 2,000-step cnn CE run on MNIST-1D trains in 2.8 s (1.0 ms a step;
resmlp 0.5 ms) on an idle core; against ce, the fixed losses cost 0.8-1.5x a step (timing noise on a shared
machine), dln-fixed 1.1-1.7x, mwn 5-6x and dln-taught (K = 20) 3.4-4.5x. That is ~15 min of wall time on two
shared cores. The full grid (84 cells; 6,048 tune jobs on two seeds, 3,960 seed and 420 ce-time jobs at 6,000
steps, before any rates past the edges) costs as much as ~22,000 6,000-step CE runs (~4 s each, averaged over the
students): ~13 h on 2 idle cores.
``--case issue``: the issue's case: standard MNIST-1D, the cnn, ``sgdm`` at lr 0.05 (no tuning), 6,000 steps,
500 trusted samples (``--trusted 0.125``), sym40, seeds 0 and 1, arms ce, gce (q = 0.7), dln-fixed, dln-taught,
dln-taught-valonly and mwn.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import dynaloss
import dynaloss.settings
from dynaloss._update_rules import optimizer_rule
from dynaloss.harness.training import evaluate_accuracy, seeded

if str(Path(__file__).resolve().parent) not in sys.path:  # imported, not run: find the sibling it shares a runner with
    sys.path.append(str(Path(__file__).resolve().parent))  # last, so that no other script shadows a package
from user_loop import (  # noqa: E402
    RECIPES,
    STUDENTS,
    JsonKeyed,
    Store,
    Trace,
    build_student,
    cell_data,
    fmt_mean_std,
    fmt_points,
    init_worker,
    make_recipe,
    matched_steps,
    open_results,
    run_phase,
    run_result,
    user_loop,
    warm_up,
    write_results,
)

DATASETS = ("mnist1d", "digits")
ROBUST_RECIPES = ("sgdm", "adamw")


@dataclass(frozen=True)
class Corruption:
    """What is done to the training part: ``kind`` is clean, sym, pair or longtail; ``level`` its rate or ratio."""

    kind: str
    level: float

    @property
    def family(self) -> str:
        return {"clean": "clean", "sym": "noise", "pair": "noise", "longtail": "imbalance"}[self.kind]


CORRUPTIONS = {
    "clean": Corruption("clean", 0.0),
    "sym20": Corruption("sym", 0.2),
    "sym40": Corruption("sym", 0.4),
    "sym60": Corruption("sym", 0.6),
    "pair40": Corruption("pair", 0.4),
    "lt10": Corruption("longtail", 10.0),
    "lt100": Corruption("longtail", 100.0),
}

# Each fixed loss's settings, tuned with the rate; --no-tune takes the first.
LOSS_GRIDS: dict[str, tuple[dict[str, float], ...]] = {
    "gce": ({"q": 0.7}, {"q": 0.4}),
    "sce": ({"alpha": 0.1, "beta": 1.0}, {"alpha": 1.0, "beta": 1.0}),
    "ls": ({"eps": 0.1}, {"eps": 0.3}),
    "la": ({"tau": 1.0}, {"tau": 2.0}),
}
NOISE_LOSSES, IMBALANCE_LOSSES = ("gce", "sce", "ls"), ("la", "bs", "cw")
FIXED_ARMS = ("ce", "ce-ft", *NOISE_LOSSES, *IMBALANCE_LOSSES)  # the candidates for "best fixed"
TAUGHT_ARMS = ("dln-taught", "dln-taught-valonly")
DLN_ARMS = ("dln-fixed", *TAUGHT_ARMS)
ARMS = (*FIXED_ARMS, "mwn", *DLN_ARMS, "ce-time")
ISSUE_ARMS = ("ce", "gce", "dln-fixed", "dln-taught", "dln-taught-valonly", "mwn")
FAST_ARMS = ("ce", "gce", "la", "mwn", "dln-fixed", "dln-taught")
TRAIN_BATCH, VAL_BATCH = 25, 100  # student steps read 25 samples; validation and meta batches 100
FINETUNE_SHARE = 0.1  # ce-ft's last share of the step budget, on the trusted set only
# The issue's bar, in accuracy (fractions) and CPU-time ratio.
BAR = {
    "cell_vs_best_fixed": -0.005,
    "corrupted_mean_vs_best_fixed": 0.01,
    "corrupted_mean_vs_ce": 0.05,
    "corrupted_mean_vs_mwn": 0.0,
    "clean_vs_ce": -0.003,
    "seed_vs_ce_twin": -0.02,
    "cost_vs_ce": 3.0,
}

Hyper = tuple[tuple[str, float], ...]  # a loss setting as sorted (name, value) pairs: hashable and JSON-able
Cell = tuple[str, str, str, str, float]  # student, data, recipe, corruption, trusted fraction
Rates = Sequence[float]
Picks = dict[tuple[Any, ...], dict[str, Any]]  # (*cell, arm) -> the tune phase's pick
Extra = Mapping[tuple[Any, ...], Rates]  # (*cell, arm) -> rates tried past the grid's edges
CELL_FIELDS = ("student", "data", "recipe", "corruption", "trusted")


@dataclass(frozen=True)
class Job(JsonKeyed):
    """One training run; every field changes its result, so its JSON identifies it in the store.

    ``phase`` ``"tune"`` trains on noisy ∪ half the trusted set and scores on the other half; ``"test"`` trains
    on noisy ∪ trusted and scores on the test set.
    """

    phase: str
    student: str
    data: str
    recipe: str
    corruption: str
    trusted: float
    arm: str
    lr: float
    hyper: Hyper
    seed: int
    steps: int
    preset: str | None  # None: the library's default preset, called as the README does (no preset argument)
    teach_every: int | None  # K of the taught arms, None for the others
    eval_every: int
    count_labels: bool = False  # DLN arms: loss_fn.add_labels(training labels, trusted labels) before training

    def key(self) -> str:
        # a field at its default is left out, so that stores written before the field existed still resume
        fields = asdict(self)
        if not fields["count_labels"]:
            del fields["count_labels"]
        return json.dumps(fields, sort_keys=True)


# ---------------------------------------------------------------------------------------------- corruption
def generator(*key: object) -> torch.Generator:
    """A CPU generator seeded by ``key`` (strings and numbers): the same key, the same draws, in any process."""
    digest = hashlib.sha256(json.dumps(key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass(frozen=True)
class Partition:
    """A training set's parts, as indices: the trusted set per class, and the corrupted rest with its labels."""

    trusted: Tensor  # (C, per_class): row c holds class c's trusted samples
    kept: Tensor  # the corrupted part (long tail: the samples kept)
    labels: Tensor  # the labels arms see for ``kept``


def partition(y: Tensor, corruption: str, trusted: float, data: str, seed: int) -> Partition:
    """Draw the trusted set (class-balanced), then corrupt the rest as ``corruption`` says."""
    spec, classes = CORRUPTIONS[corruption], int(y.max()) + 1
    per_class = round(trusted * len(y)) // classes
    if per_class < 1:
        raise ValueError(
            f"--trusted {trusted} leaves no trusted sample per class ({len(y)} samples, {classes} classes)"
        )
    # the trusted set does not depend on the corruption: cells differ only in what is done to the rest
    pick = generator("trusted", data, trusted, seed)
    members = [shuffled((y == c).nonzero().squeeze(1), pick) for c in range(classes)]
    rest = [m[per_class:] for m in members]
    if spec.kind == "longtail":
        rest = [part[:count] for part, count in zip(rest, longtail_counts(min(map(len, rest)), spec.level, classes))]
    kept = torch.cat(rest)
    labels = flip_labels(y[kept], spec, classes, generator("corrupt", data, corruption, trusted, seed))
    return Partition(torch.stack([m[:per_class] for m in members]), kept, labels)


def shuffled(index: Tensor, rng: torch.Generator) -> Tensor:
    return index[torch.randperm(len(index), generator=rng)]


def longtail_counts(n_max: int, ratio: float, classes: int) -> list[int]:
    """Class c keeps ``n_max * ratio ** (-c / (C - 1))`` samples, at least one."""
    return [max(1, round(n_max * ratio ** (-c / (classes - 1)))) for c in range(classes)]


def flip_labels(y: Tensor, spec: Corruption, classes: int, rng: torch.Generator) -> Tensor:
    """The labels with ``spec``'s noise: exactly ``level`` of them (pair: of each class) moved to another class."""
    noisy = y.clone()
    if spec.kind == "sym":
        chosen = torch.randperm(len(y), generator=rng)[: round(spec.level * len(y))]
        offsets = torch.randint(1, classes, (len(chosen),), generator=rng)  # 1 .. C-1: never the true class
        noisy[chosen] = (y[chosen] + offsets) % classes
    elif spec.kind == "pair":
        for c in range(classes):
            members = shuffled((y == c).nonzero().squeeze(1), rng)
            noisy[members[: round(spec.level * len(members))]] = (c + 1) % classes
    return noisy


@dataclass(frozen=True)
class ArmData:
    """What an arm of one cell and seed reads: ``(x, y)`` pairs, the labels as the arm sees them."""

    noisy: tuple[Tensor, Tensor]  # the corrupted part
    trusted: tuple[Tensor, Tensor]  # clean; trained on (the CE-like arms), validated / meta-learned on (meta arms)
    score: tuple[Tensor, Tensor]  # the test set, or in the tune phase the trusted set's held-out half
    num_classes: int
    stats: dict[str, Any]

    @property
    def mixed(self) -> tuple[Tensor, Tensor]:
        """noisy ∪ trusted: what every baseline trains on."""
        return torch.cat([self.noisy[0], self.trusted[0]]), torch.cat([self.noisy[1], self.trusted[1]])


@functools.cache
def arm_data(data: str, student: str, corruption: str, trusted: float, seed: int, phase: str) -> ArmData:
    """The cell's data for ``seed``: in the tune phase, half the trusted set per class is held out for scoring."""
    full = cell_data(data, student, 0.0, 0)  # the CNN reads inputs as sequences
    x, y = full.x_train, full.y_train
    part = partition(y, corruption, trusted, data, seed)
    train_part, score = part.trusted.flatten(), (full.x_test, full.y_test)
    if phase == "tune":
        half = part.trusted.shape[1] // 2
        if half == 0:
            raise ValueError(f"--trusted {trusted} holds one sample per class: too few to hold half out for tuning")
        train_part, held = part.trusted[:, :half].flatten(), part.trusted[:, half:].flatten()
        score = (x[held], y[held])
    stats = {
        "noisy": len(part.kept),
        "trusted": len(train_part),
        "noise_rate": float((part.labels != y[part.kept]).float().mean()),
        "class_counts": torch.bincount(part.labels, minlength=full.num_classes).tolist(),
    }
    return ArmData((x[part.kept], part.labels), (x[train_part], y[train_part]), score, full.num_classes, stats)


def shuffled_batches(x: Tensor, y: Tensor, batch_size: int, rng: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches, reshuffled every pass (the short last batch is dropped); a smaller set is one batch."""
    size = min(batch_size, len(y))
    while True:
        order = torch.randperm(len(y), generator=rng)
        for start in range(0, len(order) - size + 1, size):
            index = order[start : start + size]
            yield x[index], y[index]


# ---------------------------------------------------------------------------------------------- losses
def gce_loss(logits: Tensor, y: Tensor, q: float) -> Tensor:
    """Generalized cross-entropy (Zhang & Sabuncu 2018): ``(1 - p_y ** q) / q``."""
    p_y = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    return ((1 - p_y.clamp_min(1e-7) ** q) / q).mean()  # the clamp keeps the gradient of p ** q finite at 0


def sce_loss(logits: Tensor, y: Tensor, alpha: float, beta: float) -> Tensor:
    """Symmetric cross-entropy (Wang et al. 2019): ``alpha * CE + beta * reverse CE``, log 0 read as log 1e-4."""
    p = logits.softmax(1).clamp(1e-7, 1.0)
    one_hot = F.one_hot(y, logits.shape[1]).to(p.dtype).clamp(1e-4, 1.0)
    reverse = -(p * one_hot.log()).sum(1).mean()
    return alpha * F.cross_entropy(logits, y) + beta * reverse


def adjusted_ce(logits: Tensor, y: Tensor, offset: Tensor) -> Tensor:
    """CE of logits shifted per class: logit adjustment and balanced softmax (offsets ``tau * log prior``)."""
    return F.cross_entropy(logits + offset, y)


def weighted_ce(logits: Tensor, y: Tensor, weight: Tensor) -> Tensor:
    """CE weighted per class, averaged over the batch (not divided by the weights' sum: the rate keeps its scale)."""
    return (weight[y] * F.cross_entropy(logits, y, reduction="none")).mean()


def fixed_loss(arm: str, hyper: dict[str, float], labels: Tensor, classes: int) -> Callable[[Tensor, Tensor], Tensor]:
    """The arm's fixed loss; the imbalance losses read the class prior of the ``labels`` it trains on."""
    prior = torch.bincount(labels, minlength=classes).clamp_min(1).float()
    prior = prior / prior.sum()
    builders: dict[str, Callable[[], Callable[[Tensor, Tensor], Tensor]]] = {
        "ce": lambda: F.cross_entropy,
        "gce": lambda: functools.partial(gce_loss, **hyper),
        "sce": lambda: functools.partial(sce_loss, **hyper),
        "ls": lambda: functools.partial(F.cross_entropy, label_smoothing=hyper.get("eps", 0.0)),
        "la": lambda: functools.partial(adjusted_ce, offset=hyper.get("tau", 1.0) * prior.log()),
        "bs": lambda: functools.partial(adjusted_ce, offset=prior.log()),
        "cw": lambda: functools.partial(weighted_ce, weight=1 / (classes * prior)),  # one per sample on average
    }
    return builders["ce" if arm in ("ce-ft", "ce-time") else arm]()


class MetaWeightNet:
    """Meta-Weight-Net (Shu et al., NeurIPS 2019) as the loss of the user's loop, on ``torch.func``.

    A 1-100-1 MLP (ReLU, sigmoid) maps each sample's CE loss to its weight. Each call (one training step):
    a virtual student step with the weighted loss, taken by the user's own optimizer rule from its current
    state and rate (``dynaloss._update_rules.optimizer_rule``, differentiably, so momentum and weight decay are
    followed); CE on a trusted batch through that step is the meta loss, and one Adam step (lr 1e-3, weight
    decay 1e-4) moves the MLP; the returned loss weights the same samples by the updated MLP, normalised by
    the weights' sum as the authors' code does (the batch mean with weights of mean 1), and the user's loop
    takes the real step with it. The virtual step's weighted loss is the plain mean, as in that code.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, meta_batches: Iterator[Any]) -> None:
        self.model, self.optimizer, self.meta_batches = model, optimizer, meta_batches
        self.net = nn.Sequential(nn.Linear(1, 100), nn.ReLU(), nn.Linear(100, 1), nn.Sigmoid())
        self.meta_optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3, weight_decay=1e-4)

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        losses = F.cross_entropy(logits, y, reduction="none")
        self.meta_step(losses)
        with torch.no_grad():
            weights = self.weights(losses)
        return (weights * losses).sum() / weights.sum()

    def weights(self, losses: Tensor) -> Tensor:
        return self.net(losses.detach()[:, None]).squeeze(1)

    def meta_step(self, losses: Tensor) -> None:
        rule, names = optimizer_rule(self.optimizer, self.model)  # read now: the scheduler's current rate
        virtual = (self.weights(losses) * losses).mean()
        grads = torch.autograd.grad(virtual, rule.params, create_graph=True, allow_unused=True)
        stepped, _ = rule.apply(rule.params, grads, rule.initial())
        params = {**dict(self.model.named_parameters()), **dict(zip(names, stepped))}
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}  # BatchNorm's stats stay the model's
        x, y = next(self.meta_batches)
        meta_loss = F.cross_entropy(functional_call(self.model, (params, buffers), (x,)), y)
        # retain_graph: the real step backpropagates through the same forward of the training batch
        meta_grads = torch.autograd.grad(meta_loss, list(self.net.parameters()), retain_graph=True)
        for param, grad in zip(self.net.parameters(), meta_grads):
            param.grad = grad
        self.meta_optimizer.step()


# ------------------------------------------------------------------------------------------------ arms
@dataclass
class Run:
    """One job's student, optimizer and data, and the user's loop over them."""

    job: Job
    data: ArmData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    trace: Trace

    def stream(self, part: tuple[Tensor, Tensor], name: str, batch: int = TRAIN_BATCH) -> Iterator[Any]:
        """An endless stream over ``part`` with its own generator: arms of a seed read the same ``name``d batches."""
        return shuffled_batches(*part, batch, generator(self.job.seed, name))

    def loop(self, loss_fn: Callable[..., Tensor], batches: Iterator[Any], **teach: Any) -> int:
        return user_loop(
            self.model,
            self.optimizer,
            self.scheduler,
            loss_fn,
            batches,
            steps=self.job.steps,
            trace=self.trace,
            eval_every=self.job.eval_every,
            **teach,
        )


def train_fixed(run: Run) -> tuple[int, dict[str, Any]]:
    """ce, ce-time and the fixed robust losses: the loss on noisy ∪ trusted."""
    mixed = run.data.mixed
    loss = fixed_loss(run.job.arm, dict(run.job.hyper), mixed[1], run.data.num_classes)
    return run.loop(loss, run.stream(mixed, "train")), {}


def train_ce_ft(run: Run) -> tuple[int, dict[str, Any]]:
    """CE on noisy ∪ trusted, then the last FINETUNE_SHARE of the steps on the trusted set (one loop, one cosine)."""
    cut = run.job.steps - round(FINETUNE_SHARE * run.job.steps)
    batches = itertools.chain(
        itertools.islice(run.stream(run.data.mixed, "train"), cut), run.stream(run.data.trusted, "finetune")
    )
    return run.loop(F.cross_entropy, batches), {}


def train_mwn(run: Run) -> tuple[int, dict[str, Any]]:
    with seeded(run.job.seed):  # the MLP's initial weights
        mwn = MetaWeightNet(run.model, run.optimizer, run.stream(run.data.trusted, "meta", VAL_BATCH))
    return run.loop(mwn, run.stream(run.data.mixed, "train")), {}


def recommended_teacher(classes: int, optimizer: torch.optim.Optimizer, preset: str | None) -> Any:
    """The README's one line: ``dynaloss.pairwise_teacher(C, optimizer=optimizer)``, or with ``preset``."""
    if preset is None:
        return dynaloss.pairwise_teacher(classes, optimizer=optimizer)
    return dynaloss.pairwise_teacher(classes, preset, optimizer=optimizer)


def train_dln(run: Run) -> tuple[int, dict[str, Any]]:
    """dln-fixed (no rounds), dln-taught and dln-taught-valonly (the student trains on the noisy part only)."""
    job = run.job
    part = run.data.noisy if job.arm == "dln-taught-valonly" else run.data.mixed
    with seeded(job.seed):  # a preset whose DLN starts random draws it from the seed
        teacher = recommended_teacher(run.data.num_classes, run.optimizer, job.preset)
    if job.count_labels:  # --count-labels: the option measured in docs/results.md, not the README's loop
        if not isinstance(teacher.loss_fn, dynaloss.ClassAwareDLN):
            raise ValueError(f"--count-labels needs a ClassAwareDLN, the preset built {type(teacher.loss_fn).__name__}")
        teacher.loss_fn.add_labels(part[1], run.data.trusted[1])
    teach = None
    if job.arm != "dln-fixed":
        train_iter, val_iter = run.stream(part, "teacher-train"), run.stream(run.data.trusted, "teacher-val", VAL_BATCH)

        def teach() -> None:
            run.trace.rounds.append(teacher.step(run.model, train_iter, val_iter).as_dict())

    taken = run.loop(teacher.loss_fn, run.stream(part, "train"), teach=teach, teach_every=job.teach_every)
    return taken, {
        "dln": type(teacher.loss_fn).__name__,
        "dln_state": small_state(teacher.loss_fn),
        "round_log": run.trace.rounds,
    }


def small_state(module: nn.Module) -> dict[str, Any]:
    """What of a DLN's final state a report can hold: tensors of up to 256 values (a 16-class pair matrix), and
    its extra state (options)."""
    kept = {}
    for name, value in module.state_dict().items():
        if not isinstance(value, Tensor):
            kept[name] = value
        elif value.numel() <= 256:
            kept[name] = value.tolist()
    return json.loads(json.dumps(kept, default=str))  # extra state may hold anything: as JSON sees it


TRAINERS: dict[str, Callable[[Run], tuple[int, dict[str, Any]]]] = {
    **dict.fromkeys(("ce", "ce-time", *NOISE_LOSSES, *IMBALANCE_LOSSES), train_fixed),
    "ce-ft": train_ce_ft,
    "mwn": train_mwn,
    **dict.fromkeys(DLN_ARMS, train_dln),
}


def run_job(job: Job) -> dict[str, Any]:
    """Train one arm of one cell on one seed; returns its accuracy curve, times, data and teacher rounds."""
    torch.set_num_threads(1)
    data = arm_data(job.data, job.student, job.corruption, job.trusted, job.seed, job.phase)
    model = build_student(job.student, cell_data(job.data, job.student, 0.0, 0), job.seed)
    optimizer, scheduler = make_recipe(job.recipe, model, job.lr, job.steps)
    run = Run(job, data, model, optimizer, scheduler, Trace(lambda m: evaluate_accuracy(m, *data.score)))
    torch.manual_seed(job.seed)  # nothing should draw from the global generator, but if it does, reproducibly
    warm_up()
    started, cpu = time.perf_counter(), time.process_time()
    run.trace.record(model, 0)
    taken, extras = TRAINERS[job.arm](run)
    return {**run_result(run.trace, taken, started, cpu), **extras, "data": data.stats}


# -------------------------------------------------------------------------------------------- planning
def cells(args: argparse.Namespace) -> list[Cell]:
    return list(itertools.product(args.students, args.data, args.recipes, args.corruptions, args.trusted))


def applies(arm: str, corruption: str) -> bool:
    """Noise losses run on clean and noisy cells, imbalance losses on clean and long-tailed ones, others on all."""
    family = CORRUPTIONS[corruption].family
    return not (arm in NOISE_LOSSES and family == "imbalance") and not (arm in IMBALANCE_LOSSES and family == "noise")


def trained_arms(args: argparse.Namespace, corruption: str) -> list[str]:
    """The arms that train at their own picked settings in a cell (every arm but ce-time)."""
    return [arm for arm in args.arms if arm != "ce-time" and applies(arm, corruption)]


def settings(args: argparse.Namespace, recipe: str, arm: str, extra: Rates = ()) -> list[tuple[float, Hyper]]:
    """The (rate, loss setting) grid an arm is tuned over, ``extra`` rates included: one rate with --lr, one point
    with --no-tune."""
    rates = rate_grid(args, recipe)
    rates = (args.lr,) if args.lr is not None else (rates[len(rates) // 2],) if args.no_tune else (*rates, *extra)
    hypers = [tuple(sorted(h.items())) for h in LOSS_GRIDS.get(arm, ({},))]
    return list(itertools.product(rates, hypers[:1] if args.no_tune else hypers))


def rate_grid(args: argparse.Namespace, recipe: str) -> tuple[float, ...]:
    """The rates a recipe's arms are tuned over: ``--lrs``, else the recipe's 3-value grid."""
    return tuple(sorted(args.lrs)) if args.lrs else RECIPES[recipe]["lrs"]


def make_job(args: argparse.Namespace, cell: Cell, arm: str, point: tuple[float, Hyper], seed: int, phase: str) -> Job:
    return Job(
        phase=phase,
        **dict(zip(CELL_FIELDS, cell)),
        arm=arm,
        lr=point[0],
        hyper=point[1],
        seed=seed,
        steps=args.steps,
        preset=args.preset,
        teach_every=args.teach_every if arm in TAUGHT_ARMS else None,
        eval_every=min(args.eval_every, args.steps),
        count_labels=args.count_labels and arm in DLN_ARMS,
    )


def tune_jobs(args: argparse.Namespace, extra: Extra | None = None) -> list[Job]:
    """Every (cell, arm, setting) on every tuning seed, with the arm's ``extra`` rates; none with --no-tune."""
    if args.no_tune:
        return []
    extra = {} if extra is None else extra
    return [
        make_job(args, cell, arm, point, seed, "tune")
        for cell in cells(args)
        for arm in trained_arms(args, cell[3])
        for point in settings(args, cell[2], arm, extra.get((*cell, arm), ()))
        for seed in args.tune_seeds
    ]


def beyond_edge(rates: Rates, lr: float) -> float | None:
    """The next rate outward when ``lr`` is the largest or smallest of ``rates`` (the grid's own ratio there),
    to 6 significant digits (it names a job)."""
    ordered = sorted(set(rates))
    if len(ordered) < 2 or lr not in (ordered[0], ordered[-1]):
        return None
    outward = lr * ordered[-1] / ordered[-2] if lr == ordered[-1] else lr * ordered[0] / ordered[1]
    return float(f"{outward:.6g}")


def tune(args: argparse.Namespace, store: Store, runner: ProcessPoolExecutor | None) -> tuple[Picks, Extra]:
    """The tune phase: the grid, then, for an arm whose best rate is at the grid's edge, the next rate outward,
    up to ``--extend-edges`` times (an optimum past the edge is not an optimum; a careful user goes on looking)."""
    extra: dict[tuple[Any, ...], Rates] = {}
    for extension in range(args.extend_edges + 1):  # --extend-edges >= 0: one pass at least
        run_phase(tune_jobs(args, extra), store, runner, "tune" if extension == 0 else "tune past edges", run=run_job)
        picks = pick_settings(args, store, extra)
        # a --no-tune pick has no scores, so no edge
        outward = {key: beyond_edge([p["lr"] for p in pick["scores"]], pick["lr"]) for key, pick in picks.items()}
        grown = {key: (*extra.get(key, ()), lr) for key, lr in outward.items() if lr is not None}
        if not grown or extension == args.extend_edges:
            break
        extra |= grown
    return picks, extra


def pick_settings(args: argparse.Namespace, store: Store, extra: Extra | None = None) -> Picks:
    """Per (cell, arm): the setting of the best held-out score, its mean over the tuning seeds (ties: the smaller
    rate, then the first setting); ``edge`` says whether that rate is the largest or smallest tried."""
    extra = {} if extra is None else extra
    picks = {}
    for cell in cells(args):
        for arm in trained_arms(args, cell[3]):
            grid = settings(args, cell[2], arm, extra.get((*cell, arm), ()))
            if args.no_tune:
                picks[(*cell, arm)] = {"lr": grid[0][0], "hyper": grid[0][1], "score": None, "scores": []}
                continue
            per_seed = [
                [store.get(make_job(args, cell, arm, p, seed, "tune"))["result"]["final"] for seed in args.tune_seeds]
                for p in grid
            ]
            scores = [statistics.mean(finals) for finals in per_seed]
            best = max(range(len(grid)), key=lambda i: (scores[i], -grid[i][0], -i))
            rates = sorted({lr for lr, _ in grid})
            picks[(*cell, arm)] = {
                "lr": grid[best][0],
                "hyper": grid[best][1],
                "score": scores[best],
                "scores": [
                    {"lr": lr, "hyper": dict(h), "score": s, "per_seed": finals}
                    for (lr, h), s, finals in zip(grid, scores, per_seed)
                ],
                "edge": len(rates) > 1 and grid[best][0] in (rates[0], rates[-1]),
            }
    return picks


def picked(picks: Picks, cell: Cell, arm: str) -> tuple[float, Hyper]:
    pick = picks[(*cell, arm)]
    return pick["lr"], pick["hyper"]


def seed_jobs(args: argparse.Namespace, picks: Picks) -> list[Job]:
    return [
        make_job(args, cell, arm, picked(picks, cell, arm), seed, "test")
        for cell in cells(args)
        for arm in trained_arms(args, cell[3])
        for seed in args.seeds
    ]


def ce_time_jobs(args: argparse.Namespace, picks: Picks, store: Store) -> list[Job]:
    """CE for as long (training CPU time) as the same seed's dln-taught run: more steps, ce's rate and cosine."""
    if not {"ce-time", "ce", "dln-taught"} <= set(args.arms):
        return []
    jobs = []
    for cell, seed in itertools.product(cells(args), args.seeds):
        ce, taught = (make_job(args, cell, arm, picked(picks, cell, arm), seed, "test") for arm in ("ce", "dln-taught"))
        steps = matched_steps(args.steps, store.get(taught)["result"], store.get(ce)["result"])
        jobs.append(replace(ce, arm="ce-time", steps=steps, eval_every=min(args.eval_every, steps)))
    return jobs


# ------------------------------------------------------------------------------------------- reporting
def arm_row(arm: str, seeds: dict[int, dict[str, Any]], pick: dict[str, Any]) -> dict[str, Any]:
    """One arm of one cell over its seeds: accuracy, times, teacher rounds."""
    results = [run["result"] for _, run in sorted(seeds.items())]
    finals = [r["final"] for r in results]
    job = next(iter(seeds.values()))["job"]
    return {
        "arm": arm,
        "lr": job["lr"],
        "hyper": {name: value for name, value in job["hyper"]},
        "lr_at_grid_edge": pick.get("edge", False),
        "tune_score": pick.get("score"),
        "seeds": sorted(seeds),
        "finals": finals,
        "mean": statistics.mean(finals),
        "std": statistics.pstdev(finals),
        "steps": statistics.mean(r["student_steps"] for r in results),
        "seconds": statistics.mean(r["seconds"] for r in results),
        "train_cpu_seconds": statistics.mean(r["train_cpu_seconds"] for r in results),
        "rounds": sum(r["rounds"] for r in results),
        "skipped_rounds": sum(r["skipped_rounds"] for r in results),
        "rolled_back_rounds": sum(r["rolled_back_rounds"] for r in results),
    }


def best_fixed(rows: dict[str, dict[str, Any]]) -> tuple[str | None, str]:
    """The fixed arm the trusted hold-out picks (its tune score); without a tune phase, the best test mean."""
    candidates = [arm for arm in FIXED_ARMS if arm in rows]
    if not candidates:
        return None, "none"
    if all(rows[arm]["tune_score"] is not None for arm in candidates):
        return max(candidates, key=lambda arm: rows[arm]["tune_score"]), "tune"
    return max(candidates, key=lambda arm: rows[arm]["mean"]), "oracle"


def cell_bar(rows: dict[str, dict[str, Any]], fixed: str | None) -> dict[str, float | None]:
    """The issue's numbers for one cell: dln-taught against best fixed, ce and mwn, its worst seed, its cost."""
    taught = rows.get("dln-taught")

    def gap(arm: str | None) -> float | None:
        return taught["mean"] - rows[arm]["mean"] if taught and arm in rows else None

    ce = rows.get("ce")
    twins = []
    if taught and ce:
        ce_final = dict(zip(ce["seeds"], ce["finals"]))
        twins = [final - ce_final[s] for s, final in zip(taught["seeds"], taught["finals"]) if s in ce_final]
    return {
        "vs_best_fixed": gap(fixed),
        "vs_ce": gap("ce"),
        "vs_mwn": gap("mwn"),
        "worst_seed_vs_ce": min(twins) if twins else None,
        "cost_vs_ce": taught["train_cpu_seconds"] / ce["train_cpu_seconds"] if taught and ce else None,
    }


def summarise(runs: list[dict[str, Any]], picks: Picks) -> list[dict[str, Any]]:
    """One entry per cell, in the order the runs came: every arm's row, the best fixed arm and the bar numbers."""
    grouped: dict[Cell, dict[str, dict[int, dict[str, Any]]]] = {}
    for run in runs:
        job = run["job"]
        cell = tuple(job[name] for name in CELL_FIELDS)
        grouped.setdefault(cell, {}).setdefault(job["arm"], {})[job["seed"]] = run
    summaries = []
    for cell, arms in grouped.items():
        ordered = sorted(arms, key=ARMS.index)
        rows = {
            arm: arm_row(arm, arms[arm], picks.get((*cell, "ce" if arm == "ce-time" else arm), {})) for arm in ordered
        }
        ce_cpu = rows["ce"]["train_cpu_seconds"] if "ce" in rows else None
        for row in rows.values():
            row["cpu_vs_ce"] = row["train_cpu_seconds"] / ce_cpu if ce_cpu else None
        fixed, picked_by = best_fixed(rows)
        summaries.append(
            {
                **dict(zip(CELL_FIELDS, cell)),
                "arms": list(rows.values()),
                "best_fixed": fixed,
                "best_fixed_picked_by": picked_by,
                "bar": cell_bar(rows, fixed),
            }
        )
    return summaries


def _over_present(reduce: Callable[[list[float]], float], values: list[float | None]) -> float | None:
    """``reduce`` over the values that exist (an arm may be missing from a cell); ``None`` if none does."""
    present = [v for v in values if v is not None]
    return reduce(present) if present else None


def bar_summary(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's bar over the grid: averages over the corrupted cells, the clean cells against ce, the checks."""
    corrupted = [s["bar"] for s in summaries if s["corruption"] != "clean"]
    clean = [s["bar"] for s in summaries if s["corruption"] == "clean"]
    every = [s["bar"] for s in summaries]
    numbers = {
        "corrupted_cells": len(corrupted),
        "corrupted_mean_vs_best_fixed": _over_present(statistics.mean, [b["vs_best_fixed"] for b in corrupted]),
        "corrupted_worst_vs_best_fixed": _over_present(min, [b["vs_best_fixed"] for b in corrupted]),
        "corrupted_mean_vs_ce": _over_present(statistics.mean, [b["vs_ce"] for b in corrupted]),
        "corrupted_mean_vs_mwn": _over_present(statistics.mean, [b["vs_mwn"] for b in corrupted]),
        "clean_cells": len(clean),
        "clean_mean_vs_ce": _over_present(statistics.mean, [b["vs_ce"] for b in clean]),
        "clean_worst_vs_ce": _over_present(min, [b["vs_ce"] for b in clean]),
        "worst_seed_vs_ce_twin": _over_present(min, [b["worst_seed_vs_ce"] for b in every]),
        "worst_cost_vs_ce": _over_present(max, [b["cost_vs_ce"] for b in every]),
    }
    meets = {
        "every corrupted cell >= best fixed - 0.5": ("corrupted_worst_vs_best_fixed", BAR["cell_vs_best_fixed"]),
        "corrupted mean >= best fixed + 1.0": ("corrupted_mean_vs_best_fixed", BAR["corrupted_mean_vs_best_fixed"]),
        "corrupted mean >= ce + 5": ("corrupted_mean_vs_ce", BAR["corrupted_mean_vs_ce"]),
        "corrupted mean >= mwn": ("corrupted_mean_vs_mwn", BAR["corrupted_mean_vs_mwn"]),
        "every clean cell >= ce - 0.3": ("clean_worst_vs_ce", BAR["clean_vs_ce"]),
        "no seed more than 2 below its ce twin": ("worst_seed_vs_ce_twin", BAR["seed_vs_ce_twin"]),
    }
    checks = {name: None if numbers[key] is None else numbers[key] >= bound for name, (key, bound) in meets.items()}
    cost = numbers["worst_cost_vs_ce"]
    checks["cost <= 3x ce in every cell (the aim)"] = None if cost is None else cost <= BAR["cost_vs_ce"]
    return {**numbers, "checks": checks}


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}×"


def cell_title(s: dict[str, Any]) -> str:
    return f"{s['student']} · {s['data']} · {s['recipe']} · {s['corruption']} · trusted {100 * s['trusted']:g} %"


def cell_table(s: dict[str, Any]) -> list[str]:
    """One cell's arms: accuracy over seeds, each seed, the setting, times and the taught rounds."""
    picked = {"tune": "picked on the trusted hold-out", "oracle": "ORACLE: best test mean, no tune phase"}
    lines = [
        f"### {cell_title(s)}",
        "",
        f"best fixed: **{s['best_fixed']}** ({picked.get(s['best_fixed_picked_by'], 'none ran')})",
        "",
        "| arm | lr | loss setting | tune score % | final test acc % | per seed | wall s | train CPU s | CPU × ce | "
        "rounds (skipped / rolled back) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["arms"]:
        lr = f"{r['lr']:g}" + (" (edge)" if r["lr_at_grid_edge"] else "")
        setting = ", ".join(f"{k} {v:g}" for k, v in r["hyper"].items())
        seeds = ", ".join(f"{100 * v:.1f}" for v in r["finals"])
        rounds = f"{r['rounds']} ({r['skipped_rounds']} / {r['rolled_back_rounds']})" if r["rounds"] else ""
        tuned = "" if r["tune_score"] is None else f"{100 * r['tune_score']:.1f}"
        lines.append(
            f"| {r['arm']} | {lr} | {setting} | {tuned} | {fmt_mean_std(r['finals'])} | {seeds} | {r['seconds']:.1f} | "
            f"{r['train_cpu_seconds']:.1f} | {_times(r['cpu_vs_ce'])} | {rounds} |"
        )
    return [*lines, ""]


def markdown(summaries: list[dict[str, Any]], bar: dict[str, Any]) -> str:
    lines = [
        "| cell | best fixed | dln-taught − best fixed | − ce | − mwn | worst seed − its ce twin | "
        "dln-taught CPU × ce |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        b = s["bar"]
        oracle = " (oracle)" if s["best_fixed_picked_by"] == "oracle" else ""
        lines.append(
            f"| {cell_title(s)} | {s['best_fixed']}{oracle} | {fmt_points(b['vs_best_fixed'])} | "
            f"{fmt_points(b['vs_ce'])} | {fmt_points(b['vs_mwn'])} | {fmt_points(b['worst_seed_vs_ce'])} | "
            f"{_times(b['cost_vs_ce'])} |"
        )
    lines += [
        "",
        f"Over the {bar['corrupted_cells']} corrupted cells, dln-taught − best fixed: mean "
        f"{fmt_points(bar['corrupted_mean_vs_best_fixed'])}, worst {fmt_points(bar['corrupted_worst_vs_best_fixed'])}; "
        f"− ce {fmt_points(bar['corrupted_mean_vs_ce'])}; − mwn {fmt_points(bar['corrupted_mean_vs_mwn'])} (points). "
        f"Over the {bar['clean_cells']} clean cells, − ce: mean {fmt_points(bar['clean_mean_vs_ce'])}, worst "
        f"{fmt_points(bar['clean_worst_vs_ce'])}. Worst seed − its ce twin: "
        f"{fmt_points(bar['worst_seed_vs_ce_twin'])}; largest CPU × ce: {_times(bar['worst_cost_vs_ce'])}.",
        "",
        "| the issue's bar | met |",
        "|---|---|",
        *(f"| {name} | {'n/a' if ok is None else 'yes' if ok else 'no'} |" for name, ok in bar["checks"].items()),
        "",
    ]
    for s in summaries:
        lines += cell_table(s)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["grid", "issue"], default="grid", help="issue: issue 20's case")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--recipes", nargs="+", default=list(ROBUST_RECIPES), choices=ROBUST_RECIPES)
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=list(CORRUPTIONS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="evaluation seeds")
    parser.add_argument("--steps", type=int, default=6000, help="student steps of every arm (batch 25)")
    parser.add_argument("--trusted", nargs="+", type=float, default=[0.1], help="trusted share(s) of the training set")
    parser.add_argument("--jobs", type=int, default=2, help="parallel worker processes (one torch thread each)")
    parser.add_argument("--fast", action="store_true", help="the ~15-minute subset described above")
    parser.add_argument("--no-tune", action="store_true", help="middle-of-grid rates, each loss's first setting")
    parser.add_argument("--lr", type=float, default=None, help="one rate for every recipe and arm")
    parser.add_argument(
        "--lrs", nargs="+", type=float, default=None, help="the rate grid every arm is tuned over (one recipe)"
    )
    parser.add_argument("--preset", default=None, help="a key of dynaloss.PRESETS (default: the library's default)")
    parser.add_argument("--teach-every", type=int, default=None, help="K (default: dynaloss.settings.TEACH_EVERY)")
    parser.add_argument(
        "--count-labels",
        action="store_true",
        help="DLN arms: ClassAwareDLN.add_labels(training labels, trusted labels) before the first step",
    )
    parser.add_argument(
        "--tune-seeds",
        nargs="+",
        type=int,
        default=[1000, 1001],
        help="seeds of the tune phase (no eval seed); a setting's score is its mean over them",
    )
    parser.add_argument(
        "--extend-edges",
        type=int,
        default=2,
        help="times an arm whose best rate is the grid's largest or smallest tries the next one outward",
    )
    parser.add_argument("--eval-every", type=int, default=1000, help="score the student every this many steps")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/...)")
    if parser.parse_args(argv).fast:  # defaults, not overrides: filters given with --fast still apply
        parser.set_defaults(
            students=["cnn", "resmlp"],
            recipes=["sgdm"],
            corruptions=["clean", "sym40", "pair40", "lt100"],
            arms=list(FAST_ARMS),
            data=["mnist1d"],
            seeds=[0, 1],
            steps=3000,
            no_tune=True,
        )
    args = parser.parse_args(argv)
    if args.extend_edges < 0:
        parser.error(f"--extend-edges takes a count >= 0, got {args.extend_edges}")
    if args.lrs is not None and (len(args.recipes) != 1 or min(args.lrs) <= 0):
        parser.error(f"--lrs takes positive rates for one recipe, got {args.lrs} for recipes {args.recipes}")
    if args.case == "issue":  # standard MNIST-1D, 500 of its 4,000 training samples trusted, sym40, fixed lr 0.05
        args.students, args.data, args.recipes, args.corruptions = ["cnn"], ["mnist1d"], ["sgdm"], ["sym40"]
        args.lr, args.no_tune, args.steps, args.trusted, args.seeds = 0.05, True, 6000, [0.125], [0, 1]
        if args.arms == list(ARMS):  # unless --arms names some
            args.arms = list(ISSUE_ARMS)
    if args.out is None:
        name = "robust_issue" if args.case == "issue" else "robust_fast" if args.fast else "robust"
        args.out = Path("benchmarks/results") / name
    return args


def resolve_library_defaults(args: argparse.Namespace) -> None:
    """K from the library's settings, read now (it is being tuned), and the preset checked against the library's."""
    if args.teach_every is None:
        args.teach_every = dynaloss.settings.TEACH_EVERY
    if args.preset is not None and args.preset not in dynaloss.PRESETS:
        raise SystemExit(f"--preset must be one of {sorted(dynaloss.PRESETS)}, got {args.preset!r}")


def run_grid(args: argparse.Namespace, store: Store) -> tuple[Picks, list[Job], list[Job]]:
    """The three phases in order (each needs the one before): tune, seeds, ce-time. Returns the picks, the tune
    jobs and the jobs reported."""
    # one pool for every phase: a fresh worker pays its one-off imports once
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=init_worker) as pool:
        runner = pool if args.jobs > 1 else None
        picks, extra = tune(args, store, runner)
        tested = seed_jobs(args, picks)
        run_phase(tested, store, runner, "seeds", run=run_job)
        matched = ce_time_jobs(args, picks, store)
        run_phase(matched, store, runner, "ce-time", run=run_job)
    return picks, tune_jobs(args, extra), [*tested, *matched]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    resolve_library_defaults(args)
    grids = {r: list(rate_grid(args, r)) for r in args.recipes}
    machine, config, store = open_results(args, recipe_lr_grids=grids, loss_grids=LOSS_GRIDS)
    started = time.perf_counter()
    picks, tuned, jobs = run_grid(args, store)
    runs = [store.get(job) for job in jobs]
    summaries = summarise(runs, picks)
    bar = bar_summary(summaries)
    table = markdown(summaries, bar)
    print(table)
    wall = time.perf_counter() - started
    print(f"wall time of this invocation: {wall:.0f} s (finished jobs from earlier runs are not re-run)")
    report = {
        "machine": machine,
        "config": config,
        "picks": [{"cell": list(key[:5]), "arm": key[5], **pick} for key, pick in picks.items()],
        "cells": summaries,
        "bar": bar,
        "runs": runs,
        "tune_runs": [store.get(job) for job in tuned],
        "wall_seconds": wall,
    }
    write_results(args.out, "robust", report, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
