"""Save `last.ckpt` when the run is told to stop: SIGTERM (preemption, `scancel`, `kill`), or
SLURM's warning that the job's time limit is near, after which the job also requeues itself.

Lightning 2.6 on SIGTERM only sets `trainer.received_sigterm` (and passes the signal on to its DDP
child processes); at the end of the current training batch it raises `SIGTERMException`, a
`SystemExit` with status 0, and the process ends without a checkpoint: everything since the last
periodic checkpoint is lost. This callback writes `last.ckpt` at that moment, when the batch is
complete and every counter consistent, into the ModelCheckpoint folder, so `ckpt_path=<run dir>`
(or a requeued job in the same run directory) continues from the step the signal arrived.

Before the time limit SLURM sends a warning signal (`--signal=USR2@N`, which submitit sets from
`signal_delay_s`). submitit's own handler requeues the job at once, in the middle of a batch and
without a checkpoint. Inside a SLURM job this callback takes that signal over while `fit` runs: it
stops at the end of the batch as on SIGTERM, saves `last.ckpt`, and only then requeues the job
(`scontrol requeue`), as Lightning's own SLURM auto-requeue does; the job started again continues
from `last.ckpt` by itself (`detection.runtime.checkpoints.requeued_checkpoint`). Outside `fit`
the signal goes to whatever handled it before (submitit's requeue).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from detection.runtime.checkpoints import run_dir_of

log = logging.getLogger(__name__)

__all__ = ["PreemptionCheckpoint"]


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM during `fit`, save a full checkpoint as `<dirpath>/last.ckpt` before the process exits.

    Inside a SLURM job (`SLURM_JOB_ID` set), `requeue_signal` during `fit` does the same and then
    requeues the job: the time limit loses no step.

    Args:
        dirpath: where to write; None: the folder of the trainer's ModelCheckpoint, else
            `<default_root_dir>/checkpoints`.
        filename: the file name (the ModelCheckpoint's last name by default, `last.ckpt`).
        requeue_signal: SLURM's time-limit warning, as the job was submitted with
            (`--signal=<name>@<seconds>`; submitit's is USR2); None leaves it to others.
    """

    def __init__(
        self, dirpath: str | None = None, filename: str | None = None, requeue_signal: str | None = "USR2"
    ) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.requeue_signal = _signal_number(requeue_signal) if requeue_signal else None
        self.saved_path: str | None = None
        self.requeue_requested = False
        self._previous_handler: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.requeue_signal is None or "SLURM_JOB_ID" not in os.environ:
            return
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self.requeue_requested = False
        self._previous_handler = signal.signal(self.requeue_signal, self._on_time_limit_warning)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(self.requeue_signal, self._previous_handler)
            self._previous_handler = None

    def _on_time_limit_warning(self, signum: int, frame: FrameType | None) -> None:
        log.warning(
            "%s: the SLURM time limit is near; checkpointing at the end of this batch, then requeueing",
            signal.Signals(signum).name,
        )
        self.requeue_requested = True
        # Lightning's SIGTERM handler stops the loop at the end of the batch (all DDP ranks together)
        # and on_exception below saves; a signal to ourselves is its public way in.
        os.kill(os.getpid(), signal.SIGTERM)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return  # other failures (e.g. a non-finite loss) must not overwrite the last good checkpoint
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        path = self._path(trainer)
        # As ModelCheckpoint does: name the file as its last checkpoint before the state is dumped, so
        # a job resumed from it keeps writing `last.ckpt` (not `last-v1.ckpt`).
        for callback in trainer.checkpoint_callbacks:
            if (
                isinstance(callback, ModelCheckpoint)
                and callback.save_last
                and callback.dirpath
                and Path(callback.dirpath).resolve() == path.parent.resolve()
            ):
                callback.last_model_path = str(path)
        checkpoint: dict[str, Any] = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        # strategy.save_checkpoint writes on global rank 0 only; trainer.save_checkpoint would add a
        # barrier, which could wait forever on ranks that the signal already ended.
        trainer.strategy.save_checkpoint(checkpoint, str(path))
        self.saved_path = str(path)
        if trainer.is_global_zero:
            log.warning(
                "SIGTERM: saved %s at global step %d (epoch %d). Resume with ckpt_path=%s",
                path,
                trainer.global_step,
                trainer.current_epoch,
                run_dir_of(path),
            )
            if self.requeue_requested:
                _requeue_slurm_job()

    def _path(self, trainer: L.Trainer) -> Path:
        callback = trainer.checkpoint_callback
        folder = self.dirpath
        if folder is None and isinstance(callback, ModelCheckpoint) and callback.dirpath:
            folder = callback.dirpath
        if folder is None:
            folder = str(Path(trainer.default_root_dir) / "checkpoints")
        name = self.filename
        if name is None:
            last = getattr(callback, "CHECKPOINT_NAME_LAST", None) or "last"
            extension = getattr(callback, "FILE_EXTENSION", ".ckpt")
            name = f"{last}{extension}"
        return Path(folder) / name


def _signal_number(name: str) -> signal.Signals:
    name = name.upper()
    number = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
    if not isinstance(number, signal.Signals):
        raise ValueError(f"requeue_signal={name!r}: not a signal name (e.g. USR1, USR2)")
    return number


def _requeue_slurm_job() -> None:
    """`scontrol requeue` this SLURM job (an array task by its array ids), after the checkpoint."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job_id):
        log.error("Not requeueing: unexpected SLURM job id %r", job_id)
        return
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode == 0:
        log.warning("Requeued SLURM job %s: it continues from last.ckpt when it starts again", job_id)
    else:
        log.error(
            "scontrol requeue %s failed (%d): %s. Resume by hand with ckpt_path=<run dir>",
            job_id,
            result.returncode,
            result.stderr.strip(),
        )
