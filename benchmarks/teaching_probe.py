"""One run of issue 20's noisy case with one loss and one teacher setting: the probe behind the diagnosis.

The case: standard MNIST-1D, the 1-D CNN, 500 trusted training samples (clean labels), the other 3,500 corrupted
(``kind=sym``: ``noise`` of them moved to a uniformly drawn other class; ``kind=pair``: to c + 1; ``kind=lt``: a
long tail of ``ratio`` over the untrusted part, labels clean); SGD(lr 0.05, momentum 0.9, wd 5e-4) + cosine,
batch 25, 6,000 iterations; test accuracy every 1,000. Arms: ``ce``, ``gce`` (``q``), ``la`` (logit adjustment by
the training prior), all on noisy ∪ trusted; ``ca``: ``ClassAwareDLN`` taught as the README's loop (a round every
``every`` iterations, N = ``N``, the Adam teacher at ``dln_lr`` or ``teacher=lstm``, ``anchor``, validating on
batches of 100 of the trusted set or ``val=all`` of it, training on noisy ∪ trusted or ``use=val``: the noisy
part only; ``freeze=offsets,robustness,pair_offsets`` holds the named parameter groups at 0, ``shared=1`` one
robustness for every class, ``keep=0`` turns ``keep_scale`` off, ``pairs=0`` leaves the pair parameters out,
``pair_form=logit`` makes them logit offsets; the Adam teacher's variants: ``gate`` a dead zone on its
normalised step, ``norm=tensor`` one second moment per parameter tensor, ``beta1`` its momentum). One JSON
line per run is appended to ``out`` (default ``benchmarks/results/teaching_probe/runs.jsonl``), with the mean q
every 15 rounds.

    OMP_NUM_THREADS=1 python benchmarks/teaching_probe.py ca 0                      # the recommended loop, seed 0
    OMP_NUM_THREADS=1 python benchmarks/teaching_probe.py gce 1 kind=pair           # GCE, pair flips, seed 1
    OMP_NUM_THREADS=1 python benchmarks/teaching_probe.py ca 0 noise=0 keep=0       # clean, without keep_scale

A run takes 10 s (fixed losses) to 40 s (taught) of one core. The committed lines were run while issue 20's
design moved; each says in ``code`` which state of ``ClassAwareDLN`` it ran (docs/results.md, "When does
teaching pay?", quotes them with it).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import dynaloss
from dynaloss.harness.models import MNIST1DCNN
from dynaloss.harness.training import evaluate_accuracy, load_dataset, seeded

TRUSTED, BATCH, VAL_BATCH, CLASSES = 500, 25, 100, 10


def corrupt(y: Tensor, opts: dict[str, str], seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(labels, trusted indices, training indices)`` of the case: the trusted part clean, the rest corrupted."""
    generator = torch.Generator().manual_seed(1000 + seed)
    order = torch.randperm(len(y), generator=generator)
    trusted, rest = order[:TRUSTED], order[TRUSTED:]
    labels = y.clone()
    kind, rate = opts.get("kind", "sym"), float(opts.get("noise", 0.4))
    if kind == "lt":  # class c keeps ratio^(-c / (C - 1)) of its untrusted samples
        ratio = float(opts.get("ratio", 100))
        kept = [rest[y[rest] == c] for c in range(CLASSES)]
        rest = torch.cat([idx[: max(1, round(len(idx) * ratio ** (-c / (CLASSES - 1))))] for c, idx in enumerate(kept)])
    else:
        flip = rest[torch.rand(len(rest), generator=generator) < rate]
        shift = torch.randint(1, CLASSES, (len(flip),), generator=generator) if kind == "sym" else 1
        labels[flip] = (y[flip] + shift) % CLASSES
    return labels, trusted, torch.cat([trusted, rest])


