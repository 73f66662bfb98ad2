"""Heads x backbones on FashionDet under one fixed budget: accuracy, speed and size in one table.

Launches `scripts/train.py -m experiment=benchmark` over the heads and backbones (each job trains
the same number of batches; see conf/experiment/benchmark.yaml), or reads a finished multirun
(`--sweep-dir`). Jobs that differ only by their seed (``-- seed=0,1,2``) are one configuration, one
row: its test mAP is the mean over the seeds with a 95 % Student t interval (one seed: no
interval). Per job it loads the tested checkpoint and times the detector on FashionDet test images
one at a time; a row's inference time is the median and interquartile range of every image timed
on its seeds' checkpoints. It counts parameters and writes into the multirun directory:

- benchmark.csv / benchmark.md: head, backbone, weights, seeds, test mAP, mAP_50, val mAP (means,
  interval bounds and standard deviations), training seconds (measured, and per full epoch
  estimated from it), inference ms per image (median, 25th and 75th percentile), parameters;
- light_head_vs_faster.csv / .md: Light-Head R-CNN against Faster R-CNN on the same backbone and
  images: end-to-end, head (RPN + RoI) and RoI-head ms per image (median and quartiles), the
  ratio of the medians, and mAP;
- benchmark.png: test mAP against inference ms per image (bars: the interval and the quartiles).

Everything after `--` goes to train.py as Hydra overrides.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detection.models.heads import head_names
from detection.models.heads.rcnn import RCNN
from detection.research import sweeps
from detection.research.runs import checkpoint_of, data_root, load_detector, split_images, weights_label
from detection.research.tables import (
    Column,
    Job,
    group_by,
    read_multirun,
    t_interval,
    without_seed,
    write_tables,
)
from detection.research.timing import Spread, count_parameters, latency_samples_ms, rcnn_samples
from detection.training import figures

BACKBONES = "efficientnet_lite0,resnet18"
# the Light-Head vs Faster split: (row key, rcnn_samples key, header, whether the table shows a ratio)
SPLITS = (
    ("e2e", "end to end", "end-to-end ms", True),
    ("head", "head (RPN + RoI)", "head ms", True),
    ("roi", "RoI heads", "RoI-head ms", False),
)
SIDES = (("F", "Faster"), ("LH", "Light-Head"))
# the overrides that choose a row's head and backbone, shown in their own columns
CHOICES = ("model=", "model/backbone=")
BOUNDS = ("ci_low", "ci_high", "std")  # CSV columns beside each mAP mean (`tables.t_interval`)


def _metric_columns(text: bool) -> list[Column]:
    """The mAP columns: a "mean [low, high]" cell each (Markdown), or the mean and its interval's
    bounds and standard deviation, each a column (CSV; the mean keeps the metric's own key)."""
    columns: list[Column] = []
    for key, header, _ in sweeps.metric_columns(""):
        if text:
            columns.append((f"{key}_text", f"{header} (mean [95 % CI])", ""))
        else:
            columns += [(key, header, ".3f"), *((f"{key}_{s}", f"{header} {s}", ".3f") for s in BOUNDS)]
    return columns


COLUMNS = [
    ("head", "head", ""),
    ("backbone", "backbone", ""),
    ("weights", "backbone weights", ""),
    ("setting", "other overrides", ""),
    ("n", "seeds", ""),
    ("jobs", "jobs", ""),
    *_metric_columns(text=False),
    ("train_s", "train s (budget)", ".0f"),
    ("epoch_s", "train s / full epoch (est.)", ".0f"),
    ("infer_ms", "inference ms / image", ".1f"),
    ("infer_ms_q1", "inference ms / image q1", ".1f"),
    ("infer_ms_q3", "inference ms / image q3", ".1f"),
    ("params_M", "params (M)", ".2f"),
    ("status", "status", ""),
]
MARKDOWN_COLUMNS = [
    ("head", "head", ""),
    ("backbone", "backbone", ""),
    ("weights", "backbone weights", ""),
    ("setting", "other overrides", ""),  # left out where every row's is empty (see `main`)
    ("n", "seeds", ""),
    *_metric_columns(text=True),
    ("train_s", "train s (budget)", ".0f"),
    ("epoch_s", "train s / full epoch (est.)", ".0f"),
    ("infer_text", "inference ms / image (median [IQR])", ""),
    ("params_M", "params (M)", ".2f"),
    ("status", "status", ""),
]


def _pair_columns(text: bool) -> list[Column]:
    """The Light-Head vs Faster table's columns: "median [q1–q3]" cells (Markdown), or the median
    and quartiles each a column (CSV; the median keeps its old key)."""
    columns: list[Column] = [("backbone", "backbone", ""), ("weights", "backbone weights", "")]
    columns.append(("setting", "other overrides", ""))
    for key, _, what, ratio in SPLITS:
        for side, name in SIDES:
            if text:
                columns.append((f"{key}_{side}_text", f"{what}, {name}", ""))
            else:
                columns.append((f"{key}_{side}", f"{what}, {name}", ".1f"))
                columns += [(f"{key}_{side}_{q}", f"{what}, {name} {q}", ".1f") for q in ("q1", "q3")]
        if ratio:
            columns.append((f"{key}_ratio", "ratio LH/F", ".2f"))
    for side, name in SIDES:
        if text:
            columns.append((f"mAP_{side}_text", f"test mAP, {name}", ""))
        else:
            columns.append((f"mAP_{side}", f"test mAP, {name}", ".3f"))
            columns += [(f"mAP_{side}_{b}", f"test mAP, {name} {b}", ".3f") for b in ("ci_low", "ci_high")]
    return columns


PAIR_COLUMNS = _pair_columns(text=False)
PAIR_MARKDOWN_COLUMNS = _pair_columns(text=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = sweeps.sweep_parser(
        __doc__.splitlines()[0], "multirun directory to launch into (default logs/benchmark/...)"
    )
    parser.add_argument(
        "--heads", default=",".join(head_names()), help="comma-separated (default: every registered head)"
    )
    parser.add_argument("--backbones", default=BACKBONES)
    parser.add_argument("--images", type=int, default=16, help="test images timed per job (batch 1)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="timed repeats of the R-CNN head split")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing inference")
    return parser.parse_args(argv)


def launch(sweep_dir: Path, heads: str, backbones: str, overrides: list[str]) -> None:
    sweeps.train(
        "-m",
        "experiment=benchmark",
        f"model={heads}",
        f"model/backbone={backbones}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    )


def measure(job: Job, images: list[Tensor], warmup: int, runs: int) -> dict[str, Any]:
    """Speed and size of the job's tested checkpoint: the raw per-image milliseconds (so that a
    row can pool its seeds' checkpoints); R-CNN heads also get the head-only split."""
    checkpoint = checkpoint_of(job)
    if checkpoint is None:
        return {"status": "no checkpoint"}
    model = load_detector(checkpoint)
    out: dict[str, Any] = {
        "latency": latency_samples_ms(model, images, warmup=warmup),
        "params_M": count_parameters(model) / 1e6,
    }
    if isinstance(model, RCNN):
        # one batch of all the timing images, reported per image
        out["rcnn"] = rcnn_samples(model, images, warmup, runs)
    return out


def _number(value: float) -> float | None:
    """None for NaN: the CSV cell stays empty and the Markdown shows "-"."""
    return None if value is None or math.isnan(value) else value


def _mean(values: list[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def cell_row(jobs: list[Job], measured: list[dict[str, Any]], setting: str) -> dict[str, Any]:
    """One configuration over its seeds (`jobs`; `measured`: `measure` of each finished one): mAP
    means with their 95 % t intervals, mean training time, and the inference time's median and
    quartiles over every image timed on every seed's checkpoint."""
    first = jobs[0]
    results = [sweeps.job_results(job) for job in jobs]
    ok = [r for r in results if r["status"] == "ok"]
    row: dict[str, Any] = {
        "head": first.get("model.detector.head"),
        "backbone": first.get("model.backbone.name"),
        "weights": weights_label(first.get("model.backbone.weights")),
        "setting": setting,
        "n": len(ok),
        "jobs": " ".join(str(job.number) for job in jobs),
        "train_s": _mean([r["train_s"] for r in ok]),
        "epoch_s": _mean([r["epoch_s"] for r in ok]),
        "train_batches": ok[0]["train_batches"] if ok else None,
        "train_images": ok[0]["train_images"] if ok else None,
    }
    for key in sweeps.METRICS:
        interval = t_interval([r[key] for r in ok])
        row[key], row[f"{key}_text"] = _number(interval.mean), interval.text(".3f")
        for bound, value in zip(BOUNDS, (interval.low, interval.high, interval.std), strict=True):
            row[f"{key}_{bound}"] = _number(value)
    timed = [m for m in measured if "latency" in m]
    if timed:
        latency = Spread.of([t for m in timed for t in m["latency"]])
        row["infer_ms"], row["infer_ms_q1"], row["infer_ms_q3"] = latency
        row["infer_text"], row["params_M"] = latency.text(".1f"), timed[0]["params_M"]
        splits = [m["rcnn"] for m in timed if "rcnn" in m]
        if splits:
            row["rcnn"] = {part: Spread.of([t for s in splits for t in s[part]]) for part in splits[0]}
    problems = [r["status"] for r in results if r["status"] != "ok"]
    problems += [m["status"] for m in measured if "status" in m]
    if not problems:
        row["status"] = "ok"
    else:  # a row of several seeds says how many of them it lacks
        row["status"] = (
            problems[0] if len(jobs) == 1 else f"{len(problems)} of {len(jobs)} jobs: {problems[0]}"
        )
    return row


def pair_row(faster: dict[str, Any], light: dict[str, Any]) -> dict[str, Any]:
    """Light-Head against Faster R-CNN, two rows of the same backbone, weights and setting."""
    row = {"backbone": faster["backbone"], "weights": faster["weights"], "setting": faster["setting"]}
    for key, split, _, ratio in SPLITS:
        for side, r in zip(("F", "LH"), (faster, light), strict=True):
            spread = r["rcnn"][split]
            row[f"{key}_{side}"], row[f"{key}_{side}_q1"], row[f"{key}_{side}_q3"] = spread
            row[f"{key}_{side}_text"] = spread.text(".1f")
        if ratio:  # of the medians
            row[f"{key}_ratio"] = row[f"{key}_LH"] / row[f"{key}_F"]
    for side, r in zip(("F", "LH"), (faster, light), strict=True):
        row[f"mAP_{side}"], row[f"mAP_{side}_text"] = r.get("test_mAP"), r.get("test_mAP_text")
        row[f"mAP_{side}_ci_low"], row[f"mAP_{side}_ci_high"] = (
            r.get("test_mAP_ci_low"),
            r.get("test_mAP_ci_high"),
        )
    return row


def pair_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pair row wherever both R-CNN heads ran on the same backbone, weights and setting."""
    timed = {(r["head"], r["backbone"], r["weights"], r["setting"]): r for r in rows if r.get("rcnn")}
    pairs = []
    for (head, backbone, weights, setting), faster in sorted(timed.items()):
        light = timed.get(("light_head_rcnn", backbone, weights, setting))
        if head == "faster_rcnn" and light is not None:
            pairs.append(pair_row(faster, light))
    return pairs


def plot(rows: list[dict[str, Any]], path: Path, budget: str) -> Path:
    figure = figures.new_figure(7.0, 4.8)
    ax = figure.add_subplot()
    heads = sorted({r["head"] for r in rows})
    backbones = sorted({(r["backbone"], r["weights"]) for r in rows})
    colours, markers = figures.COLOURS, figures.MARKERS
    for r in rows:
        if r.get("infer_ms") is None or r.get("test_mAP") is None:
            continue
        colour = colours[backbones.index((r["backbone"], r["weights"])) % len(colours)]
        marker = markers[heads.index(r["head"]) % len(markers)]
        xy = (r["infer_ms"], r["test_mAP"])
        # horizontal bar: the quartiles of the timings; vertical: the seeds' 95 % interval (n > 1)
        xerr = [[r["infer_ms"] - r["infer_ms_q1"]], [r["infer_ms_q3"] - r["infer_ms"]]]
        low, high = r.get("test_mAP_ci_low"), r.get("test_mAP_ci_high")
        yerr = None if low is None or high is None else [[xy[1] - low], [high - xy[1]]]
        ax.errorbar(*xy, xerr=xerr, yerr=yerr, color=colour, lw=1, capsize=3, zorder=1)
        ax.scatter(*xy, color=colour, marker=marker, s=60, zorder=2)
        label = r["head"] + (f" {r['setting']}" if r["setting"] else "")
        ax.annotate(label, xy, textcoords="offset points", xytext=(5, 4), fontsize=7)
    for i, (backbone, weights) in enumerate(backbones):
        ax.scatter([], [], color=colours[i % len(colours)], marker="o", label=f"{backbone} ({weights})")
    for i, head in enumerate(heads):
        ax.scatter([], [], color="grey", marker=markers[i % len(markers)], label=head)
    ax.set(
        xlabel="inference ms per image (CPU, batch 1; median, quartiles)",
        ylabel="test mAP@[.5:.95] (mean, 95 % CI over seeds)",
        title=f"FashionDet, {budget}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return figures.save(figure, path)


def settings(keys: list[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """What sets each configuration apart beyond its head and backbone: its overrides that not
    every configuration shares ("" when only heads and backbones vary)."""
    shared = set.intersection(*(set(k) for k in keys)) if keys else set()
    return {k: " ".join(o for o in k if o not in shared and not o.startswith(CHOICES)) for k in keys}


def tabulate(jobs: list[Job], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per configuration (the jobs whose overrides differ only by the seed), measured
    where its jobs finished, ordered by backbone, head and setting."""
    groups = group_by(jobs, lambda job: without_seed(job.overrides))
    labels = settings(list(groups))
    rows = []
    images: list[Tensor] | None = None
    for key, group in groups.items():
        measured = []
        for job in (j for j in group if j.ok):
            if images is None:
                images, _ = split_images(data_root(job), args.images, "test")
            measured.append(measure(job, images, args.warmup, args.runs))
        rows.append(cell_row(group, measured, labels[key]))
    return sorted(rows, key=lambda r: (str(r["backbone"]), str(r["head"]), r["setting"]))


def budget_of(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok or not ok[0].get("train_batches"):
        return "budget unknown"
    return f"{ok[0]['train_batches']} training batches ({ok[0]['train_images']} images), 1 epoch"


def note_of(jobs: list[Job], budget: str, args: argparse.Namespace) -> str:
    first = next((j for j in jobs if j.ok), jobs[0])
    seeds = sorted({j.get("seed") for j in jobs if j.ok}, key=str)
    return (
        f"Budget: {budget} per job, seeds {', '.join(map(str, seeds)) or '-'}; test mAP on "
        f"{first.get('trainer.limit_test_batches') or 'all'} test batches of "
        f"{first.get('data.eval_batch_size')} images. mAP: mean over a row's seeds [95 % Student t "
        "interval, mean ± t(0.975, n-1)·s/√n]; n=1: one seed, no interval. Inference: median "
        f"[25th–75th percentile] over {args.images} FashionDet test images on each seed's checkpoint, "
        f"batch 1, {args.threads} thread(s), CPU. 'train s / full epoch' extrapolates the measured "
        "training seconds to an unlimited epoch. Backbone weights 'scratch' = random init (no "
        "ImageNet weights offline)."
    )


def main(argv: list[str] | None = None) -> None:
    own, overrides = sweeps.split_argv(sys.argv[1:] if argv is None else argv)
    args = parse_args(own)
    sweep_dir = args.sweep_dir
    if sweep_dir is None:
        sweep_dir = args.out or sweeps.stamped_dir(overrides, "benchmark/multiruns", "benchmark")
        launch(sweep_dir, args.heads, args.backbones, overrides)
    torch.set_num_threads(args.threads)
    jobs = read_multirun(sweep_dir)
    rows = tabulate(jobs, args)
    budget = budget_of(rows)
    # the "other overrides" column only where some configuration has one
    shown = [c for c in MARKDOWN_COLUMNS if c[0] != "setting" or any(r["setting"] for r in rows)]
    csv_path, md_path = write_tables(
        rows, COLUMNS, sweep_dir / "benchmark", note_of(jobs, budget, args), markdown_columns=shown
    )
    pairs = pair_rows(rows)
    if pairs:
        pair_shown = [
            c for c in PAIR_MARKDOWN_COLUMNS if c[0] != "setting" or any(p["setting"] for p in pairs)
        ]
        write_tables(
            pairs,
            PAIR_COLUMNS,
            sweep_dir / "light_head_vs_faster",
            f"Same backbone, FPN, input and {args.images} test images (one batch; ms per image: median "
            f"[25th–75th percentile] of {args.runs} runs per checkpoint, pooled over a row's seeds, "
            f"{args.threads} thread(s); ratios of the medians); 'head' = RPN + RoI heads on precomputed "
            "features. mAP: mean over seeds [95 % t interval].",
            markdown_columns=pair_shown,
        )
    png = plot(rows, sweep_dir / "benchmark.png", budget)
    print(md_path.read_text())
    if pairs:
        print((sweep_dir / "light_head_vs_faster.md").read_text())
    print(f"Wrote {csv_path}, {md_path}, {png}")
