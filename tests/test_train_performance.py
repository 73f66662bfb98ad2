"""The GPU defaults that CPU runs must not pay for: loader workers and pinned memory chosen per run,
cuDNN autotuning and TF32 in every GPU trainer config, debug presets on the run's accelerator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import CONF_DIR
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from detection.data import DetectionDataModule
from detection.data.loading import available_cpus, loader_options
from detection.runtime.performance import configure_performance, runs_on_cuda
from detection.training import DetectionTask


def test_auto_loader_options_keep_cpu_runs_cheap(fashiondet_small_root: Path) -> None:
    data = DetectionDataModule(
        root=fashiondet_small_root,
        batch_size=4,
        num_workers="auto",
        pin_memory="auto",
        persistent_workers="auto",
        print_summary=False,
    )
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    data.trainer = trainer
    loader = data.train_dataloader()
    assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (0, False, False)
    # without a trainer (tools, notebooks): no workers either; a number is taken as given
    assert loader_options("auto", "auto", "auto")["num_workers"] == 0
    expected = {"num_workers": 3, "pin_memory": False, "persistent_workers": True}
    assert loader_options(3, False, True) == expected
    assert available_cpus() >= 1


@contextlib.contextmanager
def _composed(overrides: list[str]) -> Iterator[DictConfig]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("trainer", ["gpu", "ddp", "multinode"])
def test_gpu_trainer_configs_share_one_speed_policy(trainer: str) -> None:
    with _composed([f"trainer={trainer}"]) as cfg:
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.benchmark is True
        assert cfg.extras.float32_matmul_precision == "high"
        assert cfg.data.num_workers == "auto" and cfg.data.pin_memory == "auto"
        assert runs_on_cuda(cfg.trainer)


@pytest.mark.parametrize("preset", ["fdr", "limit", "overfit", "profiler"])
def test_debug_presets_keep_the_chosen_accelerator(preset: str) -> None:
    with _composed(["trainer=gpu", f"debug={preset}"]) as cfg:
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1
    with _composed([f"debug={preset}"]) as cfg:
        assert cfg.trainer.accelerator == "auto"  # a CPU machine: the CPU, without loader workers
        assert cfg.data.num_workers in (0, "auto")


def test_matmul_precision_is_set_on_cuda_runs_only() -> None:
    before = torch.get_float32_matmul_precision()
    try:
        cpu = {"trainer": {"accelerator": "cpu"}, "extras": {"float32_matmul_precision": "medium"}}
        assert configure_performance(cpu) is None
        assert torch.get_float32_matmul_precision() == before
        gpu = {"trainer": {"accelerator": "gpu"}, "extras": {"float32_matmul_precision": "medium"}}
        assert configure_performance(gpu) == "medium"
        assert torch.get_float32_matmul_precision() == "medium"
        with pytest.raises(ValueError, match="extras.float32_matmul_precision='tf32'"):
            configure_performance({"trainer": gpu["trainer"], "extras": {"float32_matmul_precision": "tf32"}})
    finally:
        torch.set_float32_matmul_precision(before)


def _tiny_task(**options: object) -> DetectionTask:
    spec = {
        "version": 1,
        "head": "fcos",
        "num_classes": 10,
        "backbone": {"name": "efficientnet_lite0", "weights": None, "norm": "bn", "freeze_at": 1},
        "neck": {"out_channels": 16},
        "min_size": 64,
        "max_size": 64,
        "num_convs": 1,
    }
    return DetectionTask(detector=spec, optimizer={"name": "SGD", "lr": 0.01}, **options)


def test_channels_last_task_puts_every_convolution_in_nhwc() -> None:
    torch.manual_seed(0)
    plain, nhwc = _tiny_task(), _tiny_task(channels_last=True)
    nhwc.load_state_dict(plain.state_dict())
    weights = [p for p in nhwc.parameters() if p.dim() == 4]
    assert len(weights) > 20 and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    head = [p for name, p in nhwc.named_parameters() if p.dim() == 4 and ".neck." in f".{name}"]
    assert head, "the FPN's convolutions must be converted too"
    plain.eval(), nhwc.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = plain.detector.backbone(x), nhwc.detector.backbone(x)  # backbone + FPN
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-4), name
        head_a, head_b = plain.detector.head(list(a.values())), nhwc.detector.head(list(b.values()))
        for name in head_a:
            assert torch.allclose(head_a[name], head_b[name], atol=1e-4), name


def test_compile_leaves_the_state_dict_keys_alone() -> None:
    """`compile` compiles in place (lazily: nothing is compiled before a forward): no ``_orig_mod.``
    in the keys, so a compiled run's checkpoint loads into an uncompiled task. Compiling for real
    takes minutes on two CPU cores; tests/test_gpu.py trains, saves and reloads a compiled task."""
    torch.manual_seed(0)
    compiled, plain = _tiny_task(compile=True), _tiny_task()
    compiled.configure_model()
    compiled.configure_model()  # fit, then test: once
    assert getattr(compiled.detector.backbone, "_compiled_call_impl", None) is not None
    assert getattr(plain.detector.backbone, "_compiled_call_impl", None) is None
    state = compiled.state_dict()
    assert not [k for k in state if "_orig_mod" in k] and set(state) == set(plain.state_dict())
    plain.load_state_dict(state)  # strict


def test_throughput_tool_runs_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    from detection.research.throughput import main

    argv = ["--device", "cpu", "--precisions", "32-true", "--steps", "1", "--warmup", "0", "--batch", "2"]
    rows = main([*argv, "--size", "64", "--canvas", "64", "--rcnn-size", "96", "--rcnn-batch", "1"])
    assert [r["model"].split()[0] for r in rows] == ["fcos", "faster_rcnn", "light_head_rcnn"]
    assert rows[0]["train img/s"] > 0 and rows[0]["infer img/s"] > 0
    assert "| fcos efficientnet_lite0 64 px | 32-true |" in capsys.readouterr().out