def stream(x: Tensor, y: Tensor, index: Tensor, size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches of ``size`` from ``index``, reshuffled every pass."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = index[torch.randperm(len(index), generator=generator)]
        for start in range(0, len(order) - size + 1, size):
            batch = order[start : start + size]
            yield x[batch], y[batch]


def fixed_loss(arm: str, opts: dict[str, str], labels: Tensor, train: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    if arm == "ce":
        return F.cross_entropy
    if arm == "gce":
        q = float(opts.get("q", 0.7))
        return lambda z, t: ((1 - F.softmax(z, -1).gather(1, t[:, None]).clamp_min(1e-12) ** q) / q).mean()
    if arm == "la":
        log_prior = (torch.bincount(labels[train], minlength=CLASSES).double() / len(train)).log().float()
        return lambda z, t: F.cross_entropy(z + log_prior, t)
    raise SystemExit(f"arm must be ce, gce, la or ca, got {arm!r}")


class ProbeAdam(dynaloss.OptimizerTeacher):
    """Adam as the teacher, with the probe's variants: ``gate`` drops normalised steps below it (a dead zone:
    a coordinate moves only where rounds agree on its direction), ``norm=tensor`` shares the second moment
    within each parameter tensor (a coordinate with a small gradient then takes a small step)."""

    def __init__(self, gate: float, sizes: list[int] | None, beta1: float) -> None:
        super().__init__("adam", betas=(beta1, 0.999))
        self.gate, self.sizes = gate, sizes

    def forward(self, grad: Tensor, memory: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Any]:
        direction, (first, second, step) = super().forward(grad, memory)  # Adam's step and moments
        if self.sizes is not None:  # the same step over each tensor's mean second moment
            beta1, beta2 = self.betas
            second_hat = second / (1 - beta2**step)
            shared = torch.cat([part.mean().expand(len(part)) for part in torch.split(second_hat, self.sizes)])
            direction = -(first / (1 - beta1**step)) / (shared.sqrt() + self.eps)
        if self.gate:
            direction = direction.sign() * (direction.abs() - self.gate).clamp_min(0) / (1 - self.gate)
        return direction, (first, second, step)


def probe_teacher(opts: dict[str, str], loss_fn: torch.nn.Module) -> Any:
    """``opts['teacher']`` (default ``'adam'``), or a :class:`ProbeAdam` if a variant is asked for."""
    if not {"gate", "norm", "beta1"} & set(opts):
        return opts.get("teacher", "adam")
    sizes = [p.numel() for p in loss_fn.parameters() if p.requires_grad] if opts.get("norm") == "tensor" else None
    return ProbeAdam(float(opts.get("gate", 0)), sizes, float(opts.get("beta1", 0.9)))


def main(arm: str, seed: int, opts: dict[str, str]) -> dict[str, object]:
    torch.set_num_threads(1)
    data = load_dataset("mnist1d")
    # the CNN reads (B, 1, length)
    x, x_test = data.x_train.flatten(1).unsqueeze(1), data.x_test.flatten(1).unsqueeze(1)
    y, y_test = data.y_train, data.y_test
    labels, trusted, train = corrupt(y, opts, seed)
    if arm == "ca" and opts.get("use") == "val":  # the trusted set only validates
        train = train[TRUSTED:]
    steps, every = int(opts.get("steps", 6000)), int(opts.get("every", dynaloss.settings.TEACH_EVERY))
    with seeded(seed):
        model = MNIST1DCNN(CLASSES, length=x.shape[-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=float(opts.get("lr", 0.05)), momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    teacher = None
    if arm == "ca":
        loss_fn = dynaloss.ClassAwareDLN(
            CLASSES,
            shared_robustness=opts.get("shared") == "1",
            keep_scale=opts.get("keep", "1") == "1",
            pair_offsets=opts.get("pairs", "1") == "1",
            pair_form=opts.get("pair_form", "forward"),
        )
        for name in filter(None, opts.get("freeze", "").split(",")):
            getattr(loss_fn, name).requires_grad_(False)
        settings = {"teacher": probe_teacher(opts, loss_fn), "dln_lr": float(opts.get("dln_lr", 0.05))}
        teacher = dynaloss.Teacher(
            loss_fn,
            optimizer=optimizer,
            steps=int(opts.get("N", 10)),
            anchor_strength=float(opts.get("anchor", 0)),
            **settings,
        )
        train_iter = stream(x, labels, train, BATCH, seed + 77)
        if opts.get("val") == "all":
            val_iter: Iterator[tuple[Tensor, Tensor]] = iter(lambda: (x[trusted], y[trusted]), None)
        else:
            val_iter = stream(x, y, trusted, VAL_BATCH, seed + 99)
    else:
        loss_fn = fixed_loss(arm, opts, labels, train)
    batches = stream(x, labels, train, BATCH, seed)
    started, curve, q_trace = time.process_time(), [], []
    for it in range(1, steps + 1):
        xb, yb = next(batches)
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if teacher is not None and it % every == 0 and it < steps:
            teacher.step(model, train_iter, val_iter)
            q_trace.append(round(float(loss_fn.q.mean()), 3))
        if it % 1000 == 0 or it == steps:
            curve.append(round(evaluate_accuracy(model, x_test, y_test), 4))
            model.train()
    result: dict[str, object] = {
        "arm": arm,
        "seed": seed,
        "opts": opts,
        "final": curve[-1],
        "curve": curve,
        "cpu": time.process_time() - started,
        "machine": dynaloss.harness.training.machine_info("cpu"),
    }
    if teacher is not None:
        result.update(
            rounds=teacher.rounds,
            qtrace=q_trace[::15],
            q=[round(v, 3) for v in loss_fn.q.tolist()],
            b=[round(v, 2) for v in loss_fn.offsets.tolist()],
            pair_matrix=None if loss_fn.pair_matrix is None else torch.round(loss_fn.pair_matrix, decimals=2).tolist(),
        )
    return result


if __name__ == "__main__":
    options = dict(arg.split("=", 1) for arg in sys.argv[3:])
    outcome = main(sys.argv[1], int(sys.argv[2]), options)
    print(json.dumps(outcome))
    path = Path(options.get("out", "benchmarks/results/teaching_probe/runs.jsonl"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(outcome) + "\n")
