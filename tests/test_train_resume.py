"""Resume: a run stopped after its first epoch and continued with `ckpt_path=<its run directory>`
(the README's second resume command; `ckpt_path=last`: test_reliability_runs.py's kill -9 test) ends
with the counters, weights and optimiser state of an uninterrupted run, and keeps its W&B run id."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    QUIET,
    csv_rows,
    isolated_environ,
    load_checkpoint,
    read_metrics,
    reference_overrides,
    reference_run,
    train_in_process,
    wandb_offline_runs,
    wandb_run_file,
    wandb_run_info,
)


def _assert_same(a: Any, b: Any, where: str) -> None:
    """Exact equality of nested checkpoint data (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stopped_and_resumed_run_equals_uninterrupted_run(
    fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reference = reference_run(fashiondet_small_root, tmp_path_factory)
    tmp_path = tmp_path_factory.mktemp("resume")
    log_dir = tmp_path / "logs"
    same_run = [*reference_overrides(fashiondet_small_root, log_dir), "test=false"]
    # the same config as the reference, stopped at the end of epoch 0 (after its checkpoints), then
    # resumed; in this process, through scripts/train.py's job wrapper (the reference is a subprocess)
    with isolated_environ(tmp_path):
        train_in_process(
            [*same_run, "+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=0"]
        )
    (stopped,) = sorted((log_dir / "reference" / "runs").iterdir())
    assert load_checkpoint(stopped / "checkpoints" / "last.ckpt")["global_step"] == 2
    with isolated_environ(tmp_path):
        train_in_process([*same_run, f"ckpt_path={stopped}"])  # a run directory: its last.ckpt
    resumed = next(p for p in (log_dir / "reference" / "runs").iterdir() if p != stopped)

    # counters continue: epoch 1 is steps 3 and 4, not a second epoch 0
    metrics = read_metrics(resumed)
    assert (metrics["epochs"], metrics["global_step"]) == (2, 4)
    logged = [(row["epoch"], row["step"]) for row in csv_rows(resumed) if row.get("val/mAP")]
    assert logged == [("1", "3")]

    expected = load_checkpoint(reference / "checkpoints" / "last.ckpt")
    got = load_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert (got["epoch"], got["global_step"]) == (expected["epoch"], expected["global_step"]) == (1, 4)
    tensors = {k: v for k, v in expected["state_dict"].items() if isinstance(v, torch.Tensor)}
    assert len(tensors) > 100
    different = [k for k, v in tensors.items() if not torch.equal(v, got["state_dict"][k])]
    assert different == [], f"{len(different)} of {len(tensors)} tensors differ, e.g. {different[:3]}"
    _assert_same(expected["optimizer_states"], got["optimizer_states"], "optimizer_states")
    _assert_same(expected["lr_schedulers"], got["lr_schedulers"], "lr_schedulers")
    _assert_same(expected["callbacks"]["RngStateCallback"], got["callbacks"]["RngStateCallback"], "rng")

    # the resumed run continues the stopped run's W&B run: same id, no new one
    (stopped_wandb,) = wandb_offline_runs(stopped)
    (resumed_wandb,) = wandb_offline_runs(resumed)
    stopped_id = wandb_run_info(wandb_run_file(stopped_wandb))["id"]
    assert wandb_run_info(wandb_run_file(resumed_wandb))["id"] == stopped_id
    assert resumed_wandb.name.endswith(f"-{stopped_id}")
    assert (resumed / "run.json").read_text() == (stopped / "run.json").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_checkpoint_from_a_gpu_machine_resumes_on_the_cpu(
    fashiondet_small_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A checkpoint whose RNG state lists two CUDA devices (as `torch.cuda.get_rng_state_all` saves
    them: 16 bytes each, seed and offset) resumes where there are fewer, here none; what cannot be
    restored is said."""
    reference = reference_run(fashiondet_small_root, tmp_path_factory)
    tmp_path = tmp_path_factory.mktemp("resume_gpu_checkpoint")
    checkpoint = load_checkpoint(reference / "checkpoints" / "last.ckpt")
    rng = checkpoint["callbacks"]["RngStateCallback"]
    assert "cuda" not in rng  # made on the CPU
    rng["cuda"] = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    gpu_checkpoint = tmp_path / "gpu.ckpt"
    torch.save(checkpoint, gpu_checkpoint)

    log_dir = tmp_path / "logs"
    overrides = [*reference_overrides(fashiondet_small_root, log_dir), *QUIET, "test=false"]
    with isolated_environ(tmp_path), caplog.at_level(logging.INFO):
        run_dir, _ = train_in_process([*overrides, f"ckpt_path={gpu_checkpoint}", "trainer.max_epochs=3"])
    assert read_metrics(run_dir)["global_step"] == 6  # epoch 2 trained on from step 4
    assert "random generator states of 2 CUDA devices, this machine has 0: restored 0" in caplog.text
    assert "devices [0, 1] are not restored" in caplog.text
