"""Atomic checkpoint writes: a save interrupted part way leaves the previous last.ckpt loadable.

- A save that fails in the middle of writing (an object in the checkpoint that cannot be pickled,
  met after megabytes were written) leaves the old file whole and no temporary file behind, where a
  plain torch.save into the file leaves a truncated one.
- A process killed with SIGKILL while it writes checkpoints leaves a whole checkpoint; the next
  save removes the temporary file the dead writer left.
- Every trainer config of the template writes through AtomicCheckpointIO (single process and DDP).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from test_reliability_support import CONF_DIR, run_env

from detection.runtime.checkpoints import AtomicCheckpointIO, atomic_torch_save


class _Unpicklable:
    """Pickling it raises: what a checkpoint meets when some callback puts an odd object in it."""

    def __reduce__(self) -> tuple:
        raise RuntimeError("cannot pickle this")


def _checkpoint(version: int, megabytes: int = 4) -> dict:
    return {"version": version, "state_dict": {"w": torch.full((megabytes * 2**18,), float(version))}}


def test_failed_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_checkpoint(1), path)
    broken = {**_checkpoint(2), "zz_callback_state": _Unpicklable()}  # pickled after the 4 MB tensor

    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint(broken, path)
    assert torch.load(path, weights_only=True)["version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left

    # the same failure with a plain torch.save into the file destroys the previous checkpoint
    plain = tmp_path / "plain.ckpt"
    torch.save(_checkpoint(1), plain)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        torch.save(broken, plain)
    with pytest.raises(Exception):  # noqa: B017  (torch raises various errors on a truncated zip)
        torch.load(plain, weights_only=True)


_WRITER = """
import sys, torch
from detection.runtime.checkpoints import atomic_torch_save
path = sys.argv[1]
for version in range(1, 10_000):
    print(f"writing {version}", flush=True)
    atomic_torch_save({"version": version, "w": torch.full((16 * 2**18,), float(version))}, path)
"""


@pytest.mark.timeout(120)
def test_kill9_during_writes_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"version": 0, "w": torch.zeros(4)}, path)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        env=run_env(tmp_path),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # a few 64 MB checkpoints go through first
        if line.strip() == "writing 3":
            break
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".last.ckpt.*.tmp")):  # that write has begun: kill it part way
        assert time.monotonic() < deadline, "the third write never began"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    checkpoint = torch.load(path, weights_only=True)  # whole: an old or a new version, never half
    assert checkpoint["version"] >= 1 and torch.all(checkpoint["w"] == checkpoint["version"])
    atomic_torch_save({"version": -1}, path)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
def test_trainer_configs_write_checkpoints_atomically(trainer: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"trainer={trainer}", f"paths.output_dir={tmp_path}"])
    built = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(built.strategy.checkpoint_io, AtomicCheckpointIO)
