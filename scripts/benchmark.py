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

    python scripts/benchmark.py                                    # 4 heads x 2 backbones
    python scripts/benchmark.py --heads fcos,retinanet --backbones efficientnet_lite0 -- \\
        trainer.limit_train_batches=20 extras.num_threads=2
    python scripts/benchmark.py --sweep-dir logs/benchmark/multiruns/<stamp>   # tabulate only

Everything after `--` goes to train.py as Hydra overrides.
"""

from __future__ import annotations

import os

# Spinning OpenMP threads starve each other on a shared, oversubscribed CPU (a 2-thread step ran
# ~300x slower here); passive waiting costs little when the machine is free. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from detection.research.runs import checkpoint_of, data_root, load_detector, split_images, weights_label
from detection.research.tables import Job, read_multirun, write_tables
from detection.research.timing import count_parameters, latency_ms_per_image
from detection.training import figures

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_heads import _timings as rcnn_timings  # noqa: E402  (scripts/ is not a package)

HEADS = "fcos,retinanet,faster_rcnn,light_head_rcnn"
BACKBONES = "efficientnet_lite0,resnet18"
RCNN = ("faster_rcnn", "light_head_rcnn")

COLUMNS = [
    ("head", "head", ""),
    ("backbone", "backbone", ""),
    ("weights", "backbone weights", ""),
    ("test_mAP", "test mAP", ".3f"),
    ("test_mAP_50", "test mAP_50", ".3f"),
    ("val_mAP", "val mAP", ".3f"),
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


def launch(sweep_dir: Path, heads: str, backbones: str, overrides: list[str]) -> None:
    command = [
        sys.executable,
        str(Path(__file__).resolve().parent / "train.py"),
        "-m",
        "experiment=benchmark",
        f"model={heads}",
        f"model/backbone={backbones}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def default_sweep_dir(overrides: list[str]) -> Path:
    log_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("paths.log_dir=")), "logs")
    return Path(log_dir) / "benchmark" / "multiruns" / time.strftime("%Y-%m-%d_%H-%M-%S_benchmark")


def measure(job: Job, images: list[torch.Tensor], warmup: int, runs: int) -> dict[str, Any]:
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
        with torch.no_grad():
            # one batch of all timing images; benchmark_heads divides by their number
            out["rcnn"] = rcnn_timings(model, images, warmup, runs)
    return out


def job_row(job: Job) -> dict[str, Any]:
    metrics, timing = job.metrics or {}, job.timing or {}
    return {
        "job": job.number,
        "head": job.get("model.detector.head"),
        "backbone": job.get("model.backbone.name"),
        "weights": weights_label(job.get("model.backbone.weights")),
        "test_mAP": metrics.get("test/mAP"),
        "test_mAP_50": metrics.get("test/mAP_50"),
        "val_mAP": metrics.get("val/mAP"),
        "train_s": timing.get("train_s"),
        "train_batches": timing.get("train_batches"),
        "train_images": timing.get("train_images"),
        "epoch_s": timing.get("epoch_s_estimate"),
        "status": "ok" if job.ok else f"failed: {job.error}",
    }


def pair_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Light-Head against Faster R-CNN wherever both ran on the same backbone and weights."""
    out = []
    by_key = {(r["head"], r["backbone"], r["weights"]): r for r in rows if r.get("rcnn")}
    for (head, backbone, weights), faster in sorted(by_key.items()):
        light = by_key.get(("light_head_rcnn", backbone, weights))
        if head != "faster_rcnn" or light is None:
            continue
        f, lh = faster["rcnn"], light["rcnn"]
        out.append(
            {
                "backbone": backbone,
                "weights": weights,
                "e2e_F": f["end to end"],
                "e2e_LH": lh["end to end"],
                "e2e_ratio": lh["end to end"] / f["end to end"],
                "head_F": f["head (RPN + RoI)"],
                "head_LH": lh["head (RPN + RoI)"],
                "head_ratio": lh["head (RPN + RoI)"] / f["head (RPN + RoI)"],
                "roi_F": f["RoI heads"],
                "roi_LH": lh["RoI heads"],
                "mAP_F": faster.get("test_mAP"),
                "mAP_LH": light.get("test_mAP"),
            }
        )
    return out


