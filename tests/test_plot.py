"""Figure 3 (the DLN's loss surface) and the curve plot write real PNG files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dynaloss
from dynaloss import functional as DF
from dynaloss.harness.plot import dln_weights, loss_surface, plot_curves, plot_loss_surface

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
