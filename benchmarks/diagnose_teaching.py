"""Why does the teacher not find the better loss? Measurements for the paper's pairwise DLN.

The case: standard MNIST-1D, 500 clean trusted samples, 40 % of the other 3,500 labels replaced by another class
(:func:`dynaloss.harness.noisy.make_noisy_task`), the 1-D CNN, SGD(0.05, momentum 0.9, wd 5e-4) + cosine over
6,000 iterations, batch 25, one seed. The DLN: ``PairwiseDLN(10, init="ce")`` (softmax rows, monotone, range
pinned) and its preset ``pairwise_teacher(10, "ce", optimizer=opt)`` (LSTM, dln_lr 1e-3, anchor 0.05, rollback).

1. Fits to GCE (q = 0.7): regression of the per-sample logit gradients from the CE start, Adam on the raw
   parameters, for three variants of the same MLP: the library's DLN (``pinned``), the same with the range pin
   off (``monotone``) and without the sign constraint (``free``, ``monotone=False``: at the CE start its
   parameters *are* the library DLN's constrained matrices). At CE-trained checkpoints (0, 500, 2,000 steps),
   the cosine between minus each variant's hypergradient (N = 10 training batches, 100 trusted samples, mean of
   the draws) and the direction from the CE start to its fit, against random directions. Then the validation
   error after h student steps of each loss from those checkpoints: what the teacher's objective prefers.
2. What one round of the preset's teacher (LSTM) and of an Adam teacher changes, per coordinate, against the
   distance from the CE start to the GCE fit.
3. The README loop (a round every 20 iterations) for 6,000 iterations beside CE, GCE and the fits held fixed,
   and the per-sample weight |dL/dz_y| / CE's against p_y of each (``sample_weight.png``).

    OMP_NUM_THREADS=1 python benchmarks/diagnose_teaching.py [--fast] [--out DIR]

Writes ``results.json`` and ``results.md`` to ``benchmarks/results/diagnose_teaching/`` (``--fast``: a smoke run
with fewer steps, into ``.../fast/``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dynaloss
from dynaloss import functional as DF
from dynaloss.harness.models import MNIST1DCNN
from dynaloss.harness.noisy import NoisyTask, batches, gce_loss, make_noisy_task, user_loop
from dynaloss.harness.plot import loss_profile, plot_sample_weight
from dynaloss.harness.training import evaluate_accuracy, load_dataset, machine_info, seeded

ROOT = Path(__file__).resolve().parent
Q = 0.7  # GCE's exponent
TEACH_EVERY, UNROLL, VAL_BATCH, BATCH = 20, 10, 100, 25
VARIANTS = ("pinned", "monotone", "free")
FULL = {"steps": 6000, "draws": 5, "fit_steps": {"pinned": 400, "monotone": 400, "free": 1500}, "rounds": 5, "h": 300}
FAST = {"steps": 600, "draws": 2, "fit_steps": {"pinned": 20, "monotone": 20, "free": 60}, "rounds": 2, "h": 30}


# ------------------------------------------------------------------------------------------------ pieces
class UnpinnedDLN(dynaloss.PairwiseDLN):
    """The library's monotone DLN with its range left free: the sign constraint only."""

    def mlp_weights(self, layers: Sequence[Tensor] | None = None) -> list[Tensor]:
        return DF.monotone_weights(list(self.layers if layers is None else layers))


def make_dln(variant: str, raw: Sequence[Tensor] | None = None) -> dynaloss.PairwiseDLN:
    """A variant of ``PairwiseDLN(10, init="ce")``, its raw parameters replaced by ``raw`` (the pinned range stays
    the CE start's)."""
    dln = {"pinned": dynaloss.PairwiseDLN, "monotone": UnpinnedDLN}.get(variant)
    module = dln(10, init="ce") if dln else dynaloss.PairwiseDLN(10, init="ce", monotone=False)
    if raw is not None:
        with torch.no_grad():
            for p, r in zip(module.layers, raw):
                p.copy_(r)
    return module


def flat(tensors: Any) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def cos(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def student(model_state: dict[str, Any] | None = None, optimizer_state: dict[str, Any] | None = None) -> Any:
    """The CNN (seed 0) and the recipe's SGD, optionally restored from a checkpoint."""
    with seeded(0):
        model = MNIST1DCNN(10, length=40)
    if model_state is not None:
        model.load_state_dict(model_state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    if optimizer_state is not None:
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))  # it would share the momentum buffers
    return model, optimizer


