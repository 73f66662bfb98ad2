"""The three jobs of the template, each a short linear function of a composed Hydra config."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from detection.runtime.checkpoints import requeued_checkpoint, resolve_ckpt_path, run_dir_of
from detection.runtime.launch import METRICS_FILE, job_processes
from detection.runtime.logging import (
    build_loggers,
    finish_loggers,
    instantiate_group,
    log_config,
    print_config_tree,
    print_metrics_table,
    select_metrics,
)
from detection.runtime.performance import configure_performance
from detection.training.anchors import AnchorCoverageReport, resolve_anchor_sizes
from detection.training.callbacks import KeepTestDetections, LoaderStateCallback
from detection.training.detection_task import DetectionTask
from detection.training.predictions import gather_predictions, write_predictions

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    """Seed; build data, task, callbacks, loggers, trainer; fit; test the best checkpoint; write metrics."""
    started = time.perf_counter()
    configure_performance(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    print_config_tree(cfg, save_to=run_dir / "config_tree.log")
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name, exclude=run_dir)
    ckpt_path = requeued_checkpoint(run_dir) or ckpt_path

    # plain containers, not DictConfig, in the data module's hyper-parameters: they go into the
    # checkpoint, which must load with torch.load(weights_only=True)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    _check_data(cfg, datamodule)
    _resolve_anchor_sizes(cfg, datamodule)
    # the task's arguments are plain data (specs, not configs): they go into its checkpoint
    task = _task(cfg)
    # the resumable training loader needs its state handed over on resume: always together
    callbacks = [*instantiate_group(cfg.get("callbacks"), "callback"), LoaderStateCallback()]
    callbacks.append(AnchorCoverageReport())  # every detection run says what its anchors can match
    callbacks.extend(_test_outputs(task, run_dir))
    if not cfg.trainer.get("enable_progress_bar", True):
        # Lightning refuses a progress bar callback with the bar switched off; the switch wins.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = build_loggers(
        cfg.get("logger"), run_dir, resumed_from=run_dir_of(ckpt_path) if ckpt_path else None
    )
    with job_processes():
        trainer: L.Trainer = hydra.utils.instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False
        )
        log_config(loggers, cfg)
        try:
            if cfg.get("train", True):
                trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics = select_metrics(trainer.callback_metrics, ["val/", "train/"])
            if cfg.get("test", True):
                best = _best_checkpoint(trainer)
                trainer.test(task, datamodule=datamodule, ckpt_path=best, weights_only=True)
                metrics.update(select_metrics(trainer.callback_metrics, ["test/"]))
            summary = _summary(trainer, metrics, run_dir, started)
            if trainer.is_global_zero:
                (run_dir / METRICS_FILE).write_text(json.dumps(summary, indent=2))
                print_metrics_table(
                    {k: v for k, v in metrics.items() if "/AP/" not in k and not k.startswith("train/")},
                    run_dir,
                )
        finally:
            finish_loggers(loggers)
    return _optimized_metric(cfg, metrics)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Checkpoint -> test metrics, with the data config of this run."""
    if not cfg.get("ckpt_path"):
        raise ValueError("eval needs ckpt_path=<checkpoint file | run directory | last>")
    configure_performance(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    print_config_tree(cfg, save_to=run_dir / "config_tree.log")
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.log_dir, cfg.task_name, exclude=run_dir)
    task_class = hydra.utils.get_class(cfg.task_class)
    task = task_class.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    loggers = build_loggers(cfg.get("logger"), run_dir, resumed_from=None)
    with job_processes():
        trainer: L.Trainer = hydra.utils.instantiate(
            cfg.trainer, callbacks=_test_outputs(task, run_dir), logger=loggers or False
        )
        try:
            trainer.test(task, datamodule=datamodule)
            metrics = select_metrics(trainer.callback_metrics, ["test/"])
            if trainer.is_global_zero:
                summary = {"checkpoint": ckpt_path, **metrics}
                (run_dir / METRICS_FILE).write_text(json.dumps(summary, indent=2))
                print_metrics_table({k: v for k, v in metrics.items() if "/AP/" not in k}, run_dir)
        finally:
            finish_loggers(loggers)
    return metrics


