"""Transfer study: what does the backbone's starting point buy a detector, and how much?

The same detector (conf/experiment/transfer_study.yaml: FCOS + EfficientNet-Lite0 on FashionDet,
the main job's recipe for two full epochs) with its backbone (a) ImageNet-pretrained, (b)
pretrained by this template's ClassificationTask on Fashion-MNIST, (c) on FashionCrops from
scratch, (d) on FashionCrops from ImageNet, (e) from scratch; and, from ImageNet, with the stages
below 2 or 4 frozen and with weight EMA. Each over the same seeds. Steps:

1. the pretrainings that the chosen variants start from (each skipped when its checkpoint is
   given);
2. the multirun `scripts/train.py -m experiment=transfer_study` over variant x seed;
3. writes transfer_study.csv / .md (per variant: the mean over seeds with its 95 % Student t
   interval, and the standard deviation; one seed has no interval), transfer_study_runs.csv
   (every job) and transfer_study.png into the multirun directory, and prints the table.

--with-sweep-dir (repeatable) adds the jobs of earlier multiruns of the study to the table, so
seeds or variants run later join the ones already run; a variant and seed that finished twice is
an error.

Everything after `--` goes to the detection jobs as Hydra overrides; --pretrain-overrides to every
pretraining run, --crops-overrides to the two FashionCrops ones.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from detection.research import sweeps
from detection.research.tables import Column, Job, group_by, mean_std, read_multirun, t_interval, write_tables
from detection.training import figures

LABELS = {
    "imagenet": "(a) ImageNet",
    "fashion_mnist": "(b) Fashion-MNIST pretraining",
    "fashion_crops": "(c) FashionCrops pretraining",
    "imagenet_fashion_crops": "(d) ImageNet, then FashionCrops",
    "scratch": "(e) from scratch",
    "imagenet_freeze2": "(a) with freeze_at=2",
    "imagenet_freeze4": "(a) with freeze_at=4 (all but the last stage)",
    "imagenet_ema": "(a) with weight EMA",
}
VARIANTS = tuple(LABELS)
# (transfer.<key>, the pretraining run's name, its overrides)
PRETRAININGS = (
    # the study's detector is EfficientNet-Lite0: its Fashion-MNIST pretraining is the Lite0 recipe
    # it was measured with (float32: bfloat16 slows its depthwise convolutions; no shifted items),
    # not the experiment's ResNet-10-T
    (
        "fashion_mnist_ckpt",
        "pretrain_fashion_mnist",
        [
            "experiment=pretrain_fashion_mnist",
            "model/backbone=efficientnet_lite0",
            "trainer.precision=32-true",
            "model.optimizer.weight_decay=5e-5",
            "trainer.max_epochs=6",
            "data.max_shift=0",
        ],
    ),
    (
        "fashion_crops_ckpt",
        "pretrain_fashion_crops",
        ["experiment=pretrain_fashion_crops", "model.backbone.weights=null"],
    ),
    ("imagenet_fashion_crops_ckpt", "pretrain_imagenet_fashion_crops", ["experiment=pretrain_fashion_crops"]),
)
STATS = ("mean", "ci_low", "ci_high", "std")  # CSV columns beside each "mean [low, high]" cell
# Markdown: "mean [95 % CI]" and the standard deviation of each metric; the CSV has every number
SUMMARY_MARKDOWN_COLUMNS: list[Column] = [
    ("variant", "backbone start", ""),
    ("n", "seeds", ""),
    *(
        column
        for key, header, _ in sweeps.metric_columns("")
        for column in ((key, f"{header} (mean [95 % CI])", ""), (f"{key}_std", f"{header} std", ".3f"))
    ),
    ("train_s", "train s / job (mean)", ".0f"),
]
SUMMARY_COLUMNS: list[Column] = [
    ("variant", "backbone start", ""),
    ("n", "seeds", ""),
    *(
        column
        for key, header, _ in sweeps.metric_columns("")
        for column in ((key, header, ""), *((f"{key}_{s}", f"{header} {s}", ".4f") for s in STATS))
    ),
    ("train_s", "train s / job (mean)", ".0f"),
]
RUN_COLUMNS = [
    ("job", "job", ""),
    ("variant", "variant", ""),
    ("seed", "seed", ""),
    *sweeps.metric_columns(".4f"),
    ("train_s", "train s", ".1f"),
    ("status", "status", ""),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = sweeps.sweep_parser(__doc__.splitlines()[0], "folder for the pretraining runs and the multirun")
    parser.add_argument("--pretrained", type=Path, help="an existing pretrain_fashion_mnist checkpoint")
    parser.add_argument(
        "--pretrained-crops", type=Path, help="an existing FashionCrops checkpoint (from scratch)"
    )
    parser.add_argument(
        "--pretrained-imagenet-crops", type=Path, help="an existing FashionCrops checkpoint (from ImageNet)"
    )
    parser.add_argument(
        "--pretrain-overrides", default="", help="Hydra overrides of every pretraining run (one string)"
    )
    parser.add_argument(
        "--crops-overrides", default="", help="Hydra overrides of the FashionCrops runs (one string)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"a subset of {','.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--with-sweep-dir",
        type=Path,
        action="append",
        default=[],
        help="a finished multirun of this study whose jobs join the table (repeatable)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {','.join(VARIANTS)}")
    return args


def needed_pretrainings(variants: list[str]) -> set[str]:
    """The `transfer.<key>` checkpoints that the variants start from (a variant named after a
    pretraining's key starts from its checkpoint)."""
    return {key for key, _, _ in PRETRAININGS if key.removesuffix("_ckpt") in variants}


def pretrain(out: Path, name: str, overrides: list[str]) -> Path:
    """One pretraining run into `out`/<name>; its last checkpoint."""
    run_dir = out / name
    sweeps.train(*overrides, f"hydra.run.dir={run_dir}")
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"the pretraining run {name} wrote no {checkpoint}")
    return checkpoint


