"""benchmarks/robust.py: its corruptions are what they claim, every arm trains, the store resumes, the bar adds up."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def robust() -> Iterator[ModuleType]:
    # imported as a module (not run as __main__) so that worker processes can find run_job by name
    spec = importlib.util.spec_from_file_location("robust", BENCHMARKS / "robust.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["robust"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("robust", None)


def labels(per_class: int = 300, classes: int = 10) -> torch.Tensor:
    order = torch.randperm(per_class * classes, generator=torch.Generator().manual_seed(0))
    return torch.arange(classes).repeat_interleave(per_class)[order]


# ---------------------------------------------------------------------------------------------- corruptions
@pytest.mark.parametrize("corruption", ["sym20", "sym40", "sym60", "pair40"])
def test_noise_flips_exactly_its_share_to_other_classes_and_never_the_trusted_set(
    robust: ModuleType, corruption: str
) -> None:
    y = labels()
    part = robust.partition(y, corruption, 0.1, "synthetic", 0)
    rate = robust.CORRUPTIONS[corruption].level
    flipped = part.labels != y[part.kept]
    assert float(flipped.float().mean()) == pytest.approx(rate, abs=0.005)
    assert set(part.trusted.flatten().tolist()).isdisjoint(part.kept.tolist())  # trusted samples keep their labels
    if corruption == "pair40":  # each class c: its share, to c + 1
        truth = y[part.kept]
        assert torch.equal(part.labels[flipped], (truth[flipped] + 1) % 10)
        for c in range(10):
            assert float(flipped[truth == c].float().mean()) == pytest.approx(rate, abs=0.01)
    else:  # uniform over the other classes: every wrong class gets some
        moved_to = torch.bincount((part.labels[flipped] - y[part.kept][flipped]) % 10, minlength=10)
        assert moved_to[0] == 0 and bool((moved_to[1:] > 0).all())


@pytest.mark.parametrize("ratio", [10, 100])
def test_long_tail_keeps_the_profile_and_the_trusted_set_stays_balanced(robust: ModuleType, ratio: int) -> None:
    y = labels()
    part = robust.partition(y, f"lt{ratio}", 0.1, "synthetic", 0)
    counts = torch.bincount(y[part.kept], minlength=10).tolist()
    n_max = 300 - 30  # each class gives 30 to the trusted set first
    assert counts == [max(1, round(n_max * ratio ** (-c / 9))) for c in range(10)]
    assert torch.equal(part.labels, y[part.kept])  # imbalance, no noise
    assert part.trusted.shape == (10, 30) and all(bool((y[row] == c).all()) for c, row in enumerate(part.trusted))


def test_partition_is_deterministic_per_seed_and_shares_the_trusted_set_across_corruptions(robust: ModuleType) -> None:
    y = labels()
    first, again = (robust.partition(y, "sym40", 0.1, "synthetic", 3) for _ in range(2))
    assert torch.equal(first.kept, again.kept) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, robust.partition(y, "sym40", 0.1, "synthetic", 4).labels)
    assert torch.equal(first.trusted, robust.partition(y, "pair40", 0.1, "synthetic", 3).trusted)


def test_tune_phase_holds_out_a_balanced_half_of_the_trusted_set(robust: ModuleType) -> None:
    test, tune = (robust.arm_data("digits", "mlp", "sym40", 0.1, 0, phase) for phase in ("test", "tune"))
    assert test.stats["trusted"] == 150 and tune.stats["trusted"] == 70  # 15 a class, 7 of them trained on
    assert len(test.score[1]) == 297  # the test set
    assert torch.bincount(tune.score[1]).tolist() == [8] * 10  # scored on the other 8 a class
    trained, held = ({tuple(row.tolist()) for row in part.flatten(1)} for part in (tune.trusted[0], tune.score[0]))
    assert trained.isdisjoint(held) and trained | held == {tuple(row.tolist()) for row in test.trusted[0].flatten(1)}


# ---------------------------------------------------------------------------------------------------- arms
def tiny_job(robust: ModuleType, arm: str, **changes: Any) -> Any:
    corruption = "lt10" if arm in robust.IMBALANCE_LOSSES else "sym40"
    hyper = tuple(sorted(robust.LOSS_GRIDS.get(arm, ({},))[0].items()))
    teach_every = 3 if arm in ("dln-taught", "dln-taught-valonly") else None
    fields = dict(phase="test", student="mlp", data="digits", recipe="sgdm", corruption=corruption, trusted=0.1)
    fields.update(arm=arm, lr=0.03, hyper=hyper, seed=0, steps=6, preset=None, teach_every=teach_every, eval_every=3)
    return robust.Job(**{**fields, **changes})


def test_every_arm_trains_a_few_steps_to_a_finite_accuracy(robust: ModuleType) -> None:
    for arm in robust.ARMS:
        result = robust.run_job(tiny_job(robust, arm))
        assert math.isfinite(result["final"]) and 0.0 <= result["final"] <= 1.0, arm
        assert result["student_steps"] == 6 and result["curve_steps"] == [0, 3, 6], arm
        if arm in ("dln-taught", "dln-taught-valonly"):  # one round, after step 3 (none after the last step)
            assert result["rounds"] == 1 and len(result["round_log"]) == 1 and "dln_state" in result


def test_count_labels_tells_the_dln_both_label_sets_and_the_readme_loop_does_not(robust: ModuleType) -> None:
    """--count-labels: add_labels(training labels, trusted labels) before training; a DLN held fixed keeps them.
    Without it (the README's loop) nothing is counted before a round, and the job's key is the one stores hold."""
    job = tiny_job(robust, "dln-fixed", count_labels=True)
    data = robust.arm_data(job.data, job.student, job.corruption, job.trusted, job.seed, job.phase)
    state = robust.run_job(job)["dln_state"]
    assert state["train_label_counts"] == torch.bincount(data.mixed[1], minlength=data.num_classes).tolist()
    assert state["target_label_counts"] == torch.bincount(data.trusted[1], minlength=data.num_classes).tolist()
    plain = tiny_job(robust, "dln-fixed")
    assert sum(robust.run_job(plain)["dln_state"]["train_label_counts"]) == 0
    assert "count_labels" not in json.loads(plain.key()) and json.loads(job.key())["count_labels"] is True


def test_mwn_meta_step_moves_only_its_net_and_the_real_loss_uses_the_updated_weights(robust: ModuleType) -> None:
    data = robust.arm_data("digits", "resmlp", "sym40", 0.1, 0, "test")
    model = robust.build_student("resmlp", robust.cell_data("digits", "resmlp", 0.0, 0), 0)  # BatchNorm inside
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    (x, y), meta = (data.noisy[0][:25], data.noisy[1][:25]), (data.trusted[0][:100], data.trusted[1][:100])
    reference = copy.deepcopy(model)
    reference(x)  # the BatchNorm statistics one forward of the training batch leaves
    mwn = robust.MetaWeightNet(model, optimizer, iter([meta]))
    net_before, params_before = ([p.clone() for p in m.parameters()] for m in (mwn.net, model))
    loss = mwn(model(x), y)
    assert all(not torch.equal(a, b) for a, b in zip(net_before, mwn.net.parameters()))  # one Adam step
    assert all(torch.equal(a, b) for a, b in zip(params_before, model.parameters()))  # the virtual step is virtual
    for mine, theirs in zip(model.buffers(), reference.buffers()):
        assert torch.equal(mine, theirs)  # the meta forward updated copies
    losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none").detach()
    weights = mwn.weights(losses).detach()
    assert float(loss.detach()) == pytest.approx(float((weights * losses).sum() / weights.sum()), rel=1e-5)
    loss.backward()  # the real step backpropagates through the same forward
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_lrs_replaces_the_recipes_rate_grid_for_every_arm_and_needs_one_recipe(robust: ModuleType) -> None:
    args = robust.parse_args(["--recipes", "sgdm", "--lrs", "0.1", "0.05", "0.2"])
    assert robust.rate_grid(args, "sgdm") == (0.05, 0.1, 0.2)
    assert {lr for lr, _ in robust.settings(args, "sgdm", "gce")} == {0.05, 0.1, 0.2}
    assert len(robust.settings(args, "sgdm", "gce")) == 3 * len(robust.LOSS_GRIDS["gce"])
    assert robust.rate_grid(robust.parse_args(["--recipes", "sgdm"]), "sgdm") == robust.RECIPES["sgdm"]["lrs"]
    for argv in (["--recipes", "sgdm", "adamw", "--lrs", "0.1"], ["--recipes", "sgdm", "--lrs", "0"]):
        with pytest.raises(SystemExit):
            robust.parse_args(argv)


def test_tune_picks_the_best_mean_over_the_tuning_seeds(robust: ModuleType) -> None:
    args = robust.parse_args(["--students", "cnn", "--data", "mnist1d", "--recipes", "sgdm", "--corruptions", "clean"])
    args.arms = ["ce"]
    assert args.tune_seeds == [1000, 1001]
    jobs = robust.tune_jobs(args)
    assert sorted({job.seed for job in jobs}) == [1000, 1001] and len(jobs) == 2 * len(robust.RECIPES["sgdm"]["lrs"])
    low, middle, high = robust.RECIPES["sgdm"]["lrs"]
    # the first seed alone would pick the low rate; the mean over both picks the middle one
    finals = {(low, 1000): 0.96, (low, 1001): 0.90, (middle, 1000): 0.955, (middle, 1001): 0.95}
    finals |= {(high, 1000): 0.5, (high, 1001): 0.5}

    class Store:
        def get(self, job: Any) -> dict[str, Any]:
            return {"result": {"final": finals[(job.lr, job.seed)]}}

    (pick,) = robust.pick_settings(args, Store()).values()
    assert pick["lr"] == middle and pick["score"] == pytest.approx(0.9525)
    assert [row["per_seed"] for row in pick["scores"]][0] == [0.96, 0.90]


def test_a_best_rate_at_the_grids_edge_is_tried_past_it_until_it_is_not(
    robust: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert robust.beyond_edge([0.05, 0.05, 0.1, 0.2, 0.2], 0.2) == 0.4  # one rate per loss setting
    assert robust.beyond_edge([0.2, 0.1, 0.4, 0.3], 0.4) == 0.533333  # unsorted; the ratio of the top two
    assert robust.beyond_edge([0.01, 0.03, 0.1], 0.01) == 0.00333333
    assert robust.beyond_edge([0.01, 0.03, 0.1], 0.03) is None and robust.beyond_edge([0.1], 0.1) is None
    argv = ["--students", "cnn", "--data", "mnist1d", "--recipes", "sgdm", "--corruptions", "sym40"]
    args = robust.parse_args([*argv, "--lrs", "0.05", "0.1", "0.2", "--tune-seeds", "1000", "--arms", "ce", "gce"])
    assert args.extend_edges == 2
    # gce improves up to 0.4 and falls at 0.8; ce peaks inside the grid
    score = {"gce": {0.05: 0.5, 0.1: 0.6, 0.2: 0.7, 0.4: 0.8, 0.8: 0.1}, "ce": {0.05: 0.6, 0.1: 0.7, 0.2: 0.1}}
    ran: list[Any] = []

    class Store(dict):
        def get(self, job: Any) -> dict[str, Any]:
            return {"result": {"final": score[job.arm][round(job.lr, 6)] - 0.01 * len(dict(job.hyper))}}

    monkeypatch.setattr(robust, "run_phase", lambda jobs, *args, **kwargs: ran.append(jobs))
    picks, extra = robust.tune(args, Store(), None)
    gce, ce = (picks[(*cell, arm)] for cell in robust.cells(args) for arm in ("gce", "ce"))
    assert gce["lr"] == 0.4 and not gce["edge"] and ce["lr"] == 0.1
    (rates,) = extra.values()
    assert rates == (0.4, 0.8)
    assert len(ran) == 3  # the grid, then one extension a pass: 0.4, then 0.8
    assert {job.lr for job in ran[2] if job.arm == "gce"} == {0.05, 0.1, 0.2, 0.4, 0.8}
    assert {job.lr for job in ran[2] if job.arm == "ce"} == {0.05, 0.1, 0.2}
    # with no extension allowed the pick stays at the edge, and says so
    args.extend_edges = 0
    picks, extra = robust.tune(args, Store(), None)
    assert not extra and picks[(*robust.cells(args)[0], "gce")]["edge"]


# -------------------------------------------------------------------------------------------------- store
@pytest.mark.subprocess
def test_grid_writes_its_outputs_and_a_rerun_runs_nothing(
    robust: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "grid"
    argv = [
        *("--students", "mlp", "--data", "digits", "--recipes", "sgdm", "--corruptions", "sym40"),
        *("--arms", "ce", "gce", "dln-taught", "ce-time", "--seeds", "0", "--steps", "6", "--eval-every", "3"),
        *("--teach-every", "3", "--tune-seeds", "1000", "--out", str(out)),
    ]
    assert robust.main([*argv, "--jobs", "2"]) == 0
    lines = (out / "runs.jsonl").read_text().splitlines()
    report = json.loads((out / "robust.json").read_text())
    assert {"machine", "config", "picks", "cells", "bar", "runs", "tune_runs"} <= set(report)
    # tune: rates x settings (3 + 6 + 3), and any rates past the edges; seeds: 3 arms; ce-time: 1
    assert len(report["tune_runs"]) >= 3 + 6 + 3 and len(lines) == len(report["tune_runs"]) + 3 + 1
    (cell,) = report["cells"]
    assert [row["arm"] for row in cell["arms"]] == ["ce", "gce", "dln-taught", "ce-time"]
    assert cell["best_fixed"] in ("ce", "gce") and cell["best_fixed_picked_by"] == "tune"
    assert "| the issue's bar | met |" in (out / "robust.md").read_text()

    def must_not_run(job: Any) -> dict[str, Any]:
        raise AssertionError(f"re-ran {job}")

    monkeypatch.setattr(robust, "run_job", must_not_run)
    assert robust.main([*argv, "--jobs", "1"]) == 0  # every job is found in the store
    assert (out / "runs.jsonl").read_text().splitlines() == lines


# ------------------------------------------------------------------------------------------------ summary
def fake_run(cell: tuple[str, ...], arm: str, seed: int, final: float, cpu: float = 1.0) -> dict[str, Any]:
    student, data, recipe, corruption = cell
    job = dict(student=student, data=data, recipe=recipe, corruption=corruption, trusted=0.1, arm=arm, seed=seed)
    job.update(lr=0.03, hyper=[])
    result = dict(final=final, student_steps=100, seconds=cpu, train_cpu_seconds=cpu)
    result.update(rounds=0, skipped_rounds=0, rolled_back_rounds=0)
    return {"job": job, "result": result}


def test_summary_computes_the_bar_numbers(robust: ModuleType) -> None:
    noisy, clean = ("cnn", "mnist1d", "sgdm", "sym40"), ("cnn", "mnist1d", "sgdm", "clean")
    finals = {  # per arm, seeds 0 and 1
        noisy: {"ce": (0.70, 0.72), "gce": (0.80, 0.84), "mwn": (0.78, 0.80), "dln-taught": (0.84, 0.69)},
        clean: {"ce": (0.90, 0.92), "gce": (0.91, 0.91), "dln-taught": (0.905, 0.915)},
    }
    runs = [
        fake_run(cell, arm, seed, final, cpu=4.0 if arm == "dln-taught" else 2.0)
        for cell, arms in finals.items()
        for arm, values in arms.items()
        for seed, final in enumerate(values)
    ]
    # the trusted hold-out picks ce in the noisy cell although gce tests better: best fixed follows the pick
    picks = {(*noisy, 0.1, "ce"): {"score": 0.9}, (*noisy, 0.1, "gce"): {"score": 0.8}}
    picks |= {(*clean, 0.1, "ce"): {"score": 0.9}, (*clean, 0.1, "gce"): {"score": 0.95}}
    noisy_summary, clean_summary = robust.summarise(runs, picks)
    assert noisy_summary["best_fixed"] == "ce" and clean_summary["best_fixed"] == "gce"
    bar = noisy_summary["bar"]
    assert bar["vs_best_fixed"] == pytest.approx(0.765 - 0.71) and bar["vs_ce"] == pytest.approx(0.055)
    assert bar["vs_mwn"] == pytest.approx(0.765 - 0.79)
    assert bar["worst_seed_vs_ce"] == pytest.approx(0.69 - 0.72) and bar["cost_vs_ce"] == pytest.approx(2.0)
    assert clean_summary["bar"]["vs_ce"] == pytest.approx(0.91 - 0.91)

    overall = robust.bar_summary([noisy_summary, clean_summary])
    assert overall["corrupted_cells"] == 1 and overall["clean_cells"] == 1
    assert overall["corrupted_mean_vs_ce"] == pytest.approx(0.055)
    assert overall["worst_seed_vs_ce_twin"] == pytest.approx(-0.03)
    checks = overall["checks"]
    assert checks["every corrupted cell >= best fixed - 0.5"] and checks["corrupted mean >= ce + 5"]
    assert not checks["corrupted mean >= mwn"] and not checks["no seed more than 2 below its ce twin"]
    assert checks["every clean cell >= ce - 0.3"] and checks["cost <= 3x ce in every cell (the aim)"]

    # without a tune phase the best TEST mean stands in, and the report says so
    (untuned,) = robust.summarise([r for r in runs if r["job"]["corruption"] == "sym40"], {})
    assert untuned["best_fixed"] == "gce" and untuned["best_fixed_picked_by"] == "oracle"
    assert "(oracle)" in robust.markdown([untuned], robust.bar_summary([untuned]))
