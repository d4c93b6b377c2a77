"""Trace what the default teacher does to its DLN on MNIST-1D: a line every 25 rounds.

    OMP_NUM_THREADS=1 python trace_round.py SEED ROUNDS

Columns: test accuracy; mean validation error of the last 25 rounds; the DLN's logit-gradient norm on 500 test
samples relative to its starting DLN (all classes, the true class, the wrong classes); the share of a 41 x 41
grid of the prediction square where the pair loss rises with the true class's prediction / falls with a wrong
class's (sign violations); the last update's norm; the distance of the DLN's parameters from the start; the
student's mean logit norm.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F

from dynaloss import functional as DF
from dynaloss.losses import PairwiseDLN
from dynaloss.teacher import Teacher
from dynaloss.training import evaluate_accuracy, load_dataset, make_split, make_student, seeded


def logit_gradient_norms(student: torch.nn.Module, loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Norm of d loss / d logits: all entries, the true classes', the wrong classes'."""
    with torch.no_grad():
        logits = student.eval()(x)
    student.train()
    logits.requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(logits, y), logits)
    true = F.one_hot(y, grad.shape[1]).bool()
    return grad.norm(), grad[true].norm(), grad[~true].norm()


def sign_violations(dln: PairwiseDLN) -> tuple[float, float]:
    grid = torch.linspace(0.01, 0.99, 41)
    true_prob, wrong_prob = (g.clone().requires_grad_() for g in torch.meshgrid(grid, grid, indexing="ij"))
    value = DF.pairwise_row_loss(dln.mlp_weights(), true_prob, wrong_prob)
    d_true, d_wrong = torch.autograd.grad(value.sum(), [true_prob, wrong_prob])
    return float((d_true > 0).float().mean()), float((d_wrong < 0).float().mean())


def main(seed: int, rounds: int) -> None:
    torch.set_num_threads(1)
    data = load_dataset("mnist1d")
    student = make_student("mnist1d", data.num_classes, seed)
    split = make_split("mnist1d", data, val_ratio=0.5, seed=seed)
    with seeded(seed):
        dln = PairwiseDLN(data.num_classes)
        teacher = Teacher(dln, steps=10, student_lr=0.1, mode="paper", anchor=0.05)
    start = copy.deepcopy(dln)
    train_iter, val_iter = split.train_batches(), split.val_batches()
    x, y = data.x_test[:500], data.y_test[:500]
    errors = []
    for index in range(rounds):
        record = teacher.step(student, train_iter, val_iter)
        errors.append(record.val_error_before)
        if (index + 1) % 25:
            continue
        now, before = logit_gradient_norms(student, dln, x, y), logit_gradient_norms(student, start, x, y)
        scale = [float(a / b) for a, b in zip(now, before)]
        true_violations, wrong_violations = sign_violations(dln)
        distance = torch.cat([(a - b).flatten() for a, b in zip(dln.parameters(), start.parameters())]).norm()
        with torch.no_grad():
            logit_norm = student.eval()(x).norm(dim=1).mean()
        student.train()
        print(
            f"r{index + 1} steps {(index + 1) * 20} acc {evaluate_accuracy(student, data.x_test, data.y_test):.3f} "
            f"val {sum(errors) / len(errors):.3f} gscale {scale[0]:.2f} gy {scale[1]:.2f} gj {scale[2]:.2f} "
            f"nonmono_y {true_violations:.2f} nonmono_j {wrong_violations:.2f} upd {record.update_norm:.4f} "
            f"dist {float(distance):.3f} logit {float(logit_norm):.1f}",
            flush=True,
        )
        errors = []


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
