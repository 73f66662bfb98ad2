"""Look before you train: the summary table and three pictures of a data module's splits.

- `samples_<split>.png`: a grid of images with their boxes and class names (crowd / difficult
  boxes dashed), as the files hold them (no augmentation, no resize);
- `classes.png`: boxes per class, one bar per split (a class without boxes shows as a gap);
- `box_sizes.png`: box side sqrt(w * h) and aspect ratio w / h in image pixels, one line per
  split, with anchor sides drawn as vertical lines when they are given.

Figures use matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from rich.console import Console

from detection.data.dataset import DetectionDataset

# Okabe-Ito: splits stay apart in print and for colour-blind readers.
SPLIT_COLOURS = {"train": "#0072B2", "val": "#D55E00", "test": "#009E73"}


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def class_colours(num_classes: int) -> list[tuple[float, float, float]]:
    """One bright colour per class, spread around the hue circle (any number of classes)."""
    golden = 0.618033988749895  # consecutive labels land far apart on the circle
    return [tuple(hsv_to_rgb(((i * golden) % 1.0, 0.85, 0.95))) for i in range(num_classes)]


def samples_figure(dataset: DetectionDataset, num_images: int = 16, seed: int = 0, title: str = "") -> Figure:
    """`num_images` images drawn at random (seeded) from `dataset`, with boxes and class names."""
    count = min(num_images, len(dataset))
    rows_of = sorted(random.Random(seed).sample(range(len(dataset)), count))
    columns = max(1, math.ceil(math.sqrt(count)))
    lines = max(1, math.ceil(count / columns))
    figure = _figure(2.6 * columns, 2.7 * lines + 0.3)
    colours = class_colours(len(dataset.class_names))
    for k, row in enumerate(rows_of):
        ax = figure.add_subplot(lines, columns, k + 1)
        ax.imshow(dataset.load_image(row).permute(1, 2, 0).numpy())
        index = dataset.index
        crowd = zip(index.crowd_boxes[row], index.crowd_labels[row]) if index.crowd_boxes else ()
        drawn = [(b, lab, "-") for b, lab in zip(index.boxes[row], index.labels[row])]
        drawn += [(b, lab, "--") for b, lab in crowd]
        for box, label, style in drawn:
            x0, y0, x1, y1 = (float(v) for v in box)
            colour = colours[int(label)]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=1.3, ls=style))
            ax.text(
                x0,
                y0,
                dataset.class_names[int(label)],
                fontsize=6,
                color="black",
                va="bottom",
                bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0},
            )
        record = dataset.images[row]
        ax.set_title(f"{record['file_name']} ({len(index.boxes[row])})", fontsize=7)
        ax.set_axis_off()
    figure.suptitle(f"{title}{': ' if title else ''}{count} of {len(dataset)} images", fontsize=9)
    return figure


def classes_figure(stats: Mapping[str, Any], class_names: Sequence[str]) -> Figure:
    """Horizontal bars: boxes per class, one bar per split."""
    figure = _figure(7.0, 0.28 * len(class_names) * max(1, len(stats)) ** 0.5 + 1.6)
    ax = figure.add_subplot()
    height = 0.8 / max(len(stats), 1)
    for k, (split, s) in enumerate(stats.items()):
        positions = np.arange(len(class_names)) + (k - (len(stats) - 1) / 2) * height
        ax.barh(
            positions,
            s.boxes_per_class,
            height=height,
            color=SPLIT_COLOURS.get(split, "grey"),
            label=f"{split}: {s.boxes} boxes, {s.images} images ({s.negatives} without boxes)",
        )
    ax.set_yticks(range(len(class_names)), labels=list(class_names), fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="boxes", title="Boxes per class")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return figure


def _sizes(dataset: DetectionDataset) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.concatenate([b for b in dataset.index.boxes if len(b)] or [np.zeros((0, 4))])
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.sqrt(width * height), width / height


def _log_ticks(ax: Any, low: float, high: float, ticks: Sequence[float], labels: Sequence[str]) -> None:
    """Readable ticks on a log x axis: the given ones within [low, high], no minor labels."""
    from matplotlib.ticker import NullFormatter

    kept = [(t, lab) for t, lab in zip(ticks, labels) if low <= t <= high]
    ax.set_xticks([t for t, _ in kept], labels=[lab for _, lab in kept])
    ax.xaxis.set_minor_formatter(NullFormatter())


_SIDE_TICKS = [2.0**k for k in range(0, 14)]  # 1 px .. 8192 px, doubling: how anchors are laid out
_RATIO_TICKS = [1 / 8, 1 / 4, 1 / 3, 1 / 2, 1, 2, 3, 4, 8]
_RATIO_LABELS = ["1/8", "1/4", "1/3", "1/2", "1", "2", "3", "4", "8"]


def box_sizes_figure(
    datasets: Mapping[str, DetectionDataset], anchor_sizes: Sequence[float] | None = None
) -> Figure:
    """Histograms of box side sqrt(w*h) and of aspect ratio w/h (log axes), anchors drawn if given."""
    figure = _figure(10.0, 3.8)
    side_ax, ratio_ax = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for ax in (side_ax, ratio_ax):
        ax.set_xscale("log")
    sizes = {split: _sizes(ds) for split, ds in datasets.items()}
    sides = np.concatenate([s for s, _ in sizes.values()])
    ratios = np.concatenate([r for _, r in sizes.values()])
    if sides.size:
        bins = int(np.clip(np.sqrt(sides.size), 8, 40))
        side_range = (max(sides.min(), 1e-3) / 1.1, sides.max() * 1.1)
        ratio_range = (max(ratios.min(), 1e-3) / 1.1, ratios.max() * 1.1)
        for split, (split_sides, split_ratios) in sizes.items():
            style = {"histtype": "step", "lw": 1.5, "color": SPLIT_COLOURS.get(split, "grey"), "label": split}
            side_ax.hist(split_sides, bins=np.geomspace(*side_range, bins), **style)
            ratio_ax.hist(split_ratios, bins=np.geomspace(*ratio_range, bins), **style)
        anchors = [float(a) for a in anchor_sizes or ()]
        low, high = min([side_range[0], *anchors]), max([side_range[1], *anchors])
        _log_ticks(side_ax, low / 1.5, high * 1.5, _SIDE_TICKS, [f"{t:g}" for t in _SIDE_TICKS])
        _log_ticks(ratio_ax, ratio_range[0] / 1.5, ratio_range[1] * 1.5, _RATIO_TICKS, _RATIO_LABELS)
        for k, size in enumerate(anchors):
            label = "anchor sides" if k == 0 else None
            side_ax.axvline(size, color="black", ls="--", lw=0.9, label=label)
    records = [r for ds in datasets.values() for r in ds.images]
    median = f"{np.median([r['width'] for r in records]):g}x{np.median([r['height'] for r in records]):g}"
    side_ax.set(xlabel="box side sqrt(w*h), image pixels", ylabel="boxes")
    side_ax.set_title(f"Box sizes ({sides.size} boxes; median image {median} px)", fontsize=10)
    ratio_ax.set(xlabel="aspect ratio w / h", ylabel="boxes")
    ratio_ax.set_title("Box shapes", fontsize=10)
    for ax in (side_ax, ratio_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return figure


def inspect_data(
    datamodule: Any,
    out_dir: str | Path,
    split: str | None = None,
    num_images: int = 16,
    seed: int = 0,
    anchor_sizes: Sequence[float] | None = None,
) -> dict[str, Path]:
    """Read and validate every split of `datamodule`, print its summary, write the three pictures.

    Returns {"samples", "classes", "box_sizes"} -> the PNG files under `out_dir`.
    """
    datamodule.check_splits(())
    Console().print(datamodule.summary())
    datasets = datamodule.datasets
    split = split or next(s for s in ("train", "val", "test") if s in datasets)
    if split not in datasets:
        raise ValueError(f"split={split!r} is not in the data; it has {sorted(datasets)}")
    out = Path(out_dir)
    return {
        "samples": _save(
            samples_figure(datasets[split], num_images, seed, split), out / f"samples_{split}.png"
        ),
        "classes": _save(classes_figure(datamodule.stats, datamodule.class_names), out / "classes.png"),
        "box_sizes": _save(box_sizes_figure(datasets, anchor_sizes), out / "box_sizes.png"),
    }
