"""ClassificationTask: pretrain a backbone on a classification data set (Fashion-MNIST by default).

Its checkpoint is what a detection run takes as `model.backbone.weights=<path>`: the classifier's
backbone keys are `model.backbone.<key>`, the input statistics it was trained with among them (the
backbone's extra state).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from detection.models import Classifier
from detection.models.backbones import Backbone
from detection.training.optim import build_optimizer_and_scheduler, optimizer_spec, parameter_groups


class ClassificationTask(L.LightningModule):
    """Train a `Classifier` given by its arguments, ``model = {"backbone": {...}, "num_classes": C,
    "dropout": p}`` (`build_backbone` arguments for the backbone), or as a built `model_module`."""

    def __init__(
        self,
        model: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        model_module: nn.Module | None = None,
    ) -> None:
        super().__init__()
        model = {k: v for k, v in dict(model).items() if k != "_target_"}  # earlier checkpoints
        optimizer = optimizer_spec(optimizer)
        scheduler = dict(scheduler) if scheduler else None
        # logger=False: the pipeline logs the whole run config (nested); these would duplicate parts of it
        self.save_hyperparameters(ignore=["model_module"], logger=False)
        self.model = model_module if model_module is not None else Classifier(**model)
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

    @property
    def backbone(self) -> Backbone:
        """The classifier's feature extractor (what `BackboneUnfreeze` freezes and unfreezes)."""
        return self.model.backbone

    def parameter_groups(
        self, params: Collection[nn.Parameter] | None = None, name_suffix: str = ""
    ) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (`detection.training.optim.parameter_groups`)."""
        options = self.hparams.optimizer
        return parameter_groups(
            self.model,
            lr=float(options["lr"]),
            weight_decay=float(options.get("weight_decay", 0.0)),
            params=params,
            name_suffix=name_suffix,
        )

    def configure_optimizers(self) -> dict[str, Any]:
        return build_optimizer_and_scheduler(
            self.parameter_groups(),
            optimizer=self.hparams.optimizer,
            scheduler=self.hparams.scheduler,
            total_steps=self.trainer.estimated_stepping_batches,
        )
