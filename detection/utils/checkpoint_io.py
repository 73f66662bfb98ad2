"""Checkpoint files that are either the old version or the new one, never half of the new one.

Lightning's TorchCheckpointIO pickles into memory, then writes through an fsspec transaction whose
local temporary file lies in the system temp folder: moving it into the run directory is a copy
when the two are on different file systems (a kill part way leaves a truncated `last.ckpt`), and
nothing is synced to disk (a node crash can leave an empty file behind a successful rename).
Here the checkpoint streams into a temporary file next to the target, is fsynced, and replaces the
target with one `os.replace` (atomic on POSIX), then the folder is fsynced so the rename persists.
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

log = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointIO", "atomic_torch_save"]

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
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


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
