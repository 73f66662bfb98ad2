"""A job started again in its own run directory (a SLURM requeue) continues from its own last.ckpt."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["requeued_checkpoint"]


def requeued_checkpoint(run_dir: str | Path) -> str | None:
    """`<run_dir>/checkpoints/last.ckpt` when the run directory already holds one as the job starts.

    A fresh run directory is empty; one with a last.ckpt belongs to a job that was stopped and
    started again in the same place: submitit requeues a preempted or timed-out Hydra job with the
    same sweep directory and job number, and PreemptionCheckpoint wrote last.ckpt on the SIGTERM.
    Such a job must continue, not start over, whatever `ckpt_path` says (it named where the first
    start came from).
    """
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return None
    log.warning("This run directory already holds %s (a requeued job): resuming from it", path)
    return str(path)
