"""Make Lightning's DDP subprocesses join the Hydra job that started them."""

from __future__ import annotations

import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import read_write


def pin_job_for_subprocesses() -> None:
    """Lightning re-launches `sys.argv` for ranks > 0 with `hydra.run.dir=<HydraConfig run.dir>`.

    Inside a multirun that would start the whole sweep again in each child, in the wrong folder.
    Pin the children to this job: argv becomes the job's own overrides (no `-m`, no sweep lists)
    and run.dir this job's output directory, so every rank writes into the same run directory.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *[str(o) for o in hydra_cfg.overrides.task]]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
