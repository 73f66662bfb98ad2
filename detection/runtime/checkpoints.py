"""Checkpoint files: which one a run resumes from, atomic writes, and requeued jobs.

- `resolve_ckpt_path`: the ``ckpt_path`` config value (None, "last", a run directory or a file)
  as a file; `run_dir_of` the run directory a checkpoint was written in.
- `AtomicCheckpointIO` / `atomic_torch_save`: Lightning's TorchCheckpointIO pickles into memory,
  then writes through an fsspec transaction whose temporary file lies in the system temp folder:
  moving it into the run directory is a copy when the two are on different file systems (a kill
  part way leaves a truncated ``last.ckpt``), and nothing is synced to disk. Here the checkpoint
  streams into a temporary file next to the target, is fsynced, and replaces the target with one
  `os.replace` (atomic on POSIX), then the folder is fsynced so the rename persists.
- `requeued_checkpoint`: a job started again in its own run directory (a SLURM requeue) continues
  from its own ``last.ckpt``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from detection.runtime.job_owner import process_alive

log = logging.getLogger(__name__)


def resolve_ckpt_path(
    ckpt_path: str | None, log_dir: str | Path, task_name: str, exclude: str | Path | None = None
) -> str | None:
    """Turn the `ckpt_path` config value into a checkpoint file, or None.

    - None: start fresh.
    - "last": the newest `checkpoints/last.ckpt` of any run or multirun job of `task_name`
      (the current run directory `exclude` is ignored).
    - a run directory: its `checkpoints/last.ckpt`.
    - a file: itself.
    """
    if ckpt_path in (None, "", "null", "none"):
        return None
    log_dir = Path(log_dir)
    if ckpt_path == "last":
        task_dir = log_dir / task_name
        excluded = Path(exclude).resolve() if exclude is not None else None
        candidates = [
            p
            for p in task_dir.glob("**/checkpoints/last.ckpt")
            if excluded is None or excluded not in p.resolve().parents
        ]
        if not candidates:
            raise FileNotFoundError(
                f"ckpt_path=last: no checkpoints/last.ckpt under {task_dir}. Train once with "
                f"task_name={task_name} first, or pass ckpt_path=<file or run directory>."
            )
        return str(max(candidates, key=lambda p: p.stat().st_mtime))
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return str(candidate)
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: the directory holds no checkpoints/last.ckpt")
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(path)


def run_dir_of(ckpt_file: str | Path) -> Path:
    """The run directory a checkpoint file was written in (`<run>/checkpoints/x.ckpt` -> `<run>`)."""
    ckpt_file = Path(ckpt_file).resolve()
    return ckpt_file.parent.parent if ckpt_file.parent.name == "checkpoints" else ckpt_file.parent


TMP_SUFFIX = ".tmp"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """`torch.save(obj, path)` such that `path` is at every moment absent, the old file, or the whole new one.

    The temporary file (`.<name>.<random>.tmp` in the same folder) is removed when the write fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    # 0o666 and the umask give the permissions of a plain open(); mkstemp would force 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    _remove_stale_temporaries(path)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of `path` left by writers that were killed (kill -9 cannot clean up)."""
    for tmp in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
        pid = tmp.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename itself is still atomic
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with atomic local writes (remote URLs keep Lightning's own path).

    Wired in by `conf/trainer/default.yaml` (`plugins`), so every ModelCheckpoint save, `last.ckpt`
    included, and `trainer.save_checkpoint` go through it.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        atomic_torch_save(checkpoint, path)


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