def per_sample_grads(loss: Callable[[Tensor, Tensor], Tensor], z: Tensor, y: Tensor, create: bool = False) -> Tensor:
    """``d loss_i / d z_i`` for every sample (``loss`` returns per-sample values)."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        return torch.autograd.grad(loss(z, y).sum(), z, create_graph=create)[0]


def gce_per_sample(z: Tensor, y: Tensor) -> Tensor:
    return -torch.expm1(Q * torch.log_softmax(z, 1).gather(1, y[:, None]).squeeze(1)) / Q


def ce_per_sample(z: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(z, y, reduction="none")


def gce(z: Tensor, y: Tensor) -> Tensor:
    return gce_loss(z, y, Q)


# ------------------------------------------------------------------------------------------------ part 1: fits
def logit_pool(task: NoisyTask, models: list[nn.Module]) -> tuple[Tensor, Tensor, int]:
    """The CE students' logits on the training data (labels as training sees them), then as many random logits
    (scale log-uniform in [0.3, 8], random labels); also returns how many are the students'."""
    x, y = task.train
    with torch.no_grad():
        real = [m.eval()(x) for m in models]
    g = torch.Generator().manual_seed(1)
    scale = torch.empty(len(y), 1).uniform_(math.log(0.3), math.log(8.0), generator=g).exp()
    z = torch.cat([*real, torch.randn(len(y), 10, generator=g) * scale])
    return z, torch.cat([y] * len(models) + [torch.randint(10, (len(y),), generator=g)]), len(real) * len(y)


def fit_to_gce(pool: tuple[Tensor, Tensor, int], variant: str, steps: int) -> tuple[list[Tensor], dict[str, Any]]:
    """Adam (lr 3e-3, batches of 2,000) on the raw parameters from the CE start, minimising the squared difference
    of the per-sample logit gradients to GCE's relative to CE's gradient norm (each sample counts by its relative
    error, so that the weight curve is what is fitted)."""
    z, y, n_real = pool
    target, ce_norm = per_sample_grads(gce_per_sample, z, y), per_sample_grads(ce_per_sample, z, y).pow(2).sum(1)
    ref = make_dln(variant)
    raw = [p.detach().clone().requires_grad_(True) for p in ref.layers]

    def error(r: list[Tensor], index: Tensor | slice, create: bool = False) -> Tensor:
        w = ref.mlp_weights(r)
        g = per_sample_grads(
            lambda a, b: DF.pairwise_mean_loss(w, a, b, features="softmax"), z[index], y[index], create
        )
        return ((g - target[index]).pow(2).sum(1) / (ce_norm[index] + 1e-8)).mean()

    start = float(error(raw, slice(None)))
    adam, gen = torch.optim.Adam(raw, lr=3e-3), torch.Generator().manual_seed(2)
    for _ in range(steps):
        loss = error(raw, torch.randint(len(y), (2000,), generator=gen), create=True)
        adam.zero_grad()
        loss.backward()
        adam.step()
    raw = [r.detach() for r in raw]
    fitted = make_dln(variant, raw)
    report = {"rel_grad_error_ce": start, "rel_grad_error_fit": float(error(raw, slice(None)))}
    with torch.no_grad():
        report["range"] = float(DF.loss_range(fitted.mlp_weights()))
    report.update(weight_curves(fitted, z[:n_real], y[:n_real]))
    if variant == "free":  # what of the fit the sign constraint cannot follow
        start_w, fit_w = flat(ref.layers), flat(raw)
        sign = flat(DF.monotone_weights(raw)).sign() * fit_w.sign()  # -1 where the fit has the forbidden sign
        wrong = (sign < 0) & (fit_w.abs() > 1e-5)
        report["wrong_sign_entries"] = int(wrong.sum())
        report["wrong_sign_share_of_distance"] = float(
            (fit_w - start_w)[wrong].pow(2).sum() / (fit_w - start_w).pow(2).sum()
        )
    return raw, report


