"""The README's SLURM sweep for real, on a one-node cluster (the `slurm` fixture, conftest.py):
`launcher=submitit_slurm` on the CPU, one run directory, metrics and W&B run per job in the sweep's
group; after one job is cancelled mid-run and the sweep command dies, the same command again
continues that job from its checkpoint and runs nothing twice. (Preemption and the time limit:
tests/test_reliability_runs.py.) The cluster needs root or SLURM installed; elsewhere this skips.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
from pathlib import Path

import helpers
import pytest
from slurm_support import SLURM_CPU, array_task, finish, slurm_command, start_sweep, wait_until
from test_reliability_support import load, tiny_overrides

STEPS = 12  # two epochs of 6 steps (48 canvases of the small preset in batches of 8)
EVERY = 4  # a periodic last.ckpt at step 4: the job is cancelled mid-epoch


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


@pytest.mark.slow
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
        "trainer.max_epochs=2",
        "test=false",
        f"callbacks.last_checkpoint.every_n_train_steps={EVERY}",
        "logger=default",  # W&B (offline here) and CSV, as users run it
        *(f"{k}={v}" for k, v in readme.items()),
    ]
    first = start_sweep(overrides, tmp_path, slurm)
    last_ckpt = sweep_dir / "0" / "checkpoints" / "last.ckpt"
    wait_until("job 0's step-4 checkpoint", last_ckpt.is_file, sweep_dir, slurm, timeout=240)
    task = array_task(sweep_dir, 0)
    slurm_command(slurm, "scancel", task)  # SIGTERM: job 0 saves and ends; it is not requeued

    def both_ended() -> bool:
        states = slurm_command(slurm, "squeue", "-h", "-t", "all", "-o", "%i %T").split()
        return (sweep_dir / "1" / "metrics.json").is_file() and f"{task} CANCELLED" in " ".join(states)

    wait_until("job 0 cancelled and job 1 finished", both_ended, sweep_dir, slurm, timeout=300)
    os.killpg(first.pid, signal.SIGKILL)  # and the sweep command dies with it
    first.wait()
    stopped = load(last_ckpt)["global_step"]
    assert 0 < stopped < STEPS and not (sweep_dir / "0" / "metrics.json").exists()
    finished = (sweep_dir / "1" / "metrics.json").stat().st_mtime_ns

    again = start_sweep(overrides, tmp_path, slurm)
    output = finish(again, timeout=400)
    assert again.returncode == 0, output[-6000:]
    assert "Job 1 finished before (" in output and "Job 0 was interrupted" in output
    assert (sweep_dir / "1" / "metrics.json").stat().st_mtime_ns == finished  # not run twice
    assert "(a requeued job): resuming from it" in (sweep_dir / "0" / "train.log").read_text()
    assert load(last_ckpt)["global_step"] == STEPS
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
