"""What every entry point does around its pipeline: extras, and failure handling in sweeps."""

from __future__ import annotations

import functools
import logging
import math
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


def apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("num_threads"):
        torch.set_num_threads(int(extras.num_threads))


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job(pipeline: Callable[[DictConfig], T]) -> Callable[[DictConfig], T | float]:
    """Run a pipeline as a Hydra job.

    In a multirun a failing job is reported (log and `<run dir>/error.txt`) and returns NaN, so the
    sweep goes on and an Optuna study records the trial as failed; a single run raises as usual.
    """

    @functools.wraps(pipeline)
    def wrapped(cfg: DictConfig) -> T | float:
        apply_extras(cfg)
        try:
            return pipeline(cfg)
        except Exception as error:
            if not _in_multirun():
                raise
            run_dir = Path(cfg.paths.output_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            log.error(
                "Job %s failed: %s: %s (traceback in %s)",
                run_dir.name,
                type(error).__name__,
                error,
                run_dir / "error.txt",
            )
            return math.nan

    return wrapped
