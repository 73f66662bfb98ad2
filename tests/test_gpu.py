"""On a CUDA GPU: every head learns under 16-mixed and bf16-mixed, DDP over NCCL with SyncBN, a
compiled task's checkpoint, EMA, the loader's GPU defaults and the throughput tool.

Marked `gpu`: skipped, with the reason, where CUDA is missing (tests/conftest.py). One command:
``make test PYTEST_ARGS="-m gpu"``. The mAP floors are far below what the runs reach, so that only
a detector that does not learn fails them; the figures themselves go to docs/results.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import QUIET, read_metrics, run_script, small_data, train_in_process

from detection.data import DetectionDataModule
from detection.models import head_names

pytestmark = pytest.mark.gpu

HEADS = head_names()  # every registered head
STEPS = 300  # the small preset's 48 canvases at batch 8: 50 epochs
MAP_FLOOR = 0.05


def _gpu_run(data_root: Path, log_dir: Path, head: str, precision: str, *extra: str) -> list[str]:
    return [
        f"model={head}",
        *small_data(data_root, log_dir),
        *QUIET,
        "trainer=gpu",
        f"trainer.precision={precision}",
        f"trainer.max_steps={STEPS}",
        "trainer.max_epochs=1000",
        "trainer.check_val_every_n_epoch=25",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "model.scheduler.warmup_steps=50",
        f"task_name=gpu_{head}",
        *extra,
    ]


def _finite_losses_and_map(run_dir: Path) -> dict[str, float]:
    metrics = read_metrics(run_dir)
    losses = {k: v for k, v in metrics.items() if k.startswith("train/loss")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert metrics["global_step"] == STEPS
    return metrics


@pytest.mark.timeout(600)
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("head", HEADS)
def test_every_head_learns_on_one_gpu(
    head: str, precision: str, fashiondet_small_root: Path, tmp_path: Path
) -> None:
    run_dir, _ = train_in_process(_gpu_run(fashiondet_small_root, tmp_path / "logs", head, precision))
    metrics = _finite_losses_and_map(run_dir)
    assert metrics["test/mAP"] > MAP_FLOOR, metrics["test/mAP"]


@pytest.mark.timeout(600)
def test_ema_compile_and_channels_last_train_on_one_gpu(fashiondet_small_root: Path, tmp_path: Path) -> None:
    run_dir, _ = train_in_process(
        _gpu_run(
            fashiondet_small_root,
            tmp_path / "logs",
            "fcos",
            "bf16-mixed",
            "callbacks=[default,ema]",
            "model.task.compile=true",
            "model.task.channels_last=true",
        )
    )
    metrics = _finite_losses_and_map(run_dir)
    assert metrics["test/mAP"] > MAP_FLOOR
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "current_model_state" in checkpoint  # the EMA kept the live weights beside the average
    assert not [k for k in checkpoint["state_dict"] if "_orig_mod" in k]


@pytest.mark.timeout(600)
def test_ddp_over_nccl_with_syncbn_learns(fashiondet_small_root: Path, tmp_path: Path) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("DDP over NCCL needs 2 or more GPUs")
    overrides = _gpu_run(
        fashiondet_small_root,
        tmp_path / "logs",
        "fcos",
        "bf16-mixed",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.sync_batchnorm=true",
        "model.backbone.norm=syncbn",
    )
    run_script("train", overrides, tmp_path, timeout=580)
    (run_dir,) = (tmp_path / "logs" / "gpu_fcos" / "runs").iterdir()
    metrics = _finite_losses_and_map(run_dir)
    assert metrics["test/mAP"] > MAP_FLOOR


@pytest.mark.timeout(600)
def test_compiled_task_checkpoint_loads_without_compiling(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    """Train steps compiled, save, load into an uncompiled task: same keys, same outputs."""
    from detection.training import DetectionTask

    torch.manual_seed(0)
    spec = {
        "version": 1,
        "head": "fcos",
        "num_classes": 10,
        "backbone": {"name": "efficientnet_lite0", "weights": None, "norm": "bn", "freeze_at": 1},
        "neck": {"out_channels": 32},
        "num_convs": 2,
    }
    task = DetectionTask(detector=spec, optimizer={"name": "AdamW", "lr": 1e-3}, compile=True)
    data = DetectionDataModule(root=str(fashiondet_small_root), batch_size=8, print_summary=False)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_steps=20,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=data)
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    loaded = DetectionTask.load_from_checkpoint(path, map_location="cuda", weights_only=True, compile=False)
    task.eval(), loaded.eval()
    x = torch.rand(2, 3, 128, 128, device="cuda")
    with torch.no_grad():
        compiled, plain = task.detector.backbone(x), loaded.detector.backbone(x)
    for name in plain:
        assert torch.allclose(compiled[name], plain[name], atol=1e-3, rtol=1e-3), name


def test_gpu_runs_load_with_workers_and_pinned_memory(fashiondet_small_root: Path) -> None:
    data = DetectionDataModule(
        root=str(fashiondet_small_root),
        num_workers="auto",
        pin_memory="auto",
        persistent_workers="auto",
        print_summary=False,
    )
    data.trainer = L.Trainer(accelerator="gpu", devices=1, logger=False)
    loader = data.train_dataloader()
    assert loader.pin_memory
    from detection.data.loading import available_cpus

    if available_cpus() >= 3:
        assert loader.num_workers >= 1 and loader.persistent_workers


def test_throughput_tool_on_the_gpu() -> None:
    from detection.research.throughput import main

    rows = main(["--steps", "3", "--warmup", "2", "--rcnn-batch", "1"])
    assert len(rows) == 3 + 2 * 3  # FCOS at three precisions, each R-CNN at three
    fcos = [r for r in rows if r["model"].startswith("fcos")]
    assert all(r["train img/s"] > 0 and r["train peak MB"] > 0 and r["infer img/s"] > 0 for r in fcos)
