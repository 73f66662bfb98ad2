"""Training runs in-process through the composed config, as `scripts/train.py` would run them: the
pretraining experiments, every debug preset, two validations per epoch, the config tree, run
directories."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from helpers import (
    CONF_DIR,
    PRETRAIN_SMALL,
    QUIET,
    csv_rows,
    isolated_environ,
    read_metrics,
    single_run_dir,
    tiny,
    train_in_process,
)
from omegaconf import OmegaConf

from detection.models import head_names

# every head's recipe trains a step in tests/test_heads_conformance.py
DETECTION_EXPERIMENTS = [f"fashiondet_{head}" for head in head_names()]


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path) -> Iterator[None]:
    with isolated_environ(tmp_path):
        yield


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []


def test_fast_dev_run_pretraining_experiment(tmp_path: Path) -> None:
    run_dir, value = train_in_process(
        [
            "experiment=pretrain_fashion_mnist",
            f"paths.log_dir={tmp_path / 'logs'}",
            *PRETRAIN_SMALL,
            "trainer.fast_dev_run=true",
            "logger=csv",
        ]
    )
    metrics = read_metrics(run_dir)
    assert metrics["global_step"] == 1
    assert 0.0 <= metrics["val/acc"] <= 1.0 and 0.0 <= metrics["test/acc"] <= 1.0
    assert value == metrics["val/acc"]  # optimized_metric of the experiment


@pytest.mark.slow
def test_fashion_mnist_pretraining_learns_and_loads_into_every_head(
    fashiondet_small_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The experiment's recipe (ResNet-10-T) on 256 items: the classifier fits them and beats chance
    on test items it never saw; its checkpoint fills every head's backbone of the same backbone
    config, no tensor missing, and a detection run given it as the README says
    (`model/backbone=resnet10t model.backbone.weights=<its last.ckpt>`) starts from its weights and
    its normalisation. In float32: bfloat16 convolutions take a reference kernel 4x slower on CPUs
    without AVX-512; the shipped bfloat16 path runs in test_fast_dev_run_pretraining_experiment."""
    import torch

    from detection.data import ClassificationDataModule
    from detection.models import build_detector
    from detection.models.backbones.weights import load_backbone_weights
    from detection.training import ClassificationTask

    small = [o for o in PRETRAIN_SMALL if not o.startswith(("data.train_size", "data.test_size"))]
    run_dir, _ = train_in_process(
        [
            "experiment=pretrain_fashion_mnist",
            f"paths.log_dir={tmp_path / 'logs'}",
            *small,
            "data.train_size=256",
            "data.test_size=256",
            "trainer.max_epochs=8",
            "trainer.precision=32-true",
            "model.scheduler.warmup_steps=10",
            "logger=csv",
        ]
    )
    metrics = read_metrics(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    task = ClassificationTask.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    assert task.hparams.model["backbone"]["name"] == "timm:resnet10t"
    module = ClassificationDataModule(
        data_dir=None, image_size=32, train_size=256, val_size=32, hflip_prob=0.0
    )
    module.setup()
    images, labels = next(iter(torch.utils.data.DataLoader(module.datasets["train"], batch_size=256)))
    with torch.no_grad():
        train_acc = float((task(images).argmax(dim=1) == labels).float().mean())
    assert train_acc >= 0.75, train_acc
    assert metrics["test/acc"] >= 0.5, metrics  # chance is 0.1
    backbone = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "backbone" / "resnet10t.yaml"))
    backbone["weights"] = None
    for head in head_names():
        detector = build_detector(head, 10, backbone)
        report = load_backbone_weights(detector.backbone.body, checkpoint)
        assert report.missing == [] and report.loaded > 0, (head, report.summary())

    with caplog.at_level(logging.INFO, logger="detection"):
        detection_run, _ = train_in_process(
            [
                *tiny(fashiondet_small_root, tmp_path / "logs"),
                *QUIET,
                "model/backbone=resnet10t",
                f"model.backbone.weights={checkpoint}",
                "trainer.max_epochs=1",
                "test=false",
            ]
        )
    loaded = f"Backbone timm:resnet10t: {report.loaded} tensors loaded from {checkpoint} (0 missing"
    assert loaded in caplog.text
    pretrained = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    detected = torch.load(detection_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (mean_of,) = [k for k in pretrained if k.endswith("_extra_state")]
    (detector_mean_of,) = [k for k in detected["state_dict"] if k.endswith("body._extra_state")]
    assert detected["state_dict"][detector_mean_of]["image_mean"] == pretrained[mean_of]["image_mean"]


def test_transfer_study_pretrains_its_lite0_as_measured() -> None:
    """The transfer study's detector is EfficientNet-Lite0: its Fashion-MNIST pretraining composes the
    Lite0 recipe (float32, 6 epochs, no shifted items), not the experiment's ResNet-10-T."""
    from hydra import compose, initialize_config_dir

    from detection.research.transfer import PRETRAININGS
    from detection.runtime import launch  # noqa: F401  (registers the config resolvers)

    overrides = {key: run_overrides for key, _, run_overrides in PRETRAININGS}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        lite0 = compose("train", overrides["fashion_mnist_ckpt"])
        shipped = compose("train", ["experiment=pretrain_fashion_mnist"])
        study = compose("train", ["experiment=transfer_study"])
    assert lite0.model.backbone.name == study.model.backbone.name == "efficientnet_lite0"
    assert (lite0.trainer.precision, lite0.trainer.max_epochs, lite0.data.max_shift) == ("32-true", 6, 0)
    assert lite0.model.optimizer.weight_decay == 5e-5
    assert shipped.model.backbone.name == "timm:resnet10t" and shipped.trainer.precision == "bf16-mixed"


def test_main_job_trains_fcos_at_192_px_and_the_measured_experiments_keep_their_recipes() -> None:
    """The main job: FCOS upsamples the 128 px canvases to 192 px, flips only, three epochs. The
    per-head recipes, the benchmark and the transfer study keep the jitter they were measured with,
    and the two studies that run FCOS keep its 128 px."""
    from hydra import compose, initialize_config_dir

    from detection.runtime import launch  # noqa: F401  (registers the config resolvers)

    def recipe(overrides: list[str]) -> tuple:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides)
        size, jitter = (cfg.model.detector.min_size, cfg.model.detector.max_size), cfg.data.train_transforms
        return size, jitter.scale_range, jitter.photometric_prob, cfg.trainer.max_epochs

    assert recipe([]) == ((192, 192), None, 0.0, 3)
    for head, epochs in (("retinanet", 7), ("faster_rcnn", 5), ("light_head_rcnn", 6)):
        assert recipe([f"experiment=fashiondet_{head}"]) == ((128, 128), [0.75, 1.25], 0.5, epochs), head
    for study, epochs in (("benchmark", 1), ("transfer_study", 2)):
        assert recipe([f"experiment={study}", "model=fcos"]) == ((128, 128), [0.75, 1.25], 0.5, epochs), study


