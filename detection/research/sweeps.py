"""Launching `scripts/train.py` from a research tool, and the results every job reports."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detection.research.tables import Column, Job

METRICS = ("test_mAP", "test_mAP_50", "val_mAP")  # the mAP keys of `job_results`
TRAIN = Path(__file__).resolve().parents[2] / "scripts" / "train.py"


def sweep_parser(description: str, out_help: str) -> argparse.ArgumentParser:
    """A tool's parser with its two ways in: launch a multirun (into --out) or read one (--sweep-dir)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sweep-dir", type=Path, help="tabulate this finished multirun; launch nothing")
    parser.add_argument("--out", type=Path, help=out_help)
    return parser


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The tool's own arguments, and the Hydra overrides after ``--`` (for train.py)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def stamped_dir(overrides: Sequence[str], folder: str, suffix: str) -> Path:
    """``<paths.log_dir>/<folder>/<date>_<time>_<suffix>``, under the log folder the jobs will use."""
    log_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("paths.log_dir=")), "logs")
    return Path(log_dir) / folder / time.strftime(f"%Y-%m-%d_%H-%M-%S_{suffix}")


def train(*arguments: str) -> None:
    """Run ``scripts/train.py`` with these arguments in a child process; raise if it fails."""
    if not TRAIN.is_file():
        raise FileNotFoundError(f"{TRAIN}: the research tools launch train.py from a source checkout")
    command = [sys.executable, str(TRAIN), *arguments]
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def job_results(job: Job) -> dict[str, Any]:
    """What every tabulated job reports: its metrics, its training budget, and whether it finished."""
    metrics, timing = job.metrics or {}, job.timing or {}
    return {
        "job": job.number,
        "test_mAP": metrics.get("test/mAP"),
        "test_mAP_50": metrics.get("test/mAP_50"),
        "val_mAP": metrics.get("val/mAP"),
        "train_s": timing.get("train_s"),
        "train_batches": timing.get("train_batches"),
        "train_images": timing.get("train_images"),
        "epoch_s": timing.get("epoch_s_estimate"),
        "status": "ok" if job.ok else f"failed: {job.error}",
    }


def metric_columns(spec: str) -> list[Column]:
    """Table columns of the `METRICS` ("test mAP", ...), formatted with `spec` ("" for str())."""
    return [(key, key.replace("_mAP", " mAP"), spec) for key in METRICS]
