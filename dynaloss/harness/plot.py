"""Pictures: the DLN's loss surface (the paper's Figure 3), how any loss treats a sample as a function of its true
class's probability (its value and its per-sample weight), and accuracy curves, written as PNG files.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot, so
nothing opens a window and no process-wide backend is switched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from dynaloss import functional as DF
from dynaloss.losses.class_aware import ClassAwareDLN

__all__ = [
    "SURFACE_KINDS",
    "dln_weights",
    "loss_profile",
    "loss_surface",
    "plot_curves",
    "plot_loss_profile",
    "plot_loss_surface",
    "plot_sample_weight",
]

SURFACE_KINDS = ("surface", "heatmap")

DLNSource = nn.Module | Mapping[str, Any] | Sequence[Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def dln_weights(source: DLNSource) -> list[Tensor]:
    """The layer matrices a pairwise DLN computes with, from wherever it is kept.

    Args:
        source: a :class:`dynaloss.PairwiseDLN`, its ``state_dict()``, a :meth:`dynaloss.Teacher.state_dict`
            (its ``'loss_fn'`` entry is used), or the matrices themselves. A DLN or state dict of a
            ``monotone`` DLN gives its constrained matrices (:func:`dynaloss.functional.monotone_weights`).

    Returns:
        Detached ``(out, in)`` matrices, first layer first.
    """
    if isinstance(source, nn.Module):
        if not hasattr(source, "mlp_weights"):
            raise TypeError(f"{type(source).__name__} has no .mlp_weights(): expected a PairwiseDLN")
        return [m.detach() for m in source.mlp_weights()]  # type: ignore[operator]
    if isinstance(source, Mapping):
        if "loss_fn" in source:
            return dln_weights(source["loss_fn"])
        count = sum(1 for key in source if str(key).startswith("layers."))
        if count == 0:
            raise ValueError(f"no 'layers.<i>' entries in the state dict (keys: {sorted(source)[:8]})")
        raw = [torch.as_tensor(source[f"layers.{i}"]).detach() for i in range(count)]
        extra = source.get("_extra_state", {})
        if not extra.get("monotone", False):
            return raw
        return DF.pin_loss_range(DF.monotone_weights(raw), extra["target_range"])
    if isinstance(source, Sequence) and source and all(isinstance(m, Tensor) for m in source):
        return [m.detach() for m in source]
    raise TypeError(f"expected a PairwiseDLN, a state dict or a list of tensors, got {type(source).__name__}")


@torch.no_grad()
def loss_surface(source: DLNSource, resolution: int = 101) -> tuple[Tensor, Tensor, Tensor]:
    """The DLN's value over (true-class prediction, wrong-class prediction) on a grid over ``[0, 1]^2``.

    Args:
        source: the DLN (see :func:`dln_weights`).
        resolution: grid points per axis (default: ``101``).

    Returns:
        ``(true_prob, wrong_prob, value)``, each ``(resolution, resolution)``; ``value[i, j]`` is the loss at
        ``wrong_prob = grid[i]``, ``true_prob = grid[j]``.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise TypeError(f"resolution must be an int, got {type(resolution).__name__}")
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    weights = [w.float().cpu() for w in dln_weights(source)]
    grid = torch.linspace(0.0, 1.0, resolution)
    wrong_prob, true_prob = torch.meshgrid(grid, grid, indexing="ij")
    return true_prob, wrong_prob, DF.pairwise_row_loss(weights, true_prob, wrong_prob)


def _surface_panel(figure: Figure, position: int, count: int, grids: tuple[Tensor, Tensor, Tensor]) -> Any:
    axes = figure.add_subplot(1, count, position, projection="3d")
    true_prob, wrong_prob, value = (g.numpy() for g in grids)
    drawn = axes.plot_surface(true_prob, wrong_prob, value, cmap="viridis", linewidth=0, antialiased=True)
    axes.view_init(elev=30, azim=-135)  # the paper's view: the true-class axis running towards the viewer
    return axes, drawn


def _heatmap_panel(figure: Figure, position: int, count: int, grids: tuple[Tensor, Tensor, Tensor]) -> Any:
    axes = figure.add_subplot(1, count, position)
    true_prob, wrong_prob, value = (g.numpy() for g in grids)
    drawn = axes.contourf(true_prob, wrong_prob, value, levels=30, cmap="viridis")
    axes.contour(true_prob, wrong_prob, value, levels=10, colors="k", linewidths=0.4)
    axes.set_aspect("equal")
    return axes, drawn


