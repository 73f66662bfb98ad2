"""Heads x backbones on FashionDet under one fixed budget: accuracy, speed and size in one table.

Launches `scripts/train.py -m experiment=benchmark` over the heads and backbones (each job trains
the same number of batches; see conf/experiment/benchmark.yaml), or reads a finished multirun
(`--sweep-dir`). Then, per job, it loads the tested checkpoint and times the detector on FashionDet
test images one at a time (median ms per image), counts parameters, and writes into the multirun
directory:

- benchmark.csv / benchmark.md: head, backbone, weights, test mAP, mAP_50, val mAP, training
  seconds (measured, and per full epoch estimated from it), inference ms per image, parameters;
- light_head_vs_faster.csv / .md: Light-Head R-CNN against Faster R-CNN on the same backbone and
  images: end-to-end, head (RPN + RoI) and RoI-head ms per image, their ratio, and mAP;
- benchmark.png: test mAP against inference ms per image.

Everything after `--` goes to train.py as Hydra overrides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detection.research import sweeps
from detection.research.runs import checkpoint_of, data_root, load_detector, split_images, weights_label
from detection.research.tables import Job, read_multirun, write_tables
from detection.research.timing import count_parameters, latency_ms_per_image, rcnn_timings
from detection.training import figures

HEADS = "fcos,retinanet,faster_rcnn,light_head_rcnn"
BACKBONES = "efficientnet_lite0,resnet18"
RCNN = ("faster_rcnn", "light_head_rcnn")
# the Light-Head vs Faster split: (row key, rcnn_timings key, whether the table shows a ratio)
SPLITS = (("e2e", "end to end", True), ("head", "head (RPN + RoI)", True), ("roi", "RoI heads", False))

COLUMNS = [
    ("head", "head", ""),
    ("backbone", "backbone", ""),
    ("weights", "backbone weights", ""),
    *sweeps.metric_columns(".3f"),
    ("train_s", "train s (budget)", ".0f"),
    ("epoch_s", "train s / full epoch (est.)", ".0f"),
    ("infer_ms", "inference ms / image", ".1f"),
    ("params_M", "params (M)", ".2f"),
    ("status", "status", ""),
]
PAIR_COLUMNS = [
    ("backbone", "backbone", ""),
    ("weights", "backbone weights", ""),
    ("e2e_F", "end-to-end ms, Faster", ".1f"),
    ("e2e_LH", "end-to-end ms, Light-Head", ".1f"),
    ("e2e_ratio", "ratio LH/F", ".2f"),
    ("head_F", "head ms, Faster", ".1f"),
    ("head_LH", "head ms, Light-Head", ".1f"),
    ("head_ratio", "ratio LH/F", ".2f"),
    ("roi_F", "RoI-head ms, Faster", ".1f"),
    ("roi_LH", "RoI-head ms, Light-Head", ".1f"),
    ("mAP_F", "test mAP, Faster", ".3f"),
    ("mAP_LH", "test mAP, Light-Head", ".3f"),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = sweeps.sweep_parser(
        __doc__.splitlines()[0], "multirun directory to launch into (default logs/benchmark/...)"
    )
    parser.add_argument("--heads", default=HEADS)
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
    """Speed and size of the job's tested checkpoint; R-CNN heads also get the head-only split."""
    checkpoint = checkpoint_of(job)
    if checkpoint is None:
        return {"status": "no checkpoint"}
    model = load_detector(checkpoint)
    out: dict[str, Any] = {
        "infer_ms": latency_ms_per_image(model, images, warmup=warmup),
        "params_M": count_parameters(model) / 1e6,
    }
    if job.get("model.detector.head") in RCNN:
        # one batch of all the timing images, reported per image
        out["rcnn"] = rcnn_timings(model, images, warmup, runs)
    return out


def job_row(job: Job) -> dict[str, Any]:
    return {
        **sweeps.job_results(job),
        "head": job.get("model.detector.head"),
        "backbone": job.get("model.backbone.name"),
        "weights": weights_label(job.get("model.backbone.weights")),
    }


