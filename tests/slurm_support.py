"""Running sweeps on the test suite's SLURM cluster (the `slurm` fixture of conftest.py brings it up
with scripts/slurm_cluster.sh): start a sweep through `launcher=submitit_slurm`, wait for what its
jobs write, find a job's SLURM id, wait for the sweep to end."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_reliability_support import run_env, script

# what a CPU-only SLURM job asks for here (the README's values, smaller: this node has 2 CPUs)
SLURM_CPU = {
    "hydra.launcher.gpus_per_node": "null",
    "hydra.launcher.cpus_per_task": "1",
    "hydra.launcher.mem_gb": "2",
    "hydra.launcher.timeout_min": "20",
    "trainer.accelerator": "cpu",
}


def slurm_command(env: dict[str, str], *command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout


def start_sweep(overrides: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """`scripts/train.py -m overrides...` in the background, its output into a file."""
    out = tmp_path / f"sweep-{time.monotonic_ns()}.out"
    proc = subprocess.Popen(
        [*script("train"), "-m", *overrides],
        cwd=tmp_path,
        env=run_env(tmp_path, **env),
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # killed as a group: the launcher and what it started
    )
    proc.output_path = out  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen) -> str:
    return Path(proc.output_path).read_text()  # type: ignore[attr-defined]


def wait_until(
    what: str, done: Callable[[], Any], sweep_dir: Path, env: dict[str, str], timeout: float
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(0.2)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(sweep_dir.glob("*/train.log")))
    queue = slurm_command(env, "squeue", "-t", "all")
    pytest.fail(f"not within {timeout} s: {what}\n{queue}\n{logs}")


def array_task(sweep_dir: Path, index: int) -> str:
    """The SLURM id of the sweep's job `index` (submitit submits a sweep as one job array)."""
    found = [p.name for p in (sweep_dir / ".submitit").glob(f"*_{index}") if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the sweep ran over {timeout} s:\n{output(proc)[-6000:]}")
    return output(proc)
