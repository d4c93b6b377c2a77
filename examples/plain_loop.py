"""Drop-in use in a plain PyTorch loop, where the training labels are partly wrong and a small set is trusted.

Your model, your optimizer, your schedule, your data loaders, your loop. The only changes are the loss
(``teacher.loss_fn`` where ``nn.CrossEntropyLoss()`` was) and a ``teacher.step(...)`` every
``dynaloss.settings.TEACH_EVERY`` (20) iterations. ``optimizer=optimizer`` makes every teacher round unroll
*your* optimizer's steps (here SGD with momentum and weight decay, at the learning rate the scheduler has set);
the round works on functional copies and never writes to your model or your optimizer.

What it runs: the 1-D CNN on MNIST-1D (generated locally). 500 of the 4,000 training samples are the trusted set
(50 a class, labels kept); 40 % of the other 3,500 labels are replaced by a uniformly drawn other class. The model
trains on all 4,000 for 6,000 iterations of batch 25 with ``SGD(lr=0.05, momentum=0.9, weight_decay=5e-4)`` and
``CosineAnnealingLR``; the teacher validates on the trusted set. ``--loss ce`` runs the same loop with
``nn.CrossEntropyLoss()``, for the twin to compare with.

    OMP_NUM_THREADS=1 python examples/plain_loop.py              # --loss ce, --iterations, --seed

What it reaches: README "When does teaching pay?".
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import dynaloss
from dynaloss.harness.data import load_mnist1d
from dynaloss.harness.models import MNIST1DCNN


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return correct


def noisy_labels(y: torch.Tensor, trusted: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """``y`` with ``rate`` of the labels outside ``trusted`` replaced by a uniformly drawn other class."""
    noisy = y.clone()
    others = torch.ones(len(y), dtype=torch.bool)
    others[trusted] = False
    candidates = others.nonzero()[:, 0]
    flipped = candidates[torch.randperm(len(candidates), generator=generator)[: round(rate * len(candidates))]]
    shift = torch.randint(1, 10, (len(flipped),), generator=generator)
    noisy[flipped] = (y[flipped] + shift) % 10
    return noisy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", choices=["dln", "ce"], default="dln", help="the taught DLN, or CE as the twin")
    parser.add_argument("--iterations", type=int, default=6000, help="optimizer steps (default: 6000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small convolutions on small CPUs run fastest on one thread
    torch.manual_seed(args.seed)

    x_train, y_train, x_test, y_test = load_mnist1d()
    generator = torch.Generator().manual_seed(args.seed)
    trusted = torch.cat([(y_train == c).nonzero()[:50, 0] for c in range(10)])  # 50 careful labels a class
    y_noisy = noisy_labels(y_train, trusted, 0.4, generator)
    train_loader = DataLoader(TensorDataset(x_train, y_noisy), batch_size=25, shuffle=True, drop_last=True)
    trusted_loader = DataLoader(TensorDataset(x_train[trusted], y_train[trusted]), batch_size=100, shuffle=True)

    model = MNIST1DCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.iterations)
    if args.loss == "dln":
        teacher = dynaloss.pairwise_teacher(10, optimizer=optimizer)  # the recommended configuration
        loss_fn = teacher.loss_fn  # was: torch.nn.CrossEntropyLoss(); equal to it until taught
        train_iter, val_iter = dynaloss.forever(train_loader), dynaloss.forever(trusted_loader)
    else:
        loss_fn = torch.nn.CrossEntropyLoss()

    started, iteration = time.perf_counter(), 0
    for x, y in dynaloss.forever(train_loader):
        iteration += 1
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if args.loss == "dln" and iteration % dynaloss.settings.TEACH_EVERY == 0:
            teacher.step(model, train_iter, val_iter)  # updates loss_fn; model and optimizer untouched
        if iteration % 1000 == 0:
            print(f"iteration {iteration:5d}  test accuracy {accuracy(model, x_test, y_test):.4f}")
        if iteration == args.iterations:
            break
    taught = f", q = {[round(q, 2) for q in loss_fn.q.tolist()]}" if args.loss == "dln" else ""
    print(
        f"final test accuracy: {accuracy(model, x_test, y_test):.4f} after {args.iterations} iterations, "
        f"{time.perf_counter() - started:.1f} s{taught}"
    )


if __name__ == "__main__":
    main()