def weight_curves(loss_fn: nn.Module, z: Tensor, y: Tensor) -> dict[str, Any]:
    """The per-sample weight |dL/dz_y| / CE's against p_y: on the students' logits (binned) and on loss_profile's
    grid, each beside GCE's (exactly p_y ** q)."""
    g = per_sample_grads(lambda a, b: loss_fn(a, b) * len(b), z, y)  # mean reduction undone
    ratio = (g.gather(1, y[:, None]) / per_sample_grads(ce_per_sample, z, y).gather(1, y[:, None])).squeeze(1)
    p = torch.softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    edges = [0.0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0001]
    bins = []  # [p_lo, p_hi, samples, loss's weight, GCE's weight]
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (p >= lo) & (p < hi)
        if inside.any():
            bins.append([lo, hi, int(inside.sum()), float(ratio[inside].mean()), float(p[inside].pow(Q).mean())])
    grid, _, weight = loss_profile(loss_fn, 10, 25)
    return {
        "student_bins": bins,
        "student_max_abs_diff": max(abs(b[3] - b[4]) for b in bins),
        "profile_max_abs_diff": float((weight.mean(0) - grid.pow(Q)).abs().max()),
    }


def hypergradients(task: NoisyTask, checkpoints: dict[int, Any], fits: dict[str, list[Tensor]], draws: int) -> Any:
    """Minus the hypergradient of each variant at the CE start, against the direction to its fit."""
    phi0 = flat(make_dln("pinned").layers)  # every variant's CE start: the same numbers
    delta = {v: flat(fits[v]) - phi0 for v in VARIANTS}
    randoms = torch.randn(200, phi0.numel(), generator=torch.Generator().manual_seed(3))
    top = delta["free"].abs().argsort(descending=True)
    rows = []
    for step, (model_state, opt_state) in checkpoints.items():
        model, optimizer = student(model_state, opt_state)
        train, (tx, ty) = batches(task.train, BATCH, 0, 10 + step), task.trusted
        pick = torch.Generator().manual_seed(20 + step)
        grads: dict[str, list[Tensor]] = {v: [] for v in VARIANTS}
        for _ in range(draws):
            tb = [next(train) for _ in range(UNROLL)]
            index = torch.randperm(len(ty), generator=pick)[:VAL_BATCH]
            for v in VARIANTS:
                hg = dynaloss.hypergradient(model, make_dln(v), tb, (tx[index], ty[index]), optimizer=optimizer)
                grads[v].append(-flat(hg.values()))  # descent directions
        mean = {v: torch.stack(g).mean(0) for v, g in grads.items()}
        each = grads["pinned"]
        agreement = [cos(each[i], each[j]) for i in range(draws) for j in range(i + 1, draws)]
        null = torch.tensor([abs(cos(mean["pinned"], r)) for r in randoms])
        sq = mean["free"].pow(2)
        names = [
            (k, i, j)
            for k, m in enumerate(make_dln("pinned").layers)
            for i in range(m.shape[0])
            for j in range(m.shape[1])
        ]
        rows.append(
            {
                "checkpoint": step,
                **{f"cos_{v}": cos(mean[v], delta[v]) for v in VARIANTS},
                "cos_pinned_to_free_fit": cos(mean["pinned"], delta["free"]),
                "per_draw_cos_free": [cos(g, delta["free"]) for g in grads["free"]],
                "null_abs_cos_mean": float(null.mean()),
                "null_abs_cos_p95": float(null.quantile(0.95)),
                "draw_agreement_cos_pinned": sum(agreement) / max(len(agreement), 1),
                "cos_pinned_free_hypergradients": cos(mean["pinned"], mean["free"]),
                "free_norm_share_top10": float(sq[top[:10]].sum() / sq.sum()),
                "free_norm_share_top100": float(sq[top[:100]].sum() / sq.sum()),
                # (layer, row, column, value) of the largest entries of minus the library DLN's hypergradient
                "largest_entries": [
                    [*names[i], float(mean["pinned"][i])] for i in mean["pinned"].abs().argsort()[-6:].flip(0)
                ],
            }
        )
    fit_sq = delta["free"].pow(2)
    shares = {f"fit_norm_share_top{k}": float(fit_sq[top[:k]].sum() / fit_sq.sum()) for k in (10, 100)}
    return rows, shares


