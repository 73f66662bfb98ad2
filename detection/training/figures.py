"""Figures without pyplot: matplotlib's object API on the Agg canvas (safe in threads and headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float = 6.4, height: float = 4.8) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


# Markers and colours that stay apart in print and for colour-blind readers (Okabe-Ito).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def pr_curves_figure(curves: Sequence[Any], names: Sequence[str], title: str) -> Figure:
    """One line per class: interpolated precision against recall (curves from `diagnostics.pr_curves`)."""
    from detection.training.diagnostics import RECALL_POINTS

    figure = new_figure(7.5, 5.0)
    ax = figure.add_subplot()
    for i, (curve, name) in enumerate(zip(curves, names)):
        if curve.num_gt == 0:
            continue
        style = "-" if i < len(COLOURS) else "--"
        ax.plot(
            RECALL_POINTS,
            curve.precision,
            style,
            color=COLOURS[i % len(COLOURS)],
            label=f"{name} (AP {curve.ap:.2f})",
        )
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return figure


def per_class_ap_figure(values: dict[str, Sequence[float]], names: Sequence[str], title: str) -> Figure:
    """Grouped horizontal bars: one group per class, one bar per entry of `values` (label -> APs)."""
    figure = new_figure(6.4, 0.35 * len(names) + 1.5)
    ax = figure.add_subplot()
    height = 0.8 / max(len(values), 1)
    for k, (label, aps) in enumerate(values.items()):
        positions = [i + (k - (len(values) - 1) / 2) * height for i in range(len(names))]
        clean = [0.0 if a is None or a != a else float(a) for a in aps]
        ax.barh(positions, clean, height=height, color=COLOURS[k % len(COLOURS)], label=label)
    ax.set_yticks(range(len(names)), labels=list(names), fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="AP", xlim=(0, 1), title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return figure


def confusion_figure(matrix: Any, names: Sequence[str], title: str) -> Figure:
    """Counts in each cell, colour by the share of its row (what became of each true class)."""
    import numpy as np

    matrix = np.asarray(matrix)
    labels = [*names, "background"]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    size = 0.45 * len(labels) + 2.0
    figure = new_figure(size + 1.0, size)
    ax = figure.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                fontsize=6,
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(labels)), labels=labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels=labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=ax, label="share of the true row", shrink=0.8)
    return figure
