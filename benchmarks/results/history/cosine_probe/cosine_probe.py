"""Probe: does a cosine-decaying student learning rate remove the long run's transient dips?

    OMP_NUM_THREADS=1 python cosine_probe.py {ce,dln} SEED [STEPS]

The library default (``Teacher``, N = 10, ``mode="paper"``) or cross-entropy on MNIST-1D, with the student's
learning rate ``0.1 * (1 + cos(pi * t / STEPS)) / 2 + 1e-4`` at student step ``t`` (for the teacher, set at the
start of each round). Prints one JSON line: the final test accuracy and the worst fall below the best so far,
read every 1,000 steps.
"""

from __future__ import annotations

import json
import math
import sys

import torch
import torch.nn.functional as F

from dynaloss.losses import PairwiseDLN
from dynaloss.teacher import Teacher
from dynaloss.training import evaluate_accuracy, load_dataset, make_split, make_student, seeded


def cosine_lr(step: int, steps: int) -> float:
    return 0.1 * 0.5 * (1 + math.cos(math.pi * step / steps)) + 1e-4


def main(arm: str, seed: int, steps: int) -> None:
    torch.set_num_threads(1)
    data = load_dataset("mnist1d")
    student = make_student("mnist1d", data.num_classes, seed)
    split = make_split("mnist1d", data, val_ratio=0.5, seed=seed)
    train_iter, val_iter = split.train_batches(), split.val_batches()
    accuracy: list[float] = []
    done = 0
    if arm == "dln":
        with seeded(seed):
            teacher = Teacher(PairwiseDLN(data.num_classes), steps=10, student_lr=0.1, mode="paper", anchor=0.05)
        while done < steps:
            teacher.student_lr = cosine_lr(done, steps)
            done += teacher.step(student, train_iter, val_iter).student_steps
            if done % 1000 == 0:
                accuracy.append(evaluate_accuracy(student, data.x_test, data.y_test))
    else:
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        student.train()
        for done in range(1, steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(done - 1, steps)
            x, y = next(train_iter)
            loss = F.cross_entropy(student(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if done % 1000 == 0:
                accuracy.append(evaluate_accuracy(student, data.x_test, data.y_test))
    best, fall = 0.0, 0.0
    for value in accuracy:
        best, fall = max(best, value), max(fall, max(best, value) - value)
    print(json.dumps({"arm": arm, "seed": seed, "final": accuracy[-1], "fall_points": round(100 * fall, 1)}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 20000)
