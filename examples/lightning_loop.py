"""A Dynamic Loss Network in a PyTorch Lightning run: ``TeacherCallback`` teaches it while ``Trainer.fit`` trains.

The LightningModule's loss is ``PairwiseDLN(C, init="ce")`` (it starts equal to cross-entropy); a
``TeacherCallback`` runs a lookahead teacher round every K training batches on the trainer's own loaders,
unrolling the module's own optimizer (SGD with momentum under a cosine schedule). The rounds are logged to CSV
as ``teacher/*`` columns, the teacher's state goes into Lightning's checkpoints, and the run is then resumed
from its last checkpoint for a few more epochs. A twin trained with plain cross-entropy is the comparison.

    OMP_NUM_THREADS=1 python examples/lightning_loop.py      # synthetic data, generated here; < 1 minute on a CPU

Needs the ``lightning`` extra: ``pip install 'dynaloss[lightning]'``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dynaloss
from dynaloss.integrations.lightning import TeacherCallback

CLASSES, FEATURES, BATCH = 10, 20, 64


def make_task(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Overlapping Gaussian classes with 10 % of the training labels flipped: train, val and test sets."""
    generator = torch.Generator().manual_seed(seed)
    centers = 0.9 * torch.randn(CLASSES, FEATURES, generator=generator)
    sets = {}
    for name, size in (("train", 2048), ("val", 512), ("test", 4096)):
        y = torch.randint(0, CLASSES, (size,), generator=generator)
        x = centers[y] + torch.randn(size, FEATURES, generator=generator)
        if name == "train":
            flip = torch.rand(size, generator=generator) < 0.1
            y = torch.where(flip, torch.randint(0, CLASSES, (size,), generator=generator), y)
        sets[name] = (x, y)
    return sets


class Classifier(pl.LightningModule):
    """An MLP trained with a DLN (``loss='dln'``) or with cross-entropy (``loss='ce'``)."""

    def __init__(self, task: dict[str, tuple[torch.Tensor, torch.Tensor]], loss: str, total_steps: int) -> None:
        super().__init__()
        self.task, self.total_steps = task, total_steps
        self.model = nn.Sequential(
            nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, CLASSES)
        )
        # a submodule, so the module's checkpoint carries it too; configure_optimizers leaves it out
        self.loss_fn = dynaloss.PairwiseDLN(CLASSES, init="ce") if loss == "dln" else nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> dict[str, Any]:
        # the student's parameters only: the teacher alone updates the DLN (TeacherCallback checks this)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.task["train"]), batch_size=BATCH, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.task["val"]), batch_size=256)


@torch.no_grad()
def accuracy(module: Classifier, name: str) -> float:
    x, y = module.task[name]
    module.eval()
    return float((module(x).argmax(1) == y).float().mean())


def fit(
    module: Classifier, out: Path, run: str, max_steps: int, callback: TeacherCallback | None, ckpt_path: str | None
) -> str:
    """Train to ``max_steps`` (resuming from ``ckpt_path``), logging to ``out/run``; returns the last checkpoint."""
    saver = ModelCheckpoint(dirpath=out / "checkpoints", filename=run + "-{step}")  # each epoch's, the latest kept
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=CSVLogger(out, name=run, version=""),  # out/run/metrics.csv
        callbacks=[saver] if callback is None else [callback, saver],
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return saver.best_model_path  # with no monitor: the latest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=640, help="optimizer steps of the first fit (default: 640)")
    parser.add_argument("--more", type=int, default=160, help="steps added by the resumed fit (default: 160)")
    parser.add_argument("--teach-every", type=int, default=50, help="K: training batches between rounds")
    parser.add_argument("--unroll", type=int, default=10, help="N: look-ahead steps of a teacher round")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a new temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small layers on small CPUs run fastest on one thread
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # Lightning's banners
    warnings.filterwarnings("ignore", category=PossibleUserWarning)  # e.g. "use more loader workers"
    warnings.filterwarnings("ignore", message=".*LeafSpec")  # Lightning 2.6 on torch 2.10+ (its own deprecation)
    warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")  # it holds what we resume
    out = args.out or Path(tempfile.mkdtemp(prefix="dynaloss-lightning-"))
    task, total = make_task(args.seed), args.steps + args.more
    started, rows = time.perf_counter(), []

    def row(label: str, module: Classifier, steps: int, rounds: object) -> None:
        rows.append((label, steps, rounds, accuracy(module, "val"), accuracy(module, "test")))

    # 1. DLN + teacher: the first fit, checkpointed
    pl.seed_everything(args.seed, verbose=False)
    module = Classifier(task, "dln", total)
    teacher = dynaloss.Teacher(module.loss_fn, mode="lookahead", steps=args.unroll)
    callback = TeacherCallback(teacher, every=args.teach_every)
    checkpoint = fit(module, out, "dln", args.steps, callback, None)
    row("DLN + teacher", module, args.steps, teacher.rounds)

    # 2. resumed from the checkpoint: a new module, teacher and callback continue where the first fit stopped
    resumed = Classifier(task, "dln", total)
    resumed_teacher = dynaloss.Teacher(resumed.loss_fn, mode="lookahead", steps=args.unroll)
    resumed_callback = TeacherCallback(resumed_teacher, every=args.teach_every)
    fit(resumed, out, "dln-resumed", total, resumed_callback, checkpoint)
    row("  resumed", resumed, total, resumed_teacher.rounds)

    # 3. the twin: same initial weights, optimizer and schedule, with cross-entropy
    pl.seed_everything(args.seed, verbose=False)
    twin = Classifier(task, "ce", total)
    fit(twin, out, "ce", total, None, None)
    row("CE twin", twin, total, "-")

    print(f"{'run':<15} {'steps':>5} {'rounds':>6} {'val acc':>8} {'test acc':>9}")
    for label, steps, rounds, val, test in rows:
        print(f"{label:<15} {steps:>5} {rounds!s:>6} {val:>8.4f} {test:>9.4f}")
    record = resumed_callback.last_record
    assert record is not None
    print(
        f"last round: val error {record.val_error_before:.4f} -> {record.val_error_after:.4f}, "
        f"DLN update norm {record.update_norm:.2e}"
    )
    for run in ("dln", "dln-resumed"):
        with open(out / run / "metrics.csv") as file:
            rows = [line for line in csv.DictReader(file) if line.get("teacher/round")]
        steps = ", ".join(line["step"] for line in rows)
        print(f"{out / run / 'metrics.csv'}: {len(rows)} rounds logged (steps {steps})")
    print(f"columns: {', '.join(name for name in rows[0] if name.startswith('teacher/'))}")
    print(f"resumed from {checkpoint}; total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
