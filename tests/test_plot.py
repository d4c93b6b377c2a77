"""Figure 3 (the DLN's loss surface), a loss's value and per-sample weight against p_y, and the curve plot: the
numbers drawn are right and the PNG files real."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dynaloss
from dynaloss import functional as DF
from dynaloss.harness.noisy import gce_loss
from dynaloss.harness.plot import (
    dln_weights,
    loss_profile,
    loss_surface,
    plot_curves,
    plot_loss_profile,
    plot_loss_surface,
    plot_sample_weight,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dln() -> dynaloss.PairwiseDLN:
    torch.manual_seed(0)
    return dynaloss.PairwiseDLN(10, init="paper", hidden=8, depth=2)


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_surface_values_are_the_pairwise_row_loss_on_the_grid(dln: dynaloss.PairwiseDLN) -> None:
    true_prob, wrong_prob, value = loss_surface(dln, resolution=5)
    assert value.shape == (5, 5)
    assert float(true_prob[0, 4]) == 1.0 and float(wrong_prob[4, 0]) == 1.0
    expected = DF.pairwise_row_loss(dln.mlp_weights(), torch.tensor(0.75), torch.tensor(0.25))
    assert torch.allclose(value[1, 3], expected.detach())


def test_weights_come_from_a_module_its_state_dict_or_a_teacher_state(dln: dynaloss.PairwiseDLN) -> None:
    teacher = dynaloss.Teacher(dln, teacher="sgd")
    used = dln.mlp_weights()  # the monotone DLN computes with sign-constrained copies of its parameters
    assert not torch.equal(used[1], dln.layers[1])
    for source in (dln, dln.state_dict(), teacher.state_dict(), used):
        assert all(torch.equal(a, b) for a, b in zip(dln_weights(source), used, strict=True))
    free = dynaloss.PairwiseDLN(3, init="paper", monotone=False)
    for source in (free, free.state_dict()):
        assert all(torch.equal(a, b) for a, b in zip(dln_weights(source), free.layers, strict=True))
    with pytest.raises(ValueError, match="layers"):
        dln_weights({"bias": torch.zeros(1)})
    with pytest.raises(TypeError, match="PairwiseDLN"):
        dln_weights(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind", ["surface", "heatmap"])
def test_plot_loss_surface_writes_a_png_with_one_panel_per_state(
    dln: dynaloss.PairwiseDLN, tmp_path: Path, kind: str
) -> None:
    single = plot_loss_surface(dln, tmp_path / "one.png", kind=kind, resolution=9)
    pair = plot_loss_surface(
        {"initial": dln.state_dict(), "after teaching": dln}, tmp_path / "sub" / "two.png", kind=kind, resolution=9
    )
    assert is_png(single) and is_png(pair)


def test_plot_arguments_are_checked(dln: dynaloss.PairwiseDLN, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        plot_loss_surface(dln, tmp_path / "x.png", kind="wire")
    with pytest.raises(ValueError, match=r"\.png"):
        plot_loss_surface(dln, tmp_path / "x.jpg", resolution=3)
    with pytest.raises(ValueError, match="resolution must be >= 2, got 1"):
        loss_surface(dln, resolution=1)
    with pytest.raises(ValueError, match="2 x values but 3 y values"):
        plot_curves({"a": ([0, 1], [0.1, 0.2, 0.3])}, tmp_path / "c.png")


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    path = plot_curves(
        {"CE": ([0, 10, 20], [0.1, 0.5, 0.7]), "L2T-DLN": ([0, 10, 20], [0.1, 0.6, 0.8])}, tmp_path / "c.png"
    )
    assert is_png(path)


def test_the_profile_is_cross_entropys_value_and_weight_one_and_gces_p_to_the_q() -> None:
    grid, value, weight = loss_profile(F.cross_entropy, 4, resolution=7)
    assert value.shape == weight.shape == (4, 7) and float(grid[0]) == pytest.approx(0.02)
    assert torch.allclose(value, -grid.log().expand(4, -1), atol=1e-5)
    assert torch.allclose(weight, torch.ones(4, 7), atol=1e-4)  # CE is its own reference
    _, _, weight = loss_profile(functools.partial(gce_loss, q=0.7), 4, resolution=7)
    assert torch.allclose(weight, (grid**0.7).expand(4, -1), atol=1e-4)  # implausible samples count less


def test_the_profile_of_a_dln_is_per_class_and_starts_as_cross_entropy() -> None:
    dln = dynaloss.ClassAwareDLN(3, pair_form="logit")
    _, value, weight = loss_profile(dln, 3, resolution=5)  # at 0 the logit form is cross-entropy
    assert torch.allclose(weight, torch.ones(3, 5), atol=1e-4)
    with torch.no_grad():
        dln.robustness[1] = 1.0  # class 1 only: GCE with q = robustness_to_q(1)
    grid, value, weight = loss_profile(dln, 3, resolution=5)
    assert torch.allclose(weight[1], grid ** float(dln.q[1]), atol=1e-4) and torch.allclose(weight[0], weight[2])
    _, value, _ = loss_profile(dynaloss.PairwiseDLN(3), 3, resolution=5)  # any loss module
    assert value.shape == (3, 5) and torch.isfinite(value).all()


def test_plot_sample_weight_and_loss_profile_write_pngs(dln: dynaloss.PairwiseDLN, tmp_path: Path) -> None:
    taught = dynaloss.ClassAwareDLN(10)
    with torch.no_grad():
        taught.robustness.copy_(torch.linspace(0, 1, 10))
    losses = {"CE": F.cross_entropy, "GCE": functools.partial(gce_loss, q=0.7), "taught": taught, "pairwise": dln}
    assert is_png(plot_sample_weight(losses, tmp_path / "w.png", resolution=5, title="t"))
    assert is_png(plot_loss_profile({"before": dynaloss.ClassAwareDLN(10), "after": taught}, tmp_path / "p.png"))
    with pytest.raises(ValueError, match="num_classes"):
        plot_sample_weight({"CE": F.cross_entropy}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        plot_loss_profile({}, tmp_path / "x.png")
