"""`trainer=ddp_cpu`: two processes (gloo) that write into one run directory and one W&B run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_checkpoint, read_metrics, run_script, single_run_dir, tiny, wandb_offline_runs


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_cpu_training_shares_one_run_directory(fashiondet_small_root: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    result = run_script(
        "train",
        [*tiny(fashiondet_small_root, log_dir), "trainer=ddp_cpu", "trainer.max_epochs=1", "task_name=ddp"],
        tmp_path,
        timeout=500,
    )
    run_dir = single_run_dir(log_dir, "ddp")  # rank 1 made no directory of its own
    assert sorted(p.name for p in (log_dir / "ddp").iterdir()) == ["runs"]
    output = result.stdout + result.stderr
    assert "MEMBER: 2/2" in output  # rank 1 joined the process group
    assert output.count("CONFIG") == 1  # the config tree is printed by rank 0 only
    assert (run_dir / "train_ddp_process_1.log").read_text()  # rank 1's Hydra log, in the same directory
    metrics = read_metrics(run_dir)
    assert metrics["global_step"] == 2 and "test/mAP" in metrics
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2
    assert Path(metrics["best_checkpoint"]).parent == run_dir / "checkpoints"
    # one W&B run, whose id run.json keeps for a resume
    (offline_run,) = wandb_offline_runs(run_dir)
    assert offline_run.name.endswith("-" + json.loads((run_dir / "run.json").read_text())["wandb_id"])