def plot_loss_surface(
    dlns: DLNSource | Mapping[str, DLNSource],
    path: str | Path,
    *,
    kind: str = "surface",
    resolution: int = 41,
    title: str | None = None,
) -> Path:
    """Draw the DLN's loss surface (the paper's Figure 3), one panel per DLN state, and save it as a PNG.

    The x axis is the prediction (sigmoid) of the true class, the y axis that of one wrong class, the value
    is the DLN's output for that pair. Each panel has its own colour scale: the taught DLN's range may be far
    from the initial one's (the paper's Figure 3 shows it expand, then contract).

    Args:
        dlns: one DLN, or ``{label: DLN}`` for several side by side (e.g. ``{"initial": ..., "taught": ...}``);
            each anything :func:`dln_weights` accepts.
        path: the PNG file to write (its folder is created).
        kind: ``'surface'`` (3-D, as in the paper) or ``'heatmap'`` (filled contours) (default: ``'surface'``).
        resolution: grid points per axis (default: ``41``).
        title: a title above the panels (default: none).

    Returns:
        The path written.
    """
    if kind not in SURFACE_KINDS:
        raise ValueError(f"kind must be one of {SURFACE_KINDS}, got {kind!r}")
    is_one = not isinstance(dlns, Mapping) or "loss_fn" in dlns or any(str(k).startswith("layers.") for k in dlns)
    panels = cast("Mapping[str, DLNSource]", {"DLN": dlns} if is_one else dlns)
    if not panels:
        raise ValueError("dlns is empty: nothing to plot")
    figure = Figure(figsize=(5.6 * len(panels), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    draw = _surface_panel if kind == "surface" else _heatmap_panel
    for position, (label, source) in enumerate(panels.items(), start=1):
        axes, drawn = draw(figure, position, len(panels), loss_surface(source, resolution))
        axes.set_title(str(label))
        axes.set_xlabel("p(true class)")
        axes.set_ylabel("p(wrong class)")
        figure.colorbar(drawn, ax=axes, shrink=0.6, pad=0.08, label="DLN loss")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def loss_profile(loss_fn: LossFn, num_classes: int, resolution: int = 49) -> tuple[Tensor, Tensor, Tensor]:
    """How ``loss_fn`` treats one sample as a function of ``p_y``, the softmax probability of its labelled class.

    A sample's logits are its log-probabilities: ``p_y`` on a grid over ``[0.02, 0.98]``, the rest ``1 - p_y``
    shared evenly by the other classes. The loss is called on one sample at a time, so its value is the sample's
    whatever its reduction; a loss with parameters is evaluated on their device.

    Args:
        loss_fn: ``loss_fn(logits, target)``, e.g. ``F.cross_entropy``, a :class:`dynaloss.ClassAwareDLN` or a
            :class:`dynaloss.PairwiseDLN`.
        num_classes: ``C``.
        resolution: grid points (default: ``49``).

    Returns:
        ``(p_y, value, weight)``: the ``(G,)`` grid and two ``(C, G)`` tensors, row ``c`` for a sample labelled
        ``c``: the loss, and its per-sample weight ``|dL/dz_y|`` relative to cross-entropy's (``1 - p_y`` here):
        1 everywhere for cross-entropy, below 1 where the loss discounts the sample. A
        :class:`dynaloss.ClassAwareDLN` is profiled without its ``keep_scale`` (the per-batch normalisation
        of these weights to a mean of 1, which one sample alone would turn into 1).
    """
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    if isinstance(loss_fn, ClassAwareDLN) and loss_fn.keep_scale:
        # keep_scale divides by the mean gradient factor of the batch, which for one sample is its own: profile the
        # loss it normalises, whose weights are the ones a batch divides by their mean
        loss_fn = copy.deepcopy(loss_fn)
        loss_fn.keep_scale = False
    parameter = next(loss_fn.parameters(), None) if isinstance(loss_fn, nn.Module) else None
    device = torch.device("cpu") if parameter is None else parameter.device
    grid = torch.linspace(0.02, 0.98, resolution)
    value, weight = torch.empty(num_classes, resolution), torch.empty(num_classes, resolution)
    for label in range(num_classes):
        target = torch.tensor([label], device=device)
        for i, p in enumerate(grid.tolist()):
            logits = torch.full((1, num_classes), math.log((1 - p) / (num_classes - 1)), device=device)
            logits[0, label] = math.log(p)
            logits.requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(logits, target)
                (gradient,) = torch.autograd.grad(loss, logits)
            value[label, i], weight[label, i] = float(loss.detach()), abs(float(gradient[0, label])) / (1 - p)
    return grid, value, weight


def _num_classes(losses: Mapping[str, LossFn], num_classes: int | None) -> int:
    """``num_classes``, or the ``num_classes`` attribute one of the losses has (a DLN's)."""
    found = num_classes or next((f.num_classes for f in losses.values() if hasattr(f, "num_classes")), 0)
    if not found:
        raise ValueError("pass num_classes=: none of the losses has a num_classes attribute")
    return int(found)


def _by_class(axes: Any, grid: Tensor, rows: Tensor, label: str, index: int, dashed: bool) -> None:
    """The mean over classes as a line, and each class thinly where the classes differ."""
    color = f"C{index % 10}"
    if float(rows.max(0).values.sub(rows.min(0).values).max()) > 1e-4 * float(rows.abs().max()):
        for row in rows:
            axes.plot(grid, row, color=color, alpha=0.35, linewidth=0.8)
        label += " (thin: each class)"
    axes.plot(grid, rows.mean(0), color=color, linestyle="--" if dashed else "-", linewidth=2.0, label=label)


def plot_sample_weight(
    losses: Mapping[str, LossFn],
    path: str | Path,
    *,
    num_classes: int | None = None,
    resolution: int = 49,
    title: str | None = None,
) -> Path:
    """Draw each loss's per-sample weight against ``p_y`` (see :func:`loss_profile`) in one panel, save it as a PNG.

    A robust loss draws a curve that falls towards ``p_y = 0``: samples the model finds implausible, where wrong
    labels gather, count less than under cross-entropy (the line at 1).

    Args:
        losses: ``{label: loss_fn}``, e.g. ``{"CE": F.cross_entropy, "taught DLN": teacher.loss_fn}``.
        path: the PNG file to write (its folder is created).
        num_classes: ``C`` (default: the ``num_classes`` of the first loss that has one).
        resolution: grid points (default: ``49``).
        title: the panel's title (default: none).

    Returns:
        The path written.
    """
    if not losses:
        raise ValueError("losses is empty: nothing to plot")
    classes = _num_classes(losses, num_classes)
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    drawn: list[Tensor] = []
    for index, (label, loss_fn) in enumerate(losses.items()):
        grid, _, weight = loss_profile(loss_fn, classes, resolution)
        # a curve equal to one already drawn (a DLN before teaching is CE) is dashed: both stay visible
        dashed = any(torch.allclose(weight, earlier, atol=1e-4) for earlier in drawn)
        _by_class(axes, grid, weight, str(label), index, dashed)
        drawn.append(weight)
    axes.set_xlabel("p_y, the model's probability of the sample's label")
    axes.set_ylabel("per-sample weight: |dL/dz_y| / cross-entropy's")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title)
    return _save(figure, path)


def plot_loss_profile(
    losses: Mapping[str, LossFn],
    path: str | Path,
    *,
    num_classes: int | None = None,
    resolution: int = 49,
    title: str | None = None,
) -> Path:
    """Draw each loss's value against ``p_y`` (see :func:`loss_profile`), one panel per loss and one line per
    class, cross-entropy (``-log p_y``) dashed for reference, and save it as a PNG.

    Args:
        losses: ``{label: loss_fn}``, e.g. ``{"before teaching": initial_dln, "after teaching": teacher.loss_fn}``.
        path: the PNG file to write (its folder is created).
        num_classes: ``C`` (default: the ``num_classes`` of the first loss that has one).
        resolution: grid points (default: ``49``).
        title: a title above the panels (default: none).

    Returns:
        The path written.
    """
    if not losses:
        raise ValueError("losses is empty: nothing to plot")
    classes = _num_classes(losses, num_classes)
    figure = Figure(figsize=(5.0 * len(losses), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(losses), sharey=True, squeeze=False)[0]
    for axes, (label, loss_fn) in zip(panels, losses.items()):
        grid, value, _ = loss_profile(loss_fn, classes, resolution)
        for c, row in enumerate(value):
            axes.plot(grid, row, color=f"C{c % 10}", linewidth=1.2, label=f"class {c}")
        axes.plot(grid, -grid.log(), "k--", linewidth=1.0, label="cross-entropy")
        axes.set_title(str(label))
        axes.set_xlabel("p_y, the model's probability of the sample's label")
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("loss of the sample")
    panels[-1].legend(fontsize="x-small", ncol=2)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str = "student SGD steps",
    ylabel: str = "test accuracy",
    title: str | None = None,
) -> Path:
    """Line plot of ``{label: (x values, y values)}`` saved as a PNG; returns the path written."""
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, (xs, ys) in curves.items():
        if len(xs) != len(ys):
            raise ValueError(f"curve {label!r} has {len(xs)} x values but {len(ys)} y values")
        axes.plot(list(xs), list(ys), marker="o", markersize=3, label=str(label))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    return _save(figure, path)


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
