"""L2T-DLN on CIFAR-10/100 with the research code's wide ResNet8 (paper Table 1: 87.6 -> 90.7 on CIFAR-10).

The data are read from a local copy of the python-pickle archive (nothing is downloaded):

    python examples/cifar.py --data-dir ~/data             # holds cifar-10-batches-py/
    python examples/cifar.py --data-dir ~/data --num-classes 100 --total-steps 20000

A GPU is used when there is one. The student is trained by the teacher's rounds (paper mode: each round's
2N unrolled SGD steps are the student's training).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import dynaloss
from dynaloss.harness.data import EpochSplit, augment_cifar, load_cifar
from dynaloss.harness.models import ResNet8


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = sum(
        int((model(x[i : i + batch_size].to(device)).argmax(1).cpu() == y[i : i + batch_size]).sum())
        for i in range(0, len(y), batch_size)
    )
    model.train()
    return correct / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py or cifar-100-python")
    parser.add_argument("--num-classes", type=int, choices=(10, 100), default=10)
    parser.add_argument("--total-steps", type=int, default=10000, help="student SGD steps (default: 10000)")
    parser.add_argument("--unroll", type=int, default=25, help="N, the paper's 25 for classification")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    try:
        x_train, y_train, x_test, y_test = load_cifar(args.data_dir, num_classes=args.num_classes)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    split = EpochSplit(x_train.to(device), y_train.to(device), val_ratio=0.5, seed=args.seed, transform=augment_cifar)
    train_iter, val_iter = split.train_batches(), split.val_batches()
    model = ResNet8(args.num_classes).to(device)
    loss_fn = dynaloss.PairwiseDLN(args.num_classes).to(device)
    teacher = dynaloss.Teacher(loss_fn, steps=args.unroll, student_lr=0.1, mode="paper")

    started, steps, next_eval = time.perf_counter(), 0, args.eval_every
    while steps < args.total_steps:
        record = teacher.step(model, train_iter, val_iter)
        steps += record.student_steps
        if steps >= next_eval or steps >= args.total_steps:
            next_eval += args.eval_every
            print(
                f"step {steps:6d}  epoch {split.epoch:3d}  test accuracy {accuracy(model, x_test, y_test):.4f}  "
                f"val error {record.val_error_after:.3f}  {record.seconds:.2f} s/round  "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
