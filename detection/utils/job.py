"""What every entry point does around its pipeline: extras, and failure handling in sweeps."""

from __future__ import annotations

import functools
import logging
import math
import os
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from detection.utils.errors import exit_on_user_error
from detection.utils.hydra_launch import MULTIRUN_JOB_ENV

log = logging.getLogger(__name__)
T = TypeVar("T")


def apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("num_threads"):
        torch.set_num_threads(int(extras.num_threads))


def _in_multirun() -> bool:
    # Ranks > 0 of a DDP multirun job run as single jobs; the environment says they belong to a sweep.
    if os.environ.get(MULTIRUN_JOB_ENV):
        return True
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job(pipeline: Callable[[DictConfig], T]) -> Callable[[DictConfig], T | float]:
    """Run a pipeline as a Hydra job.

    In a multirun a failing job is reported (log and `<run dir>/error.txt`) and returns NaN, so the
    sweep goes on and an Optuna study records the trial as failed; a single run raises as usual.
    DDP ranks > 0 of a multirun job also end normally: Lightning's launcher kills the whole sweep
    when one of them exits with an error.
    """

    @functools.wraps(pipeline)
    def wrapped(cfg: DictConfig) -> T | float:
        apply_extras(cfg)
        try:
            return pipeline(cfg)
        except Exception as error:
            if not _in_multirun():
                exit_on_user_error(error)  # a user's mistake: its message, no traceback
                raise
            run_dir = Path(cfg.paths.output_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            rank = rank_zero_only.rank
            error_file = run_dir / ("error.txt" if rank == 0 else f"error_rank{rank}.txt")
            error_file.write_text(traceback.format_exc())
            log.error(
                "Job %s failed: %s: %s (traceback in %s)",
                run_dir.name,
                type(error).__name__,
                error,
                error_file,
            )
            return math.nan

    return wrapped
