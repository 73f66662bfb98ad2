"""Save `last.ckpt` when the run is told to stop with SIGTERM (preemption, `scancel`, `kill`).

Lightning 2.6 on SIGTERM only sets `trainer.received_sigterm` (and passes the signal on to its DDP
child processes); at the end of the current training batch it raises `SIGTERMException`, a
`SystemExit` with status 0, and the process ends without a checkpoint: everything since the last
periodic checkpoint is lost. This callback writes `last.ckpt` at that moment, when the batch is
complete and every counter consistent, into the ModelCheckpoint folder, so `ckpt_path=<run dir>`
(or a requeued job in the same run directory) continues from the step the signal arrived.
"""

from __future__ import annotations

import logging
from pathlib import Path
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

    Args:
        dirpath: where to write; None: the folder of the trainer's ModelCheckpoint, else
            `<default_root_dir>/checkpoints`.
        filename: the file name (the ModelCheckpoint's last name by default, `last.ckpt`).
    """

    def __init__(self, dirpath: str | None = None, filename: str | None = None) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.saved_path: str | None = None

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
