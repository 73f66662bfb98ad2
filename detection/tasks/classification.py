"""ClassificationTask: pretrain a backbone on a classification data set (Fashion-MNIST by default).

Its checkpoint is what a detection run takes as `model.detector.backbone.weights=<path>`: the
classifier's backbone keys are `model.backbone.<key>`, and `checkpoint["backbone_meta"]` carries
the input statistics the backbone was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra.utils
import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from detection.tasks.detection import _plain
from detection.tasks.optim import build_optimizer_and_scheduler


class ClassificationTask(L.LightningModule):
    def __init__(
        self,
        model: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        model_module: nn.Module | None = None,
    ) -> None:
        super().__init__()
        model = _plain(model)
        optimizer = _plain(optimizer)
        scheduler = _plain(scheduler)
        # logger=False: the pipeline logs the whole run config (nested); these would duplicate parts of it
        self.save_hyperparameters(ignore=["model_module"], logger=False)
        self.model = model_module if model_module is not None else hydra.utils.instantiate(model)
        num_classes = int(model["num_classes"])
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self.model(images), labels, label_smoothing=self.hparams.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Non-finite loss {loss.item()} at global step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_acc, "test")

    def _eval_step(self, batch: tuple[Tensor, Tensor], metric: MulticlassAccuracy, prefix: str) -> None:
        images, labels = batch
        logits = self.model(images)
        metric.update(logits, labels)
        self.log(f"{prefix}/loss", F.cross_entropy(logits, labels), sync_dist=True, batch_size=len(images))
        self.log(f"{prefix}/acc", metric, prog_bar=True, batch_size=len(images))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer_cfg = dict(self.hparams.optimizer)
        return build_optimizer_and_scheduler(
            self.model,
            optimizer_factory=hydra.utils.instantiate(optimizer_cfg),
            lr=float(optimizer_cfg["lr"]),
            weight_decay=float(optimizer_cfg.get("weight_decay", 0.0)),
            scheduler=self.hparams.scheduler,
            total_steps=self.trainer.estimated_stepping_batches,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        backbone = self.model.backbone
        checkpoint["backbone_meta"] = {
            "name": self.hparams.model["backbone"]["name"],
            "image_mean": [float(v) for v in backbone.image_mean],
            "image_std": [float(v) for v in backbone.image_std],
        }
