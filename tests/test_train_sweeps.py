"""Hydra multiruns of scripts/train.py: a sweep over learning rates that outlives a failing job and,
run again in its folder, runs only its new job; an
Optuna study kept in its storage file, and a sweep of DDP jobs; one W&B run per job, grouped."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from helpers import (
    read_metrics,
    run_script,
    tiny,
    wandb_offline_runs,
    wandb_records,
    wandb_run_file,
    wandb_run_info,
)
from omegaconf import OmegaConf

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "test=false"]


def _single_sweep_dir(log_dir: Path, task_name: str) -> Path:
    assert sorted(p.name for p in (log_dir / task_name).iterdir()) == ["multiruns"]  # no single runs
    (sweep_dir,) = (log_dir / task_name / "multiruns").iterdir()
    return sweep_dir


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: int(p.name))


def _job_wandb(job_dir: Path) -> dict:
    (offline_run,) = wandb_offline_runs(job_dir)
    path = wandb_run_file(offline_run)
    info = wandb_run_info(path)
    assert info["id"] == json.loads((job_dir / "run.json").read_text())["wandb_id"]
    assert [r.WhichOneof("record_type") for r in wandb_records(path)][-1] == "exit"  # finished
    return info


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_over_learning_rates_goes_on_after_a_failing_job(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "logs"
    common = [*tiny(fashiondet_small_root, log_dir), *SHORT, "task_name=lr_sweep"]
    result = run_script(
        "train",
        [*common, "model.optimizer.lr=0.001,-1,0.002"],  # the second is invalid: AdamW refuses it
        tmp_path,
        timeout=500,
        multirun=True,
    )
    sweep_dir = _single_sweep_dir(log_dir, "lr_sweep")
    jobs = _job_dirs(sweep_dir)
    assert [p.name for p in jobs] == ["0", "1", "2"]
    for job_dir, lr in ((jobs[0], 0.001), (jobs[2], 0.002)):
        assert OmegaConf.load(job_dir / ".hydra" / "config.yaml").model.optimizer.lr == lr
        assert read_metrics(job_dir)["global_step"] == 1
        assert not (job_dir / "error.txt").exists()
    failed = jobs[1]
    assert not (failed / "metrics.json").exists()
    assert "Invalid learning rate: -1" in (failed / "error.txt").read_text()
    assert "Job 1 failed: ValueError: Invalid learning rate: -1" in result.stdout + result.stderr

    # each job its own finished W&B run (the failed one too), all in the group named after the sweep
    infos = [_job_wandb(job_dir) for job_dir in jobs]
    assert len({info["id"] for info in infos}) == 3
    assert {info["group"] for info in infos} == {sweep_dir.name}
    assert infos[0]["config"]["model"]["optimizer"]["lr"] == 0.001

    # The sweep again in its folder, its list reordered and one value added: the finished jobs are
    # found by their overrides (not their numbers) and not run again; the new one gets folder 3.
    finished = {job.name: (job / "metrics.json").stat().st_mtime_ns for job in (jobs[0], jobs[2])}
    again = run_script(
        "train",
        [*common, "model.optimizer.lr=0.002,0.003,0.001", f"hydra.sweep.dir={sweep_dir}"],
        tmp_path,
        timeout=300,
        multirun=True,
    )
    output = again.stdout + again.stderr
    assert "Job 2 finished before (" in output and "Job 0 finished before (" in output
    assert "Launching 1 jobs locally" in output
    assert {name: (sweep_dir / name / "metrics.json").stat().st_mtime_ns for name in finished} == finished
    assert [p.name for p in _job_dirs(sweep_dir)] == ["0", "1", "2", "3"]
    assert OmegaConf.load(sweep_dir / "3" / ".hydra" / "config.yaml").model.optimizer.lr == 0.003
    assert read_metrics(sweep_dir / "3")["global_step"] == 1
    assert not list(sweep_dir.glob("*/running.json"))  # ended jobs, failed or not, leave no owner

    # a job that is still running (here: owned by this live process) is not started a second time
    (sweep_dir / "4" / ".hydra").mkdir(parents=True)
    overrides = OmegaConf.load(sweep_dir / "3" / ".hydra" / "overrides.yaml")  # as Hydra writes them
    overrides = [o.replace("model.optimizer.lr=0.003", "model.optimizer.lr=0.005") for o in overrides]
    (sweep_dir / "4" / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": None}
    (sweep_dir / "4" / "running.json").write_text(json.dumps(owner))
    refused = run_script(
        "train",
        [*common, "model.optimizer.lr=0.005", f"hydra.sweep.dir={sweep_dir}"],
        tmp_path,
        timeout=300,
        multirun=True,
        check=False,
    )
    assert refused.returncode != 0
    assert "Job 4 (" in refused.stderr and f"is still running: process {os.getpid()} on" in refused.stderr
    assert not (sweep_dir / "4" / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_optuna_sweep_keeps_its_study_in_a_storage_file(fashiondet_small_root: Path, tmp_path: Path) -> None:
    import optuna

    # no paths.log_dir, as in the README: the study finds its place under the launch directory's logs/
    log_dir = tmp_path / "logs"
    overrides = [
        *(s for s in tiny(fashiondet_small_root, log_dir) if not s.startswith("paths.log_dir=")),
        *SHORT,
        "hparams_search=fashiondet_optuna",
        "logger=csv",
    ]
    result = run_script(
        "train", [*overrides, "hydra.sweeper.n_trials=2"], tmp_path, timeout=500, multirun=True
    )
    storage = log_dir / "optuna" / "fashiondet.db"
    assert storage.is_file()
    study = optuna.load_study(study_name="fashiondet", storage=f"sqlite:///{storage}")
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    sweep_dir = _single_sweep_dir(log_dir, "fashiondet_optuna")
    for trial, job_dir in zip(trials, _job_dirs(sweep_dir), strict=True):
        assert 0.0003 <= trial.params["model.optimizer.lr"] <= 0.005
        job_config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        assert job_config.model.optimizer.lr == trial.params["model.optimizer.lr"]
        assert trial.value == read_metrics(job_dir)["val/mAP"]  # what train() returned
    assert (sweep_dir / "optimization_results.yaml").is_file()
    assert "Best value" in result.stdout + result.stderr

    # the same command again continues the study instead of starting a new one
    run_script("train", [*overrides, "hydra.sweeper.n_trials=1"], tmp_path, timeout=300, multirun=True)
    study = optuna.load_study(study_name="fashiondet", storage=f"sqlite:///{storage}")
    assert len(study.trials) == 3 and [t.number for t in study.trials] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_of_ddp_jobs_goes_on_after_a_failing_job(fashiondet_small_root: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    result = run_script(
        "train",
        [
            *tiny(fashiondet_small_root, log_dir),
            *SHORT,
            "task_name=ddp_sweep",
            "trainer=ddp_cpu",
            "model.optimizer.lr=-1,0.002",  # the first fails on both ranks
        ],
        tmp_path,
        timeout=550,
        multirun=True,
    )
    output = result.stdout + result.stderr
    # rank 1 of each job ran that job only: no second sweep, no run directories of its own
    assert output.count("Launching 2 jobs locally") == 1
    assert output.count("MEMBER: 2/2") == 2  # both jobs, the one after the failure too, had two ranks
    sweep_dir = _single_sweep_dir(log_dir, "ddp_sweep")
    failed, good = _job_dirs(sweep_dir)
    assert [failed.name, good.name] == ["0", "1"]
    assert read_metrics(good)["run_dir"] == str(good)
    assert (good / "train_ddp_process_1.log").read_text()
    assert (good / "checkpoints" / "last.ckpt").is_file()
    assert OmegaConf.load(good / ".hydra" / "config.yaml").model.optimizer.lr == 0.002
    # the failing job: reported by both ranks, and rank 1 ended without taking the sweep down
    assert "Invalid learning rate: -1" in (failed / "error.txt").read_text()
    assert "Invalid learning rate: -1" in (failed / "error_rank1.txt").read_text()
    infos = [_job_wandb(job_dir) for job_dir in (failed, good)]  # one W&B run per job, finished
    assert len({info["id"] for info in infos}) == 2
    assert {info["group"] for info in infos} == {sweep_dir.name}
