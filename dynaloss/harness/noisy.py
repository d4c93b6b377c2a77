"""The demo's task, training labels that lie next to a small set that does not, and the README's loop over it.

:func:`make_noisy_task` keeps a class-balanced *trusted* set of a data set's training part clean and replaces a
share of the other labels by a uniformly drawn other class; :func:`user_loop` is the README's training loop (the
user's optimizer and scheduler, a teacher round every K steps) with evaluations and a progress report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from dynaloss.harness.data import Dataset, _generator
from dynaloss.harness.progress import progress as progress_report
from dynaloss.harness.training import ArmResult, Evaluate
from dynaloss.settings import TEACH_EVERY

__all__ = ["NoisyTask", "batches", "gce_loss", "make_noisy_task", "user_loop"]

Pair = tuple[Tensor, Tensor]
Loss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class NoisyTask:
    """A classification task whose training labels are partly wrong, with a clean trusted set.

    Attributes:
        noisy: ``(x, labels)`` of the corrupted part, the labels as training sees them.
        trusted: ``(x, y)`` of the clean trusted set, classes interleaved (``c0, c1, ..., c0, c1, ...``) so that
            its first and second halves are class-balanced.
        test: ``(x, y)`` that the arms are scored on.
        num_classes: ``C``.
        noise_rate: the share of ``noisy``'s labels that are wrong.
    """

    noisy: Pair
    trusted: Pair
    test: Pair
    num_classes: int
    noise_rate: float

    @property
    def train(self) -> Pair:
        """noisy ∪ trusted: what every arm trains on."""
        return torch.cat([self.noisy[0], self.trusted[0]]), torch.cat([self.noisy[1], self.trusted[1]])

    def for_tuning(self) -> NoisyTask:
        """The task with the trusted set's second half as its test set, the first half still trusted: a learning
        rate is picked on held-out clean labels, never on the test set."""
        (x, y), half = self.trusted, len(self.trusted[1]) // 2
        return replace(self, trusted=(x[:half], y[:half]), test=(x[half:], y[half:]))

    def to(self, device: torch.device | str) -> NoisyTask:
        def move(pair: Pair) -> Pair:
            return pair[0].to(device), pair[1].to(device)

        return replace(self, noisy=move(self.noisy), trusted=move(self.trusted), test=move(self.test))


def make_noisy_task(data: Dataset, *, trusted_per_class: int, noise_rate: float, seed: int) -> NoisyTask:
    """Draw ``trusted_per_class`` samples of each class as the trusted set, then give exactly ``noise_rate`` of the
    other training labels a uniformly drawn OTHER class; the draws depend on ``seed`` only."""
    x, y, classes = data.x_train, data.y_train, data.num_classes
    rng = _generator(seed, 0)
    members = [(y == c).nonzero().squeeze(1) for c in range(classes)]
    members = [m[torch.randperm(len(m), generator=rng)] for m in members]
    if min(map(len, members)) <= trusted_per_class:
        raise ValueError(f"a class has at most {trusted_per_class} training samples: none would be left to corrupt")
    trusted = torch.stack([m[:trusted_per_class] for m in members]).T.flatten()  # classes interleaved
    rest = torch.cat([m[trusted_per_class:] for m in members])
    labels = y[rest].clone()
    flipped = torch.randperm(len(rest), generator=rng)[: round(noise_rate * len(rest))]
    shift = torch.randint(1, classes, (len(flipped),), generator=rng)  # 1 .. C - 1: never the true class
    labels[flipped] = (labels[flipped] + shift) % classes
    noise = float((labels != y[rest]).float().mean())
    return NoisyTask((x[rest], labels), (x[trusted], y[trusted]), (data.x_test, data.y_test), classes, noise)


def batches(data: Pair, batch_size: int, seed: int, stream: int) -> Iterator[Pair]:
    """Endless batches of ``data``, reshuffled on every pass (a short last batch is dropped), drawn from the
    generator of ``(seed, stream)``: two arms reading the same stream see the same batches in the same order."""
    x, y = data
    rng = _generator(seed, stream)
    size = min(batch_size, len(y))
    while True:
        order = torch.randperm(len(y), generator=rng).to(y.device)
        for start in range(0, len(y) - size + 1, size):
            index = order[start : start + size]
            yield x[index], y[index]


def gce_loss(logits: Tensor, target: Tensor, q: float) -> Tensor:
    """Generalized cross-entropy (Zhang & Sabuncu, 2018), ``mean((1 - p_y ** q) / q)``: its gradient is CE's times
    ``p_y ** q``, so samples the model finds implausible count less."""
    log_p = torch.log_softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    return (-torch.expm1(q * log_p) / q).mean()  # 1 - p^q computed from log p: finite gradient at p = 0


def user_loop(
    model: nn.Module,
    loss_fn: Loss,
    train: Iterator[Pair],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    total_steps: int,
    evaluate: Evaluate,
    eval_every: int,
    name: str,
    progress: bool,
    teach: Callable[[], Any] | None = None,
    teach_every: int = TEACH_EVERY,
) -> ArmResult:
    """The README's loop: ``total_steps`` optimizer (and scheduler) steps on ``loss_fn``, and with ``teach`` a
    teacher round after every ``teach_every``-th step, the first one included.

    ``evaluate`` runs at step 0, every ``eval_every`` steps and at the end; ``result.seconds`` is the training's
    wall time, evaluations left out. ``result.rounds`` holds each round's record (what ``teach`` returns) as a dict.
    """
    result, evaluating = ArmResult(name), 0.0

    def score(step: int) -> None:
        nonlocal evaluating
        started = time.perf_counter()
        result.steps.append(step)
        result.accuracy.append(evaluate(model))
        evaluating += time.perf_counter() - started

    started = time.perf_counter()
    score(0)
    model.train()
    with progress_report(total_steps, name, enabled=progress) as bar:
        for it in range(total_steps):
            x, y = next(train)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if teach is not None and it % teach_every == 0:
                result.rounds.append(teach().as_dict())
            result.student_steps = it + 1
            if result.student_steps % eval_every == 0 or result.student_steps == total_steps:
                score(result.student_steps)
                bar.set_postfix_str(f"test acc {100 * result.accuracy[-1]:.1f} %")
            bar.update(1)
    result.seconds = time.perf_counter() - started - evaluating
    return result
