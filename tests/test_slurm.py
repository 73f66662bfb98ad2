"""SLURM for real: a one-node cluster (scripts/slurm_cluster.sh) runs sweeps through
`launcher=submitit_slurm` on the CPU.

- A job preempted mid-epoch (`scontrol requeue`: SIGTERM, then back to the queue) saves `last.ckpt`,
  starts again by itself and ends with the weights of a job never stopped.
- A job given SLURM's time-limit warning (USR2, as `--signal=USR2@signal_delay_s` sends it)
  checkpoints first, then requeues itself, and also ends with those weights.
- The README's two-job sweep runs on the cluster, one run directory, metrics and W&B run per job in
  the sweep's group; after one job is cancelled mid-run and the sweep command dies, the same command
  again continues that job from its checkpoint and runs nothing twice.

The cluster needs root (or SLURM already installed); elsewhere these tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
from test_reliability_support import load, run_env, script, tiny_overrides

CLUSTER_SCRIPT = helpers.SCRIPTS / "slurm_cluster.sh"
STEPS_PER_EPOCH = 6  # 48 training canvases of the small preset in batches of 8
EPOCHS = 2
EVERY = 4  # a periodic last.ckpt at step 4: the signals come mid-epoch
# what a CPU-only SLURM job asks for here (the README's values, smaller: this node has 2 CPUs)
SLURM_CPU = {
    "hydra.launcher.gpus_per_node": "null",
    "hydra.launcher.cpus_per_task": "1",
    "hydra.launcher.mem_gb": "2",
    "hydra.launcher.timeout_min": "20",
    "trainer.accelerator": "cpu",
}

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A one-node cluster for this module; yields the environment its clients need."""
    folder = tmp_path_factory.mktemp("slurm")
    up = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "up", str(folder)], capture_output=True, text=True, timeout=900
    )
    if up.returncode == 3:
        pytest.skip(up.stderr.strip())
    assert up.returncode == 0, f"the SLURM cluster did not start:\n{up.stderr}"
    env = {"SLURM_CONF": str(folder / "slurm.conf"), "PATH": f"{folder / 'bin'}:{os.environ['PATH']}"}
    try:
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "down", str(folder)], timeout=120, check=False)