def horizon_errors(
    task: NoisyTask, checkpoints: dict[int, Any], losses: dict[str, Any], horizons: list[int], draws: int
) -> Any:
    """Validation CE on all 500 trusted samples after h student steps of each loss from each checkpoint, the same
    batches for every loss: what the teacher's objective says of each loss at that horizon (mean of the draws)."""
    out = []
    for step, (model_state, opt_state) in checkpoints.items():
        for h in horizons:
            errors: dict[str, list[float]] = {name: [] for name in losses}
            for d in range(draws):
                stream = [b for _, b in zip(range(h), batches(task.train, BATCH, 0, 1000 + 10 * step + d))]
                for name, loss_fn in losses.items():
                    model, optimizer = student(model_state, opt_state)
                    for x, y in stream:
                        loss = loss_fn(model(x), y)
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()
                    with torch.no_grad():
                        errors[name].append(float(F.cross_entropy(model(task.trusted[0]), task.trusted[1])))
            diff = torch.tensor(errors["free_fit"]) - torch.tensor(errors["ce"])  # paired, draw by draw
            mean = {name: sum(e) / draws for name, e in errors.items()}
            out.append({"checkpoint": step, "steps": h, **mean, "sd_free_fit_minus_ce": float(diff.std())})
    return out


# ------------------------------------------------------------------------------------------------ part 2: rounds
def round_updates(task: NoisyTask, checkpoint: Any, target: Tensor, rounds: int) -> dict[str, Any]:
    """A fresh "ce" preset teacher (LSTM) and its Adam twin (anchor 0, as in the grid's run) take ``rounds``
    lookahead rounds at one checkpoint (the student stays as it is); each round's change against ``target - start``."""
    delta = target - flat(make_dln("pinned").layers)
    out: dict[str, Any] = {
        "distance_norm": float(delta.norm()),
        "distance_max_coordinate": float(delta.abs().max()),
        "distance_median_coordinate": float(delta.abs().median()),
        "cos_fit_to_ones": cos(delta, torch.ones_like(delta)),
    }
    for kind, extra in (("lstm", {}), ("adam", {"teacher": "adam", "anchor_strength": 0.0})):
        model, optimizer = student(*checkpoint)
        with seeded(0):  # the LSTM's initial weights
            teacher = dynaloss.pairwise_teacher(10, "ce", optimizer=optimizer, **extra)
        train_iter, val_iter = batches(task.train, BATCH, 0, 2), batches(task.trusted, VAL_BATCH, 0, 3)
        updates: list[Tensor] = []
        for _ in range(rounds):
            before = flat(teacher.loss_fn.layers)
            teacher.step(model, train_iter, val_iter)
            updates.append(flat(teacher.loss_fn.layers) - before)
        u = torch.stack(updates)
        progress = float((u @ delta).mean() / delta.norm())  # per round, along the straight line
        gamma, anchor = teacher.dln_lr, teacher.anchor_strength
        ceiling = gamma / anchor if anchor > 0 else math.inf
        out[kind] = {
            "dln_lr": gamma,
            "anchor": anchor,
            "update_norm": float(u.norm(dim=1).mean()),
            "update_median_coordinate": float(u.abs().median()),
            "update_max_coordinate": float(u.abs().max()),
            "cos_update_to_fit": sum(cos(r, delta) for r in u) / rounds,
            "cos_update_to_ones": sum(cos(r, torch.ones_like(r)) for r in u) / rounds,  # a uniform shift
            "first_update": u[0],
            "progress_per_round": progress,
            "rounds_at_measured_progress": float(delta.norm()) / progress if progress > 0 else math.inf,
            "rounds_at_full_rate_linf": float(delta.abs().max()) / gamma,
            "anchor_ceiling": ceiling,
            "share_of_distance_beyond_ceiling": float(
                (delta.abs() - ceiling).clamp_min(0).pow(2).sum() / delta.pow(2).sum()
            ),
        }
    # both teachers' first round sees the same DLN, student and batches: Adam's first step is -dln_lr * sign(g)
    out["cos_lstm_first_update_to_minus_sign_hypergradient"] = cos(
        out["lstm"]["first_update"], out["adam"].pop("first_update")
    )
    del out["lstm"]["first_update"]
    return out


