"""DetectionTask: a LightningModule around any detector of `detection.models`."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import hydra.utils
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from detection.tasks.map_sync import gather_map_states
from detection.tasks.optim import build_optimizer_and_scheduler

log = logging.getLogger(__name__)
# faster_coco_eval prints its whole summary at INFO on every compute(); our metrics table says it once.
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

Batch = tuple[list[Tensor], list[dict[str, Any]]]

# torchmetrics key -> our metric name (DESIGN.md "Names")
_MAP_KEYS = {
    "map": "mAP",
    "map_50": "mAP_50",
    "map_75": "mAP_75",
    "map_small": "mAP_small",
    "map_medium": "mAP_medium",
    "map_large": "mAP_large",
    "mar_1": "mAR_1",
    "mar_10": "mAR_10",
    "mar_100": "mAR_100",
}


def _plain(value: Any) -> Any:
    """DictConfig -> dict, so hyper-parameters pickle and print as plain data."""
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return copy.deepcopy(value)


class DetectionTask(L.LightningModule):
    """Train, validate, test and predict with a detector built from its config.

    The detector is given as its Hydra config (a mapping with `_target_`), not as a module, so
    that a checkpoint rebuilds it alone: `DetectionTask.load_from_checkpoint(path)`.
    A built module may be passed as `detector_module` (then `detector` is only recorded).
    """

    def __init__(
        self,
        detector: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        backbone_lr_mult: float = 1.0,
        norm_bias_weight_decay: float = 0.0,
        class_names: Sequence[str] | None = None,
        map_backend: str = "faster_coco_eval",
        nonfinite_loss: str = "raise",
        detector_module: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        detector = _plain(detector)
        optimizer = _plain(optimizer)
        scheduler = _plain(scheduler)
        class_names = list(class_names) if class_names is not None else None
        # logger=False: the pipeline logs the whole run config (nested); these would duplicate parts of it
        self.save_hyperparameters(ignore=["detector_module"], logger=False)
        self.detector = detector_module if detector_module is not None else hydra.utils.instantiate(detector)
        self.val_map = self._new_metric()
        self.test_map = self._new_metric()
        self.skipped_steps = 0

    def _new_metric(self) -> MeanAveragePrecision:
        # sync_on_compute=False: under DDP, gather_map_states collects the ranks' images instead
        return MeanAveragePrecision(
            box_format="xyxy",
            iou_type="bbox",
            class_metrics=True,
            backend=self.hparams.map_backend,
            sync_on_compute=False,
        )

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        if names:
            if self.hparams.class_names and list(self.hparams.class_names) != list(names):
                log.warning(
                    "Class names of the data (%s) differ from the checkpoint's (%s)",
                    names,
                    self.hparams.class_names,
                )
            # Saved with the checkpoint so that eval/predict name classes without the data.
            self.hparams.class_names = list(names)

    @property
    def class_names(self) -> list[str]:
        if self.hparams.class_names:
            return list(self.hparams.class_names)
        return [str(i) for i in range(int(self.hparams.detector.get("num_classes", 0)))]

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.detector(images)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        images, targets = batch
        losses: dict[str, Tensor] = self.detector(images, [_boxes_and_labels(t) for t in targets])
        loss = sum(losses.values())
        finite = torch.isfinite(loss.detach()).float()
        world_size = self.trainer.world_size if self._trainer is not None else 1
        if world_size > 1:
            # One verdict for all ranks: a rank that skips (or raises) alone leaves the others
            # waiting forever in the gradient all-reduce.
            finite = self.all_gather(finite).min()
        if not bool(finite):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            where = f" on rank {self.global_rank}" if world_size > 1 else ""
            message = (
                f"Non-finite loss at global step {self.global_step} (epoch {self.current_epoch}){where}: "
                f"{parts}"
            )
            if self.hparams.nonfinite_loss == "raise":
                raise FloatingPointError(
                    message + ". The last good checkpoint is kept; lower model.optimizer.lr, raise the "
                    "warmup, or set model.task.nonfinite_loss=skip to skip such steps."
                )
            self.skipped_steps += 1
            log.warning("%s: step skipped (%d so far)", message, self.skipped_steps)
            return None
        batch_size = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in losses.items():
            self.log(f"train/loss_{_short(name)}", value, batch_size=batch_size)
        return loss

    # ---------------------------------------------------------------- evaluation
    def validation_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Tensor]]:
        return self._eval_step(batch, self.val_map)

    def test_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Tensor]]:
        return self._eval_step(batch, self.test_map)

    def _eval_step(self, batch: Batch, metric: MeanAveragePrecision) -> list[dict[str, Tensor]]:
        images, targets = batch
        preds = self.detector(images)
        metric.update(
            [{k: p[k].detach() for k in ("boxes", "scores", "labels")} for p in preds],
            [_boxes_and_labels(t) for t in targets],
        )
        return preds

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def _log_map(self, metric: MeanAveragePrecision, prefix: str) -> None:
        # Each image counts once: the data module's eval samplers never pad, and gather_map_states
        # collects ranks holding different numbers of images (torchmetrics' own sync cannot).
        gather_map_states(metric)
        result = metric.compute()
        metric.reset()
        values = {f"{prefix}/{ours}": result[key].float() for key, ours in _MAP_KEYS.items()}
        names = self.class_names
        classes = result["classes"].reshape(-1).tolist()
        per_class = result["map_per_class"].reshape(-1).tolist()
        if len(per_class) == len(classes):
            for label, ap in zip(classes, per_class):
                # a "/" in a class name ("T-shirt/top") would nest the metric one level deeper
                name = (names[label] if 0 <= label < len(names) else str(label)).replace("/", "-")
                values[f"{prefix}/AP/{name}"] = torch.tensor(float(ap))
        self.log(f"{prefix}/mAP", values.pop(f"{prefix}/mAP"), prog_bar=True)
        self.log_dict(values)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        images, metas = batch
        preds = self.detector(images)
        return [{**meta, **{k: v.detach().cpu() for k, v in p.items()}} for p, meta in zip(preds, metas)]

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer_cfg = dict(self.hparams.optimizer)
        if "lr" not in optimizer_cfg:
            raise ValueError("model.optimizer needs an `lr` (e.g. model.optimizer.lr=1e-3)")
        return build_optimizer_and_scheduler(
            self.detector,
            optimizer_factory=hydra.utils.instantiate(optimizer_cfg),
            lr=float(optimizer_cfg["lr"]),
            weight_decay=float(optimizer_cfg.get("weight_decay", 0.0)),
            scheduler=self.hparams.scheduler,
            total_steps=self.trainer.estimated_stepping_batches,
            backbone_lr_mult=self.hparams.backbone_lr_mult,
            norm_bias_weight_decay=self.hparams.norm_bias_weight_decay,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The state dict holds every weight, so rebuilding must not fetch pretrained weights again
        # (offline, or from a pretraining checkpoint that may be gone); keep the input statistics.
        hparams = checkpoint.get("hyper_parameters")
        if hparams and isinstance(hparams.get("detector"), dict):
            hparams["detector"] = copy.deepcopy(hparams["detector"])  # never touch the live hparams
            backbone = hparams["detector"].get("backbone")
            body = getattr(getattr(self.detector, "backbone", None), "body", None)
            if isinstance(backbone, dict):
                backbone["weights"] = None
                if body is not None and hasattr(body, "image_mean"):
                    backbone["image_mean"] = [float(v) for v in body.image_mean]
                    backbone["image_std"] = [float(v) for v in body.image_std]


def _boxes_and_labels(target: Mapping[str, Any]) -> dict[str, Tensor]:
    return {"boxes": target["boxes"], "labels": target["labels"]}


def _short(name: str) -> str:
    return name[5:] if name.startswith("loss_") else name
