"""`trainer=ddp_cpu`: two processes (gloo) that write into one run directory and one W&B run, with
the same BatchNorm statistics on both ranks, synchronised BatchNorm that keeps the network; the
launch of ranks > 0 pinned to their Hydra job; nothing of a job's process group left for the next."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from batch_norm_probe import norm_layer_types, probe_input
from helpers import (
    CONF_DIR,
    DDP_RUN,
    batch_norm_probe,
    hydra_job,
    isolated_environ,
    load_checkpoint,
    read_metrics,
    run_script,
    tiny,
    wandb_offline_runs,
)
from omegaconf import read_write

from detection.training.callbacks.detections_json import DETECTIONS_FILE, GROUND_TRUTH_FILE


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_cpu_training_shares_one_run_directory(
    ddp_cpu_run: dict[str, str], fashiondet_small_root: Path, tmp_path: Path
) -> None:
    run_dir, log_dir = Path(ddp_cpu_run["run_dir"]), Path(ddp_cpu_run["log_dir"])
    assert sorted(p.name for p in (log_dir / "ddp").iterdir()) == ["runs"]
    output = ddp_cpu_run["output"]
    assert "MEMBER: 2/2" in output  # rank 1 joined the process group
    assert output.count("CONFIG") == 1  # the config tree is printed by rank 0 only
    assert (run_dir / "train_ddp_process_1.log").read_text()  # rank 1's Hydra log, in the same directory
    metrics = read_metrics(run_dir)
    assert metrics["global_step"] == 2 and "test/mAP" in metrics
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 2 and "current_model_state" in checkpoint
    assert Path(metrics["best_checkpoint"]).parent == run_dir / "checkpoints"
    # the test detections of both ranks, gathered to rank 0: one batch of 4 canvases each, each once
    ground_truth = json.loads((run_dir / GROUND_TRUTH_FILE).read_text())
    image_ids = [image["id"] for image in ground_truth["images"]]
    assert len(image_ids) == len(set(image_ids)) == 2 * 4
    detections = json.loads((run_dir / DETECTIONS_FILE).read_text())
    assert {d["image_id"] for d in detections} <= set(image_ids)
    # one W&B run, whose id run.json keeps for a resume
    (offline_run,) = wandb_offline_runs(run_dir)
    wandb_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    assert offline_run.name.endswith("-" + wandb_id)
    # both ranks validate with the same BatchNorm statistics (the EMA's, averaged over the ranks), and
    # the checkpoint holds them
    probe = Path(ddp_cpu_run["probe"])
    ranks = [torch.load(probe / f"rank{r}_val_step2.pt", weights_only=True) for r in (0, 1)]
    assert len(ranks[0]) > 50 and ranks[0].keys() == ranks[1].keys()
    assert any(not torch.equal(v, torch.ones_like(v)) for k, v in ranks[0].items() if k.endswith("var"))
    different = [k for k, v in ranks[0].items() if not torch.equal(v, ranks[1][k])]
    assert different == [], f"{len(different)} of {len(ranks[0])} statistics differ between ranks"
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in ranks[0].items())

    # resume under DDP: both ranks find the same last.ckpt, counters go on, the W&B run continues;
    # now with synchronised BatchNorm
    run_script(
        "train",
        [
            *tiny(fashiondet_small_root, log_dir),
            *DDP_RUN,
            *batch_norm_probe(tmp_path / "probe_sync"),
            "trainer=ddp_cpu",
            "trainer.sync_batchnorm=true",
            "trainer.max_epochs=2",
            "task_name=ddp",
            "ckpt_path=last",
        ],
        tmp_path,
        timeout=500,
    )
    (resumed_dir,) = [d for d in (log_dir / "ddp" / "runs").iterdir() if d != run_dir]
    resumed = read_metrics(resumed_dir)
    assert resumed["global_step"] == 4 and resumed["epochs"] == 2
    averaged = load_checkpoint(resumed_dir / "checkpoints" / "last.ckpt")["averaging_state"]
    assert int(averaged["n_averaged"]) == 4  # the average went on from the stopped run's two updates
    assert json.loads((resumed_dir / "run.json").read_text())["wandb_id"] == wandb_id

    # synchronised BatchNorm during fit: every layer converted, timm's fused activations kept (the
    # eval outputs are the unconverted backbone's), the original layers back after fit for the test
    from detection.training import DetectionTask

    plain = DetectionTask.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    ).backbone.eval()
    for rank in (0, 1):
        started = torch.load(tmp_path / "probe_sync" / f"rank{rank}_train_start.pt", weights_only=True)
        assert (
            started["layers"].count("SyncBatchNormAct")
            == norm_layer_types(plain).count("BatchNormAct2d")
            > 40
        )
        assert set(started["layers"]) <= {"SyncBatchNorm", "SyncBatchNormAct"}
        plain.load_state_dict(started["state"])
        with torch.no_grad():
            expected = list(plain(probe_input()).values())
        for got, want in zip(started["outputs"], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        tested = torch.load(tmp_path / "probe_sync" / f"rank{rank}_test_start.pt", weights_only=True)
        assert tested["layers"] == norm_layer_types(plain)
    ranks = [torch.load(tmp_path / "probe_sync" / f"rank{r}_val_step4.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.allclose(v, ranks[1][k], rtol=0, atol=1e-6) for k, v in ranks[0].items())


def test_ranks_above_zero_are_pinned_to_their_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What Lightning starts for rank 1 inside a multirun (here an Optuna one, whose config asks for
    MULTIRUN): this job's overrides in this job's directory, as a single run, never the sweep again."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd

    from detection.runtime.launch import MULTIRUN_JOB_ENV, job_processes

    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "hparams_search=fashiondet_optuna", "seed=1,2"])
    job_overrides = ["hparams_search=fashiondet_optuna", f"paths.log_dir={tmp_path}", "seed=2"]
    with isolated_environ(tmp_path), hydra_job(job_overrides):
        with read_write(HydraConfig.get()):
            HydraConfig.get().mode = RunMode.MULTIRUN
            HydraConfig.get().overrides.task = job_overrides
        output_dir = HydraConfig.get().runtime.output_dir
        with job_processes():
            command, _ = _hydra_subprocess_cmd(local_rank=1)
            assert os.environ[MULTIRUN_JOB_ENV] == output_dir
        assert sys.argv == ["train.py", "-m", "hparams_search=fashiondet_optuna", "seed=1,2"]
        assert MULTIRUN_JOB_ENV not in os.environ
    # the interpreter part of the command depends on how this process was started (python -m pytest)
    arguments = command[command.index(job_overrides[0]) :]
    assert arguments[:3] == job_overrides and "-m" not in arguments and "seed=1,2" not in arguments
    assert f'hydra.run.dir="{output_dir}"' in arguments and "hydra.mode=RUN" in arguments
    child_overrides = [o.replace('"', "") for o in arguments]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        child = compose("train", child_overrides, return_hydra_config=True)
    assert child.hydra.mode == RunMode.RUN and child.hydra.run.dir == output_dir


def test_job_processes_ends_the_process_group_and_launcher_environment(tmp_path: Path) -> None:
    import torch.distributed as dist

    from detection.runtime.launch import job_processes

    with isolated_environ(tmp_path):
        os.environ.pop("LOCAL_RANK", None)
        with job_processes():
            # what Lightning's launcher leaves behind in the launching process
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29555", LOCAL_RANK="0", WORLD_SIZE="2")
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
        assert not dist.is_initialized()
        assert "LOCAL_RANK" not in os.environ and "MASTER_PORT" not in os.environ