# ------------------------------------------------------------------------------------------------ part 3: arms
def run_arm(task: NoisyTask, name: str, loss_fn: Any, steps: int, teach: bool = False) -> tuple[nn.Module, Any, Any]:
    """The README's loop on noisy ∪ trusted; with ``teach``, ``pairwise_teacher(10, "ce", optimizer=optimizer)``
    takes a round every 20 iterations, validating on batches of 100 from the trusted set."""
    model, optimizer = student()
    with seeded(0):  # the LSTM's initial weights
        teacher = dynaloss.pairwise_teacher(10, "ce", optimizer=optimizer) if teach else None
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    train_iter, val_iter = batches(task.train, BATCH, 0, 2), batches(task.trusted, VAL_BATCH, 0, 3)
    result = user_loop(
        model,
        teacher.loss_fn if teacher else loss_fn,
        batches(task.train, BATCH, 0, 1),
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=steps,
        evaluate=lambda m: evaluate_accuracy(m, *task.test),
        eval_every=steps,
        name=name,
        progress=False,
        teach=(lambda: teacher.step(model, train_iter, val_iter)) if teacher else None,
        teach_every=TEACH_EVERY,
    )
    return model, result, teacher


def ce_checkpoints(task: NoisyTask, steps: int, marks: Sequence[int]) -> tuple[dict[int, Any], list[nn.Module]]:
    """The CE arm's first steps again (same student, stream and schedule), kept at ``marks``."""
    model, optimizer = student()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    stream, checkpoints, models = batches(task.train, BATCH, 0, 1), {}, []
    for it in range(max(marks) + 1):
        if it in marks:
            checkpoints[it] = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
            models.append(copy.deepcopy(model))
        x, y = next(stream)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return checkpoints, models