def pair_row(faster: dict[str, Any], light: dict[str, Any]) -> dict[str, Any]:
    """Light-Head against Faster R-CNN, two rows of the same backbone and weights."""
    row = {"backbone": faster["backbone"], "weights": faster["weights"]}
    for key, split, ratio in SPLITS:
        row[f"{key}_F"], row[f"{key}_LH"] = faster["rcnn"][split], light["rcnn"][split]
        if ratio:
            row[f"{key}_ratio"] = row[f"{key}_LH"] / row[f"{key}_F"]
    return {**row, "mAP_F": faster.get("test_mAP"), "mAP_LH": light.get("test_mAP")}


def pair_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pair row wherever both R-CNN heads ran on the same backbone and weights."""
    timed = {(r["head"], r["backbone"], r["weights"]): r for r in rows if r.get("rcnn")}
    pairs = []
    for (head, backbone, weights), faster in sorted(timed.items()):
        light = timed.get(("light_head_rcnn", backbone, weights))
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
        ax.scatter(r["infer_ms"], r["test_mAP"], color=colour, marker=marker, s=60)
        xy = (r["infer_ms"], r["test_mAP"])
        ax.annotate(r["head"], xy, textcoords="offset points", xytext=(5, 4), fontsize=7)
    for i, (backbone, weights) in enumerate(backbones):
        ax.scatter([], [], color=colours[i % len(colours)], marker="o", label=f"{backbone} ({weights})")
    for i, head in enumerate(heads):
        ax.scatter([], [], color="grey", marker=markers[i % len(markers)], label=head)
    ax.set(
        xlabel="inference ms per image (CPU, batch 1)",
        ylabel="test mAP@[.5:.95]",
        title=f"FashionDet, {budget}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return figures.save(figure, path)


def tabulate(jobs: list[Job], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per job, measured where it finished, ordered by backbone then head."""
    rows = []
    images: list[Tensor] | None = None
    for job in jobs:
        row = job_row(job)
        if job.ok:
            if images is None:
                images, _ = split_images(data_root(job), args.images, "test")
            row.update(measure(job, images, args.warmup, args.runs))
        rows.append(row)
    return sorted(rows, key=lambda r: (str(r["backbone"]), str(r["head"])))


def budget_of(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok or not ok[0].get("train_batches"):
        return "budget unknown"
    return f"{ok[0]['train_batches']} training batches ({ok[0]['train_images']} images), 1 epoch"


def note_of(first: Job, budget: str, args: argparse.Namespace) -> str:
    return (
        f"Budget: {budget} per job, seed {first.get('seed')}; test mAP on "
        f"{first.get('trainer.limit_test_batches') or 'all'} test batches of "
        f"{first.get('data.eval_batch_size')} images. Inference: median over {args.images} FashionDet "
        f"test images, batch 1, {args.threads} thread(s), CPU. 'train s / full epoch' extrapolates "
        "the measured training seconds to an unlimited epoch. Backbone weights 'scratch' = random "
        "init (no ImageNet weights offline)."
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
    first = next((j for j in jobs if j.ok), jobs[0])
    csv_path, md_path = write_tables(rows, COLUMNS, sweep_dir / "benchmark", note_of(first, budget, args))
    pairs = pair_rows(rows)
    if pairs:
        write_tables(
            pairs,
            PAIR_COLUMNS,
            sweep_dir / "light_head_vs_faster",
            f"Same backbone, FPN, input and {args.images} test images (one batch, median of {args.runs} "
            f"runs, {args.threads} thread(s)); 'head' = RPN + RoI heads on precomputed features.",
        )
    png = plot(rows, sweep_dir / "benchmark.png", budget)
    print(md_path.read_text())
    if pairs:
        print((sweep_dir / "light_head_vs_faster.md").read_text())
    print(f"Wrote {csv_path}, {md_path}, {png}")