def launch(args: argparse.Namespace, overrides: list[str]) -> Path:
    """Pretrain (unless given the checkpoints), run the variant x seed multirun; its directory."""
    out = args.out or sweeps.stamped_dir(overrides, "transfer_study", "study")
    given = {
        "fashion_mnist_ckpt": args.pretrained,
        "fashion_crops_ckpt": args.pretrained_crops,
        "imagenet_fashion_crops_ckpt": args.pretrained_imagenet_crops,
    }
    needed = needed_pretrainings(args.variants.split(","))
    checkpoints = []
    for key, name, run_overrides in PRETRAININGS:
        if key not in needed:  # no chosen variant starts from it: not run, and null in the config
            checkpoints.append(f"transfer.{key}=null")
            continue
        extra = shlex.split(args.pretrain_overrides)
        if "crops" in key:
            extra += shlex.split(args.crops_overrides)
        checkpoint = given[key] or pretrain(out, name, [*run_overrides, *extra])
        checkpoints.append(f"transfer.{key}={Path(checkpoint).resolve()}")
    sweep_dir = out / "multirun"
    sweeps.train(
        "-m",
        "experiment=transfer_study",
        *checkpoints,
        f"transfer.variant={args.variants}",
        f"seed={args.seeds}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    )
    return sweep_dir


def job_row(job: Job, name: str | None = None) -> dict[str, Any]:
    row = {**sweeps.job_results(job), "variant": job.get("transfer.variant"), "seed": job.get("seed")}
    return row if name is None else {**row, "job": name}


def read_jobs(sweep_dir: Path, more: list[Path]) -> list[dict[str, Any]]:
    """Rows of every job of `sweep_dir` and of the multiruns in `more` (named by their path)."""
    rows = [job_row(job) for job in read_multirun(sweep_dir)]
    rows += [job_row(job, str(job.path.resolve())) for other in more for job in read_multirun(other)]
    seen: dict[tuple[Any, Any], Any] = {}
    for row in (r for r in rows if r["status"] == "ok"):  # a failed job may have been run again
        key = (row["variant"], row["seed"])
        if key in seen:
            raise ValueError(
                f"variant {key[0]} with seed {key[1]} is in two jobs: {seen[key]} and {row['job']} "
                f"(of {sweep_dir} and --with-sweep-dir {', '.join(map(str, more))})"
            )
        seen[key] = row["job"]
    return rows


def summary_row(variant: str, group: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over the seeds of one variant with its 95 % t interval (`tables.t_interval`) and
    their standard deviation; one seed has neither, and shows "n=1" (the plot reads the raw values
    too)."""
    row: dict[str, Any] = {"variant": LABELS.get(variant, variant), "key": variant, "n": len(group)}
    for key in sweeps.METRICS:
        interval = t_interval([r[key] for r in group])
        row[key] = interval.text(".3f")
        for stat in STATS:  # NaN (no value, or no spread from one) leaves the cell empty
            value = getattr(interval, stat.removeprefix("ci_"))
            row[f"{key}_{stat}"] = None if math.isnan(value) else value
    row["train_s"] = mean_std([r["train_s"] for r in group if r["train_s"] is not None])[0]
    row["seeds"] = sorted(r["seed"] for r in group)
    row["values"] = {k: [r[k] for r in group] for k in ("test_mAP", "test_mAP_50")}
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary row per variant that finished, in the order of `VARIANTS`."""
    groups = group_by([r for r in rows if r["status"] == "ok"], lambda r: r["variant"])
    order = [*VARIANTS, *sorted(set(groups) - set(VARIANTS))]
    return [summary_row(variant, groups[variant]) for variant in order if variant in groups]


def plot(summary: list[dict[str, Any]], path: Path, budget: str) -> Path:
    figure = figures.new_figure(12.0, 4.2)
    axes = figure.subplots(1, 2)
    for ax, key, label in zip(axes, ("test_mAP", "test_mAP_50"), ("test mAP@[.5:.95]", "test mAP@0.5")):
        for i, row in enumerate(summary):
            colour = figures.COLOURS[i % len(figures.COLOURS)]
            mean, low, high = row[f"{key}_mean"], row[f"{key}_ci_low"], row[f"{key}_ci_high"]
            # the 95 % interval of the mean where there is one (two seeds or more)
            yerr = None if low is None else [[mean - low], [high - mean]]
            ax.bar(i, math.nan if mean is None else mean, yerr=yerr, color=colour, alpha=0.6, capsize=4)
            values = row["values"][key]
            offsets = [i + 0.12 * (j - (len(values) - 1) / 2) for j in range(len(values))]
            ax.scatter(offsets, values, color="k", s=12)
        ax.set_xticks(
            range(len(summary)), labels=[r["key"] for r in summary], fontsize=7, rotation=30, ha="right"
        )
        ax.set(ylabel=label, title=label)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(
        f"Backbone pretraining, FCOS on FashionDet ({budget}); bars: mean and its 95 % CI over seeds "
        "(Student t; none for one seed), dots: seeds",
        fontsize=9,
    )
    return figures.save(figure, path)


def main(argv: list[str] | None = None) -> None:
    own, overrides = sweeps.split_argv(sys.argv[1:] if argv is None else argv)
    args = parse_args(own)
    sweep_dir = args.sweep_dir or launch(args, overrides)
    rows = read_jobs(sweep_dir, args.with_sweep_dir)
    summary = summarise(rows)
    ok = [r for r in rows if r["status"] == "ok"]
    budget = (
        f"{ok[0]['train_batches']} batches / {ok[0]['train_images']} images per job"
        if ok
        else "no job finished"
    )
    runs_csv, _ = write_tables(rows, RUN_COLUMNS, sweep_dir / "transfer_study_runs")
    csv_path, md_path = write_tables(
        summary,
        SUMMARY_COLUMNS,
        sweep_dir / "transfer_study",
        f"Budget: {budget}, same for every job; seeds {sorted({r['seed'] for r in ok})}. "
        "mean [95 % CI]: the mean over seeds and its Student t interval, mean ± t(0.975, n-1)·s/√n; "
        "n=1: one seed, no interval. std = sample standard deviation over seeds.",
        markdown_columns=SUMMARY_MARKDOWN_COLUMNS,
    )
    png = plot(summary, sweep_dir / "transfer_study.png", budget) if summary else None
    print(md_path.read_text())
    print(f"Wrote {csv_path}, {md_path}, {runs_csv}" + (f", {png}" if png else ""))