def code_state() -> dict[str, Any]:
    """The commit, and a hash of the uncommitted changes under dynaloss/ (others edit it while this runs)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT.parent, capture_output=True, text=True).stdout

    diff = hashlib.sha1(git("diff", "HEAD", "--", "dynaloss").encode()).hexdigest()[:12]
    return {"commit": git("rev-parse", "HEAD").strip()[:12], "dynaloss_diff_sha1": diff}


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cfg = FAST if args.fast else FULL
    out = args.out or ROOT / "results" / "diagnose_teaching" / ("fast" if args.fast else "")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    clock, seconds = time.perf_counter(), {}

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        print(f"{name}: {seconds[name]} s", flush=True)

    steps = cfg["steps"]
    marks = (0, steps // 12, steps // 3)  # 0, 500 and 2,000 of 6,000
    task = make_noisy_task(load_dataset("mnist1d"), trusted_per_class=50, noise_rate=0.4, seed=0)
    r: dict[str, Any] = {"machine": machine_info("cpu"), "code": code_state(), "config": cfg, "checkpoints": marks}
    ce_model, ce_result, _ = run_arm(task, "ce", F.cross_entropy, steps)
    checkpoints, models = ce_checkpoints(task, steps, marks)
    lap("ce arm, checkpoints")

    pool = logit_pool(task, [*models, ce_model])
    fits, r["fit"] = {}, {}
    for v in VARIANTS:
        fits[v], r["fit"][v] = fit_to_gce(pool, v, cfg["fit_steps"][v])
        lap(f"fit {v}")
    r["fit"]["ce_start"] = weight_curves(make_dln("pinned"), pool[0][: pool[2]], pool[1][: pool[2]])

    r["hypergradient"], r["fit_direction_shares"] = hypergradients(task, checkpoints, fits, cfg["draws"])
    lap("hypergradients")
    fitted = {f"{v}_fit": make_dln(v, fits[v]) for v in ("free", "monotone")}
    start_raw = list(make_dln("free").layers)
    line = {  # along the straight line from the CE start to the free fit
        f"free_t{t}": make_dln("free", [a + t * (b - a) for a, b in zip(start_raw, fits["free"])]) for t in (0.1, 0.5)
    }
    horizon_losses = {"ce": F.cross_entropy, "gce": gce, **fitted, **line}
    r["horizon"] = horizon_errors(task, checkpoints, horizon_losses, [UNROLL, cfg["h"]], cfg["draws"])
    lap("horizons")
    r["rounds"] = round_updates(task, checkpoints[marks[1]], flat(fits["free"]), cfg["rounds"])
    lap("rounds")

    arms = {"ce": ce_result}
    for name, loss_fn in {"gce": gce, "dln_fixed_ce": make_dln("pinned"), **fitted}.items():
        arms[name] = run_arm(task, name, loss_fn, steps)[1]
    lap("fixed arms")
    _, arms["dln_taught"], teacher = run_arm(task, "dln_taught", None, steps, teach=True)
    lap("taught arm")
    r["arms"] = {name: {"test_acc": 100 * a.final_accuracy, "train_s": round(a.seconds, 1)} for name, a in arms.items()}
    taught, start = teacher.loss_fn, make_dln("pinned")
    rounds = arms["dln_taught"].rounds
    to_fit = flat(fits["free"]) - flat(start.layers)
    moved_matrices = flat(taught.mlp_weights()) - flat(start.mlp_weights())
    r["taught"] = {
        "rounds": len(rounds),
        "rolled_back": sum(bool(x["rolled_back"]) for x in rounds),
        "skipped": sum(bool(x["skipped"]) for x in rounds),
        "raw_displacement_norm": float((flat(taught.layers) - flat(start.layers)).norm()),
        "raw_displacement_max_coordinate": float((flat(taught.layers) - flat(start.layers)).abs().max()),
        "cos_raw_displacement_to_free_fit": cos(flat(taught.layers) - flat(start.layers), to_fit),
        "cos_matrix_displacement_to_free_fit": cos(moved_matrices, to_fit),
        **weight_curves(taught, pool[0][: pool[2]], pool[1][: pool[2]]),
    }
    plot_sample_weight(
        {
            "CE": F.cross_entropy,
            f"GCE (q={Q})": gce,
            "DLN before (init='ce')": start,
            "DLN after teaching": taught,
            "same MLP, unconstrained, fitted to GCE": fitted["free_fit"],
            "same MLP, monotone (pin off), fitted to GCE": fitted["monotone_fit"],
        },
        out / "sample_weight.png",
        num_classes=10,
        title="noisy MNIST-1D (40 % symmetric): per-sample weight",
    )
    r["seconds"] = seconds
    (out / "results.json").write_text(json.dumps(r, indent=1))
    (out / "results.md").write_text(markdown(r, args.fast))
    print((out / "results.md").read_text())
    return 0


def markdown(r: dict[str, Any], fast: bool) -> str:
    f = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/diagnose_teaching.py" + (" --fast" if fast else "")
    m = r["machine"]
    lines = [
        "# Why the teacher does not find the better loss: pairwise DLN, noisy MNIST-1D (one seed)",
        "",
        f"`{cmd}`: {sum(r['seconds'].values()):.0f} s on {m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} "
        f"torch thread, torch {m['torch']}); commit {r['code']['commit']}, dynaloss/ diff "
        f"{r['code']['dynaloss_diff_sha1']}.",
        f"Seconds per part: {r['seconds']}.",
        "",
        "## 1a. Fits to GCE (q = 0.7) from the CE start",
        "",
        "Relative per-sample logit-gradient error; weight = |dL/dz_y| / CE's, GCE's is p_y^0.7.",
        "",
        "| DLN | error at CE | after fit | range | max weight gap: student logits | profile grid |",
        "|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        x = r["fit"][v]
        lines.append(
            f"| {v} | {f(x['rel_grad_error_ce'])} | {f(x['rel_grad_error_fit'])} | {f(x['range'])} "
            f"| {f(x['student_max_abs_diff'])} | {f(x['profile_max_abs_diff'])} |"
        )
    free = r["fit"]["free"]
    lines += [
        "",
        f"The free fit has {free['wrong_sign_entries']} entries of the sign the monotone constraint forbids, "
        f"{f(free['wrong_sign_share_of_distance'])} of its squared distance from the start.",
        "",
        "Weight on the CE students' logits by p_y bin: " + ", ".join(VARIANTS) + ", GCE:",
        "",
    ]
    for i, b in enumerate(r["fit"]["free"]["student_bins"]):
        w = ", ".join(f"{r['fit'][v]['student_bins'][i][3]:.3f}" for v in VARIANTS)
        lines.append(f"- [{b[0]:.2f}, {b[1]:.2f}), {b[2]} samples: {w}; GCE {b[4]:.3f}")
    lines += [
        "",
        "## 1b. Minus the hypergradient (mean of the draws) against the direction to each variant's fit",
        "",
        "| ckpt | cos pinned | cos monotone | cos free (= matrices) | cos pinned to free fit "
        "| null abs cos, mean (p95) | draw agreement (pinned) | free: share in top-10 / top-100 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h in r["hypergradient"]:
        lines.append(
            f"| {h['checkpoint']} | {f(h['cos_pinned'])} | {f(h['cos_monotone'])} | {f(h['cos_free'])} "
            f"| {f(h['cos_pinned_to_free_fit'])} | {f(h['null_abs_cos_mean'])} ({f(h['null_abs_cos_p95'])}) "
            f"| {f(h['draw_agreement_cos_pinned'])} | {f(h['free_norm_share_top10'])} / "
            f"{f(h['free_norm_share_top100'])} |"
        )
    lines += [
        "",
        "Largest entries of minus the library DLN's hypergradient (layer, row, column: value; at the CE start row 0 "
        "is the CE unit, rows 1-19 true-class hinges, rows 20-39 wrong-class hinges relu(q_j - v), v = 0 ... 0.9):",
        "",
        *(
            f"- ckpt {h['checkpoint']}: "
            + "; ".join(f"({a}, {b}, {c}): {v:+.3f}" for a, b, c, v in h["largest_entries"])
            for h in r["hypergradient"]
        ),
    ]
    s = r["fit_direction_shares"]
    lines += [
        "",
        f"The free fit's own direction has {f(s['fit_norm_share_top10'])} / {f(s['fit_norm_share_top100'])} of its "
        "squared norm in those coordinates (uniform: 0.002 / 0.020).",
        "",
        "## 1c. Validation CE (all 500 trusted) after h steps of each loss from each checkpoint",
        "",
        "Mean of the draws (the same batches for every loss); free_t*: on the straight line from CE to the free fit; "
        "last column: the SD over draws of the paired difference free_fit - ce.",
        "",
        "| ckpt | h | " + " | ".join(k for k in r["horizon"][0] if k not in ("checkpoint", "steps")) + " |",
        "|---|---|" + "---|" * (len(r["horizon"][0]) - 2),
    ]
    for h in r["horizon"]:
        values = " | ".join(f(v) for k, v in h.items() if k not in ("checkpoint", "steps"))
        lines.append(f"| {h['checkpoint']} | {h['steps']} | {values} |")
    ro = r["rounds"]
    lines += [
        "",
        f"## 2. One round against the distance to the free fit (norm {f(ro['distance_norm'])}, max coordinate "
        f"{f(ro['distance_max_coordinate'])}, median {ro['distance_median_coordinate']:.1e})",
        "",
        "| teacher | dln_lr | update norm | median / max coord | cos(update, fit) | progress / round "
        "| rounds at that progress | rounds at full rate (L∞) | anchor ceiling | distance² beyond it |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("lstm", "adam"):
        k = ro[kind]
        lines.append(
            f"| {kind} | {k['dln_lr']:g} | {k['update_norm']:.4f} | {k['update_median_coordinate']:.1e} / "
            f"{k['update_max_coordinate']:.1e} | {f(k['cos_update_to_fit'])} | {k['progress_per_round']:.2e} "
            f"| {k['rounds_at_measured_progress']:.3g} | {k['rounds_at_full_rate_linf']:.3g} "
            f"| {f(k['anchor_ceiling'])} | {f(k['share_of_distance_beyond_ceiling'])} |"
        )
    cos_lstm = f(ro["cos_lstm_first_update_to_minus_sign_hypergradient"])
    lines += [
        "",
        f"cos(the LSTM's first update, -sign(hypergradient), i.e. Adam's first) = {cos_lstm}; cos(update, all-ones): "
        f"LSTM {f(ro['lstm']['cos_update_to_ones'])}, Adam {f(ro['adam']['cos_update_to_ones'])}; cos(fit direction, "
        f"all-ones) {f(ro['cos_fit_to_ones'])}.",
    ]
    t = r["taught"]
    lines += [
        "",
        "## 3. Arms (test accuracy %) and the taught DLN",
        "",
        "| arm | test acc % | train s |",
        "|---|---|---|",
        *(f"| {n} | {a['test_acc']:.1f} | {a['train_s']} |" for n, a in r["arms"].items()),
        "",
        f"Taught DLN: {t['rounds']} rounds, {t['rolled_back']} rollbacks, {t['skipped']} skipped; raw parameters "
        f"moved {t['raw_displacement_norm']:.4f} (max coordinate {t['raw_displacement_max_coordinate']:.4f}); cos "
        f"with the direction to the free fit: raw {f(t['cos_raw_displacement_to_free_fit'])}, constrained matrices "
        f"{f(t['cos_matrix_displacement_to_free_fit'])}. Its weight on the students' logits by p_y bin (GCE's): "
        + "; ".join(f"[{b[0]:.2f}, {b[1]:.2f}) {b[3]:.3f} ({b[4]:.3f})" for b in t["student_bins"]),
        "",
        "Per-sample weight on loss_profile's grid: `sample_weight.png`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
