"""Log a few validation images with predicted and true boxes (W&B box overlays)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger


class PredictionImageLogger(L.Callback):
    """Every validation epoch, the first `num_images` images of the first batch, on rank 0."""

    def __init__(self, num_images: int = 4, score_thresh: float = 0.3) -> None:
        self.num_images = num_images
        self.score_thresh = score_thresh

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero or not outputs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        names = getattr(pl_module, "class_names", [])
        class_labels = {i: n for i, n in enumerate(names)}
        images, targets = batch
        logged = []
        for image, target, pred in list(zip(images, targets, outputs))[: self.num_images]:
            height, width = image.shape[-2:]
            keep = pred["scores"] >= self.score_thresh
            boxes = {
                "predictions": {
                    "box_data": _box_data(
                        pred["boxes"][keep], pred["labels"][keep], names, width, height, pred["scores"][keep]
                    ),
                    "class_labels": class_labels,
                },
                "ground_truth": {
                    "box_data": _box_data(target["boxes"], target["labels"], names, width, height),
                    "class_labels": class_labels,
                },
            }
            array = (image.detach().float().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            logged.append(wandb.Image(array, boxes=boxes))
        for logger in loggers:
            logger.experiment.log({"val/predictions": logged, "trainer/global_step": trainer.global_step})


def _box_data(boxes, labels, names, width, height, scores=None) -> list[dict[str, Any]]:
    data = []
    for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        item: dict[str, Any] = {
            "position": {
                "minX": box[0] / width,
                "minY": box[1] / height,
                "maxX": box[2] / width,
                "maxY": box[3] / height,
            },
            "class_id": int(label),
            "box_caption": names[label] if label < len(names) else str(label),
        }
        if scores is not None:
            item["scores"] = {"score": float(scores[i])}
            item["box_caption"] += f" {float(scores[i]):.2f}"
        data.append(item)
    return data
