"""Make Lightning's DDP subprocesses join the Hydra job that started them, and end each job's
process group so that the next job of a multirun starts its own."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

# Set for the DDP ranks > 0 of a multirun job: they run as single jobs but belong to a sweep (see job.py).
MULTIRUN_JOB_ENV = "DETECTION_MULTIRUN_JOB"
# What Lightning's subprocess launcher writes into the launching process's environment.
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def pin_job_for_subprocesses() -> None:
    """Lightning re-launches `sys.argv` for ranks > 0 with `hydra.run.dir=<HydraConfig run.dir>`.

    Inside a multirun that would start the whole sweep again in each child, in the wrong folder.
    Pin the children to this job: argv becomes the job's own overrides (no `-m`, no sweep lists,
    `hydra.mode=RUN` against configs that ask for a multirun, e.g. `hparams_search=...`) and run.dir
    this job's output directory, so every rank writes into the same run directory.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *[str(o) for o in hydra_cfg.overrides.task], "hydra.mode=RUN"]
    if hydra_cfg.mode == RunMode.MULTIRUN:
        os.environ[MULTIRUN_JOB_ENV] = str(hydra_cfg.runtime.output_dir)
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


@contextlib.contextmanager
def job_processes() -> Iterator[None]:
    """Around the Trainer of one job: ranks > 0 join this job (see `pin_job_for_subprocesses`);
    afterwards the process group is gone and the launcher's environment variables are as before.

    Without this the next job of a multirun in the same process would find LOCAL_RANK set (so
    Lightning launches no ranks > 0) and the finished job's process group (whose peers have exited).
    """
    saved_env = {name: os.environ.get(name) for name in (*_LAUNCHER_ENV, MULTIRUN_JOB_ENV)}
    saved_argv = list(sys.argv)
    pin_job_for_subprocesses()
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        sys.argv = saved_argv