def test_two_validations_per_epoch(fashiondet_small_root: Path, tmp_path: Path) -> None:
    run_dir, _ = train_in_process(
        [
            *tiny(fashiondet_small_root, tmp_path / "logs"),
            "trainer.max_epochs=1",
            "trainer.val_check_interval=0.5",
            "test=false",
            "logger=csv",
        ]
    )
    val_rows = [row for row in csv_rows(run_dir) if row.get("val/mAP")]
    assert [row["epoch"] for row in val_rows] == ["0", "0"]
    assert [int(row["step"]) for row in val_rows] == [0, 1]  # after the first and the second batch
    assert {p.name for p in _checkpoints(run_dir)} >= {"last.ckpt"}


def test_debug_fdr_prints_and_saves_the_config_tree(
    fashiondet_small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_dir = tmp_path / "logs"
    train_in_process(["debug=fdr", *tiny(fashiondet_small_root, log_dir, limits=False)])
    run_dir = single_run_dir(log_dir, "debug")
    assert read_metrics(run_dir)["global_step"] == 1
    printed = capsys.readouterr().out
    saved = (run_dir / "config_tree.log").read_text()
    for text in (printed, saved):
        assert "CONFIG" in text
        for group in ("data", "model", "callbacks", "logger", "trainer", "paths"):
            assert re.search(rf"[├└]── {group}\b", text), group
        assert "fast_dev_run: true" in text and "output_dir: " in text
        assert "${" not in text  # resolved


def test_debug_limit(fashiondet_small_root: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    train_in_process(["debug=limit", *tiny(fashiondet_small_root, log_dir, limits=False), "logger=csv"])
    run_dir = single_run_dir(log_dir, "debug")
    metrics = read_metrics(run_dir)
    assert (metrics["epochs"], metrics["global_step"]) == (2, 6)  # 2 epochs x limit_train_batches=3
    assert len([row for row in csv_rows(run_dir) if row.get("val/mAP")]) == 2
    assert {p.name for p in _checkpoints(run_dir)} == {"last.ckpt", Path(metrics["best_checkpoint"]).name}


def test_debug_overfit_learns_one_batch(fashiondet_small_root: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    train_in_process(
        [
            "debug=overfit",
            *tiny(fashiondet_small_root, log_dir, limits=False),
            "trainer.max_epochs=10",  # the preset's 20 take 10 s more; the loss falls from the start
            "trainer.log_every_n_steps=1",
            "test=false",
            "logger=csv",
        ]
    )
    run_dir = single_run_dir(log_dir, "debug")
    rows = csv_rows(run_dir)
    losses = [float(row["train/loss"]) for row in rows if row.get("train/loss")]
    assert len(losses) == 10  # overfit_batches=1: one step per epoch
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0]
    assert [row["epoch"] for row in rows if row.get("val/mAP")] == ["4", "9"]  # check_val_every_n_epoch=5


def test_debug_profiler_writes_its_report(fashiondet_small_root: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    train_in_process(
        [
            "debug=profiler",
            *tiny(fashiondet_small_root, log_dir, limits=False),
            "trainer.limit_train_batches=2",
            "logger=csv",
        ]
    )
    run_dir = single_run_dir(log_dir, "debug")
    reports = sorted(run_dir.glob("*profile*.txt"))
    assert reports, f"no profiler report in {sorted(p.name for p in run_dir.iterdir())}"
    fit_report = next(p for p in reports if p.name.startswith("fit"))
    assert "run_training_epoch" in fit_report.read_text()


def test_run_directories_are_unique_within_the_same_second(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import setup_globals

    from detection.runtime import launch  # noqa: F401  (registers ${run_id:})

    same_second = datetime(2026, 1, 2, 3, 4, 5)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # every run below starts in the same second (Hydra's ${now:} is put back afterwards)
        OmegaConf.register_new_resolver("now", same_second.strftime, replace=True)
        try:
            configs = [
                compose("train", [f"paths.log_dir={tmp_path}"], return_hydra_config=True) for _ in range(5)
            ]
            run_dirs = [OmegaConf.select(cfg, "hydra.run.dir") for cfg in configs]
            sweep_dirs = [OmegaConf.select(cfg, "hydra.sweep.dir") for cfg in configs]
            # resolved once per run: the run directory and the .hydra files always agree
            assert [OmegaConf.select(cfg, "hydra.run.dir") for cfg in configs] == run_dirs
        finally:
            setup_globals()
    assert len(set(run_dirs)) == len(set(sweep_dirs)) == 5
    for run_dir in run_dirs:
        assert Path(run_dir).parent == tmp_path / "fashiondet" / "runs"
        assert re.fullmatch(r"2026-01-02_03-04-05_[0-9a-f]{6}", Path(run_dir).name), run_dir
    for sweep_dir in sweep_dirs:
        assert Path(sweep_dir).parent == tmp_path / "fashiondet" / "multiruns"


def test_one_config_word_changes_the_head_not_the_backbone() -> None:
    """Every head config and every head's recipe builds the same backbone (weights, norms, freeze),
    so comparing heads compares heads; a pretraining trains its backbone's stem too."""
    from hydra import compose, initialize_config_dir

    from detection.runtime import launch  # noqa: F401  (registers the config resolvers)

    def backbone(overrides: list[str]) -> dict:
        return OmegaConf.to_container(compose("train", overrides).model.backbone, resolve=True)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        main = backbone([])
        by_config = {f"model={head}": backbone([f"model={head}"]) for head in head_names()}
        for name in DETECTION_EXPERIMENTS:
            by_config[f"experiment={name}"] = backbone([f"experiment={name}"])
        pretraining = backbone(["experiment=pretrain_fashion_mnist"])
    assert {name: config for name, config in by_config.items() if config != main} == {}
    assert (main["norm"], main["freeze_at"]) == ("bn", 1)
    assert (pretraining["norm"], pretraining["freeze_at"]) == ("bn", 0)
