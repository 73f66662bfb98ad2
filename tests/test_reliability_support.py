"""Shared by the tests/test_reliability_*.py files (this module holds no tests): tiny run settings,
in-process Hydra jobs that leave os.environ as they found it, and script subprocesses."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import helpers
import torch
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SCRIPTS = REPO / "scripts"


def tiny_overrides(data_root: Path, log_dir: Path, *extra: str) -> list[str]:
    """A run of a few seconds on the `small` FashionDet preset (48/24/24 canvases)."""
    return [
        *helpers.tiny(data_root, log_dir, limits=False, batch_size=8),
        "trainer.limit_val_batches=1",
        *helpers.QUIET,
        *extra,
    ]


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a script subprocess: W&B offline with its folders under tmp_path, one
    thread, nothing left over from in-process runs (PL_* seeds, WANDB_* modes), HYDRA_FULL_ERROR unset
    so errors look as users see them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PL_", "WANDB_")) and k not in ("HYDRA_FULL_ERROR", "PYTEST_CURRENT_TEST")
    }
    wandb_home = tmp_path / "wandb_home"
    env.update(
        WANDB_MODE="offline",
        WANDB_CONFIG_DIR=str(wandb_home / "config"),
        WANDB_CACHE_DIR=str(wandb_home / "cache"),
        WANDB_DATA_DIR=str(wandb_home / "data"),
        WANDB_DIR=str(wandb_home / "dir"),
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


def script(name: str) -> list[str]:
    return [sys.executable, str(SCRIPTS / f"{name}.py")]


def run_script(
    name: str, overrides: Sequence[str], tmp_path: Path, timeout: float, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*script(name), *overrides],
        cwd=tmp_path,
        env=run_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def hydra_job(overrides: Sequence[str], config_name: str = "train") -> Iterator[DictConfig]:
    """`helpers.hydra_job` with W&B offline and one torch thread; os.environ and the thread count are
    restored after. An existing run directory (`hydra.run.dir=...`) is reused, as when SLURM requeues."""
    saved_environ, saved_threads = dict(os.environ), torch.get_num_threads()
    os.environ["WANDB_MODE"] = "offline"
    torch.set_num_threads(1)  # the machine's 2 cores are shared; extras.num_threads only acts in job()
    try:
        with helpers.hydra_job(overrides, config_name) as cfg:
            yield cfg
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
        torch.set_num_threads(saved_threads)


def train_here(overrides: Sequence[str]) -> Path:
    """scripts/train.py's job, in this process; returns the run directory."""
    from detection import pipelines
    from detection.runtime.launch import job

    with hydra_job(overrides) as cfg:
        job(pipelines.train)(cfg)
        return Path(cfg.paths.output_dir)


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
