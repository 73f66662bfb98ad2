"""Which process is running a sweep job now: `<run dir>/running.json` while the job runs.

A resumed sweep (hydra_plugins/detection_sweeper) starts again every job that did not finish; one
still running elsewhere (its SLURM job alive, or a process of this machine) would then be written
by two processes at once. The job writes who it is when it starts and removes the file when it
ends (kept after SIGTERM: a requeued SLURM job comes back); the sweeper asks whether that owner is
still alive: its SLURM job still queued or running, or its process still there on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RUNNING_FILE = "running.json"
SLURM_ALIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SUSPENDED",
    "COMPLETING",
    "CONFIGURING",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}


def _slurm_job_id() -> str | None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


@contextlib.contextmanager
def running(run_dir: str | Path) -> Iterator[None]:
    """Mark `run_dir` as run by this process (host, pid, SLURM job) until the block ends."""
    path = Path(run_dir) / RUNNING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": _slurm_job_id()}
    path.write_text(json.dumps(owner))
    try:
        yield
    except SystemExit:
        # SIGTERM (Lightning's SIGTERMException): the SLURM job may be requeued and come back, so the
        # mark stays; squeue says when it has ended, and a local process is gone anyway
        raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    path.unlink(missing_ok=True)


def live_owner(run_dir: str | Path) -> str | None:
    """A description of the process still running the job in `run_dir`, or None when none is."""
    path = Path(run_dir) / RUNNING_FILE
    if not path.is_file():
        return None
    owner: dict[str, Any] = json.loads(path.read_text())
    job_id = owner.get("slurm_job_id")
    if job_id:
        state = _slurm_state(job_id)
        if state is None:
            return f"SLURM job {job_id} (squeue cannot say if it still runs; scancel it or remove {path})"
        return f"SLURM job {job_id} ({state})" if state in SLURM_ALIVE_STATES else None
    if owner.get("host") == socket.gethostname():
        return f"process {owner['pid']} on {owner['host']}" if process_alive(int(owner["pid"])) else None
    return f"process {owner.get('pid')} on {owner.get('host')} (another machine: stop it, or remove {path})"


def _slurm_state(job_id: str) -> str | None:
    try:
        result = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        # squeue refuses ids it no longer knows: the job ended long ago
        return "" if "Invalid job id" in result.stderr else None
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