def _slurm(env: dict[str, str], *command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout


def _start_sweep(overrides: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.Popen:
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


def _output(proc: subprocess.Popen) -> str:
    return Path(proc.output_path).read_text()  # type: ignore[attr-defined]


def _wait(what: str, done: Callable[[], Any], sweep_dir: Path, env: dict[str, str], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(0.2)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(sweep_dir.glob("*/train.log")))
    queue = _slurm(env, "squeue", "-t", "all")
    pytest.fail(f"not within {timeout} s: {what}\n{queue}\n{logs}")


def _array_task(sweep_dir: Path, index: int) -> str:
    """The SLURM id of the sweep's job `index` (submitit submits a sweep as one job array)."""
    found = [p.name for p in (sweep_dir / ".submitit").glob(f"*_{index}") if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the sweep ran over {timeout} s:\n{_output(proc)[-6000:]}")
    return _output(proc)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b  # modules' extra state (plain data)


def _same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["global_step"] == b["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k, v in a["state_dict"].items() if not _equal(v, b["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ------------------------------------------------------------------------ preemption and time limit
@pytest.fixture(scope="module")
def stopped_sweep(
    slurm: dict[str, str], fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Three jobs that train alike: 0 is preempted, 1 gets the time-limit warning, 2 runs through."""
    tmp_path = tmp_path_factory.mktemp("stopped_sweep")
    sweep_dir = tmp_path / "sweep"
    overrides = [
        *tiny_overrides(fashiondet_small_root, tmp_path / "logs"),
        f"trainer.max_epochs={EPOCHS}",
        "test=false",
        f"callbacks.last_checkpoint.every_n_train_steps={EVERY}",
        "launcher=submitit_slurm",
        *(f"{k}={v}" for k, v in SLURM_CPU.items()),
        f"hydra.sweep.dir={sweep_dir}",
        "+slurm_case=preempted,time_limit,uninterrupted",  # a label: the three train alike
    ]
    proc = _start_sweep(overrides, tmp_path, slurm)

    def periodic_checkpoint(index: int) -> Callable[[], bool]:
        return lambda: (sweep_dir / str(index) / "checkpoints" / "last.ckpt").is_file()

    _wait("job 0's step-4 checkpoint", periodic_checkpoint(0), sweep_dir, slurm, timeout=240)
    _slurm(slurm, "scontrol", "requeue", _array_task(sweep_dir, 0))  # preemption: SIGTERM, back to the queue
    _wait("job 1's step-4 checkpoint", periodic_checkpoint(1), sweep_dir, slurm, timeout=240)
    # the time-limit warning, sent now rather than by slurmctld's 30-second timer
    _slurm(slurm, "scancel", "--signal=USR2", _array_task(sweep_dir, 1))
    output = _finish(proc, timeout=400)
    assert proc.returncode == 0, output[-6000:]
    jobs = [sweep_dir / str(i) for i in range(3)]
    return {
        "jobs": jobs,
        "logs": [(job / "train.log").read_text() for job in jobs],
        "last": [load(job / "checkpoints" / "last.ckpt") for job in jobs],
    }


def _saved_step(log: str, run_dir: Path, signal_name: str) -> int:
    match = re.search(
        rf"{signal_name}: saved {re.escape(str(run_dir))}/checkpoints/last.ckpt at global step (\d+)", log
    )
    assert match, log[-4000:]
    step = int(match.group(1))
    assert EVERY <= step < EPOCHS * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH != 0, "not mid-epoch"
    return step


@pytest.mark.timeout(900)
def test_preempted_slurm_job_continues_and_ends_with_the_uninterrupted_weights(
    stopped_sweep: dict[str, Any],
) -> None:
    log = stopped_sweep["logs"][0]
    run_dir = stopped_sweep["jobs"][0]
    _saved_step(log, run_dir, "SIGTERM")
    assert "(a requeued job): resuming from it" in log  # started again by SLURM, in its own folder
    assert (run_dir / "metrics.json").is_file()
    _same_weights(stopped_sweep["last"][0], stopped_sweep["last"][2])


@pytest.mark.timeout(900)
def test_time_limit_warning_checkpoints_then_requeues_and_ends_with_the_uninterrupted_weights(
    stopped_sweep: dict[str, Any],
) -> None:
    log = stopped_sweep["logs"][1]
    run_dir = stopped_sweep["jobs"][1]
    warned = log.index("SIGUSR2: the SLURM time limit is near")
    step = _saved_step(log[warned:], run_dir, "SIGTERM")
    saved = log.index(f"at global step {step}", warned)
    requeued = log.index("Requeued SLURM job", warned)
    resumed = log.index("(a requeued job): resuming from it", warned)
    assert warned < saved < requeued < resumed  # checkpoint first, then the requeue, then the restart
    _same_weights(stopped_sweep["last"][1], stopped_sweep["last"][2])
    # the job that ran through was never stopped
    assert "saved" not in stopped_sweep["logs"][2] and "requeued" not in stopped_sweep["logs"][2]


# ------------------------------------------------------------------------ the README's sweep
def _readme_sweep() -> list[str]:
    """The overrides of the README's two-job SLURM sweep (the command under `## SLURM`)."""
    text = (helpers.REPO / "README.md").read_text()
    section = text.split("\n## SLURM", 1)[1].split("\n## ", 1)[0]
    command = next(
        block
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        if "launcher=submitit_slurm" in block
    )
    words = shlex.split(command.replace("\\\n", " ").splitlines()[0])
    assert words[:3] == ["python", "scripts/train.py", "-m"], words
    return words[3:]


@pytest.mark.timeout(900)
def test_readme_sweep_runs_on_slurm_and_resumes_after_a_job_is_cancelled(
    slurm: dict[str, str], fashiondet_small_root: Path, tmp_path: Path
) -> None:
    readme = dict(word.split("=", 1) for word in _readme_sweep())
    assert readme["launcher"] == "submitit_slurm" and "hydra.sweep.dir" in readme
    swept = [k for k, v in readme.items() if "," in v]
    assert len(swept) == 1 and len(readme[swept[0]].split(",")) == 2, "a two-job sweep"
    sweep_dir = tmp_path / "sweep"
    readme.update({k: v for k, v in SLURM_CPU.items() if k in readme}, **{"hydra.sweep.dir": str(sweep_dir)})
    overrides = [
        *tiny_overrides(fashiondet_small_root, tmp_path / "logs"),
        f"trainer.max_epochs={EPOCHS}",
        "test=false",
        f"callbacks.last_checkpoint.every_n_train_steps={EVERY}",
        "logger=default",  # W&B (offline here) and CSV, as users run it
        *(f"{k}={v}" for k, v in readme.items()),
    ]
    first = _start_sweep(overrides, tmp_path, slurm)
    last_ckpt = sweep_dir / "0" / "checkpoints" / "last.ckpt"
    _wait("job 0's step-4 checkpoint", last_ckpt.is_file, sweep_dir, slurm, timeout=240)
    task = _array_task(sweep_dir, 0)
    _slurm(slurm, "scancel", task)  # SIGTERM: job 0 saves and ends; it is not requeued

    def both_ended() -> bool:
        states = _slurm(slurm, "squeue", "-h", "-t", "all", "-o", "%i %T").split()
        return (sweep_dir / "1" / "metrics.json").is_file() and f"{task} CANCELLED" in " ".join(states)

    _wait("job 0 cancelled and job 1 finished", both_ended, sweep_dir, slurm, timeout=300)
    os.killpg(first.pid, signal.SIGKILL)  # and the sweep command dies with it
    first.wait()
    stopped = load(last_ckpt)["global_step"]
    assert 0 < stopped < EPOCHS * STEPS_PER_EPOCH and not (sweep_dir / "0" / "metrics.json").exists()
    finished = (sweep_dir / "1" / "metrics.json").stat().st_mtime_ns

    again = _start_sweep(overrides, tmp_path, slurm)
    output = _finish(again, timeout=400)
    assert again.returncode == 0, output[-6000:]
    assert "Job 1 finished before (" in output and "Job 0 was interrupted" in output
    assert (sweep_dir / "1" / "metrics.json").stat().st_mtime_ns == finished  # not run twice
    assert "(a requeued job): resuming from it" in (sweep_dir / "0" / "train.log").read_text()
    assert load(last_ckpt)["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == ["0", "1"]

    # as on one machine: each job's run directory with its metrics and its W&B run in the sweep's group;
    # the continued job continues its W&B run (SLURM's SIGTERM also ends W&B's service, so the offline
    # file of the cancelled start may hold nothing)
    assert not (sweep_dir / "0" / "error.txt").exists()  # cancelled is not failed
    for job in ("0", "1"):
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert metrics["run_dir"] == str(sweep_dir / job)
        wandb_id = json.loads((sweep_dir / job / "run.json").read_text())["wandb_id"]
        runs = helpers.wandb_offline_runs(sweep_dir / job)
        infos = [helpers.wandb_run_info(helpers.wandb_run_file(r)) for r in runs]
        assert len(runs) == (2 if job == "0" else 1)
        assert infos[-1]["id"] == wandb_id and infos[-1]["group"] == sweep_dir.name
        assert {info["id"] for info in infos} <= {wandb_id, None}