def plot(rows: list[dict[str, Any]], path: Path, budget: str) -> Path:
    figure = figures.new_figure(7.0, 4.8)
    ax = figure.add_subplot()
    heads = sorted({r["head"] for r in rows})
    backbones = sorted({(r["backbone"], r["weights"]) for r in rows})
    for r in rows:
        if r.get("infer_ms") is None or r.get("test_mAP") is None:
            continue
        colour = figures.COLOURS[backbones.index((r["backbone"], r["weights"])) % len(figures.COLOURS)]
        marker = figures.MARKERS[heads.index(r["head"]) % len(figures.MARKERS)]
        ax.scatter(r["infer_ms"], r["test_mAP"], color=colour, marker=marker, s=60)
        ax.annotate(
            r["head"], (r["infer_ms"], r["test_mAP"]), textcoords="offset points", xytext=(5, 4), fontsize=7
        )
    for i, (backbone, weights) in enumerate(backbones):
        ax.scatter(
            [],
            [],
            color=figures.COLOURS[i % len(figures.COLOURS)],
            marker="o",
            label=f"{backbone} ({weights})",
        )
    for i, head in enumerate(heads):
        ax.scatter([], [], color="grey", marker=figures.MARKERS[i % len(figures.MARKERS)], label=head)
    ax.set(
        xlabel="inference ms per image (CPU, batch 1)",
        ylabel="test mAP@[.5:.95]",
        title=f"FashionDet, {budget}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return figures.save(figure, path)


def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-dir", type=Path, help="tabulate this finished multirun; launch nothing")
    parser.add_argument(
        "--out", type=Path, help="multirun directory to launch into (default logs/benchmark/...)"
    )
    parser.add_argument("--heads", default=HEADS)
    parser.add_argument("--backbones", default=BACKBONES)
    parser.add_argument("--images", type=int, default=16, help="test images timed per job (batch 1)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="timed repeats of the R-CNN head split")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing inference")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    sweep_dir = args.sweep_dir
    if sweep_dir is None:
        sweep_dir = args.out or default_sweep_dir(overrides)
        launch(sweep_dir, args.heads, args.backbones, overrides)
    torch.set_num_threads(args.threads)
    jobs = read_multirun(sweep_dir)
    rows = []
    images: list[torch.Tensor] | None = None
    for job in jobs:
        row = job_row(job)
        if job.ok:
            if images is None:
                images, _ = split_images(data_root(job), args.images, "test")
            row.update(measure(job, images, args.warmup, args.runs))
        rows.append(row)
    rows.sort(key=lambda r: (str(r["backbone"]), str(r["head"])))

    ok = [r for r in rows if r["status"] == "ok"]
    first = next((j for j in jobs if j.ok), jobs[0])
    batches = ok[0].get("train_batches") if ok else None
    images_seen = ok[0].get("train_images") if ok else None
    budget = f"{batches} training batches ({images_seen} images), 1 epoch" if batches else "budget unknown"
    note = (
        f"Budget: {budget} per job, seed {first.get('seed')}; test mAP on "
        f"{first.get('trainer.limit_test_batches') or 'all'} test batches of "
        f"{first.get('data.eval_batch_size')} images. Inference: median over {args.images} FashionDet "
        f"test images, batch 1, {args.threads} thread(s), CPU. 'train s / full epoch' extrapolates "
        "the measured training seconds to an "
        "unlimited epoch. Backbone weights 'scratch' = random init (no ImageNet weights offline)."
    )
    csv_path, md_path = write_tables(rows, COLUMNS, sweep_dir / "benchmark", note)
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


if __name__ == "__main__":
    main()