def predict(cfg: DictConfig) -> Path:
    """Checkpoint + folder of images -> <run dir>/predictions.json and images with boxes drawn."""
    if not cfg.get("ckpt_path"):
        raise ValueError("predict needs ckpt_path=<checkpoint file | run directory | last>")
    configure_performance(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.log_dir, cfg.task_name, exclude=run_dir)
    task_class = hydra.utils.get_class(cfg.task_class)
    task = task_class.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    with open_dict(cfg):
        cfg.data.predict_dir = str(Path(hydra.utils.to_absolute_path(cfg.input_dir)))
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    with job_processes():
        trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False)
        batches = trainer.predict(task, datamodule=datamodule)
        # under DDP each rank predicted its share of the images: rank 0 gathers and writes them all
        predictions = gather_predictions([p for batch in batches or [] for p in batch])
    out = run_dir / "predictions.json"
    if predictions is not None:
        out = write_predictions(predictions, task.class_names, run_dir, score_thresh=cfg.score_thresh)
        log.info("Wrote %d predictions to %s", len(predictions), out)
    return out


def _test_outputs(task: L.LightningModule, run_dir: Path) -> list[L.Callback]:
    """What every test of a detector leaves in the run directory beside metrics.json: its detections
    and the targets they were scored against (COCO files), so that the run can be re-scored later."""
    return [KeepTestDetections(run_dir)] if isinstance(task, DetectionTask) else []


def _check_data(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """Every split the run uses is read and validated before the first step, and the model's
    num_classes (``${data.num_classes}``) becomes the data's."""
    if not hasattr(datamodule, "check_splits"):  # the classification data module checks at setup
        return
    splits = [
        *(("train", "val") if cfg.get("train", True) else ()),
        *(("test",) if cfg.get("test", True) else ()),
    ]
    datamodule.check_splits(splits, hints={"test": "Or run with test=false to train without testing"})
    with open_dict(cfg):
        cfg.data.num_classes = datamodule.num_classes


def _task(cfg: DictConfig) -> L.LightningModule:
    """The task of `cfg.model.task`; with ``init_from=<checkpoint>`` its detector (architecture and
    weights) comes from that checkpoint, everything else (optimiser, schedule, reset_classes) from
    the config: fine-tuning on other data, not a resume (the step count and optimiser start anew)."""
    if not cfg.get("init_from"):
        return hydra.utils.instantiate(cfg.model.task, _convert_="all")
    arguments = OmegaConf.to_container(cfg.model.task, resolve=True)
    task_class = hydra.utils.get_class(arguments.pop("_target_"))
    arguments.pop("detector", None)
    if arguments.get("class_names") is None:
        arguments.pop("class_names", None)  # keep the checkpoint's names: setup compares them with the data's
    path = resolve_ckpt_path(cfg.init_from, cfg.paths.log_dir, cfg.task_name, exclude=cfg.paths.output_dir)
    log.info("Detector from %s (init_from): its weights, this run's optimiser and schedule", path)
    return task_class.load_from_checkpoint(path, map_location="cpu", weights_only=True, **arguments)


def _resolve_anchor_sizes(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """``model.detector.anchor_sizes: auto`` becomes sizes from the training boxes, in the config
    (so the logged config and the checkpoint's spec hold them and a reload rebuilds the same anchors)."""
    detector = cfg.model.get("detector")
    if detector is None or detector.get("anchor_sizes") != "auto":
        return
    sizes = resolve_anchor_sizes(OmegaConf.to_container(detector, resolve=True), datamodule)
    with open_dict(cfg):
        cfg.model.detector.anchor_sizes = sizes


def _monitoring_checkpoint(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The checkpoint callback that keeps the best by a metric (another one may keep last.ckpt)."""
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    return next((c for c in callbacks if c.monitor), callbacks[0] if callbacks else None)


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = _monitoring_checkpoint(trainer)
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    return best or None  # None tests the weights in memory (e.g. fast_dev_run writes no checkpoint)


def _summary(trainer: L.Trainer, metrics: dict[str, float], run_dir: Path, started: float) -> dict[str, Any]:
    callback = _monitoring_checkpoint(trainer)
    best_score = getattr(callback, "best_model_score", None)
    return {
        **metrics,
        "best_checkpoint": getattr(callback, "best_model_path", None) or None,
        "best_score": float(best_score) if isinstance(best_score, torch.Tensor) else best_score,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "run_dir": str(run_dir),
    }


def _optimized_metric(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name} was not logged; logged metrics: {sorted(metrics)}")
    return metrics[name]
