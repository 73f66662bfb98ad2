"""Every test run keeps its detections, so it can be re-scored, compared and analysed without its checkpoint.

After ``trainer.test`` the run directory holds, beside ``metrics.json``:

- ``detections_test.json``: COCO *results* format, ``[{"image_id", "category_id", "bbox": [x, y, w,
  h], "score"}]``, every detection the detector returned (no score threshold: what test/mAP was
  computed from).
- ``ground_truth_test.json``: COCO *data set* format of the targets exactly as the test loop scored
  them: ``{"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id", "image_id",
  "category_id", "bbox", "area", "iscrowd"}], "categories": [{"id", "name"}]}``.

Both are in the pixels of the images the detector was given (after the data's eval transforms, so
a resized test image has its boxes and its width/height resized alike): the coordinates torchmetrics
scored. Category ids are the task's labels (0-based class indices), named by ``task.class_names``;
``area`` is the box's w * h, as torchmetrics gives COCO's area ranges. Re-scoring the two files with
faster_coco_eval or pycocotools gives the run's test/mAP back. Under DDP each rank's images are
gathered to rank 0, each image once, and rank 0 writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from detection.training.metrics import gather_to_rank_zero

__all__ = ["DETECTIONS_FILE", "GROUND_TRUTH_FILE", "KeepTestDetections", "coco_files"]

log = logging.getLogger(__name__)

DETECTIONS_FILE = "detections_test.json"
GROUND_TRUTH_FILE = "ground_truth_test.json"


class KeepTestDetections(L.Callback):
    """Write `DETECTIONS_FILE` and `GROUND_TRUTH_FILE` into `output_dir` after each test epoch.

    For a `DetectionTask` (its test_step returns the detections of the batch). `decimals`: box
    coordinates are rounded to it (scores are kept as computed: ties would reorder the ranking).
    """

    def __init__(self, output_dir: str | Path, decimals: int = 3) -> None:
        self.output_dir = Path(output_dir)
        self.decimals = int(decimals)
        self._images: list[dict[str, Any]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images = []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        images, targets = batch
        for image, pred, target in zip(images, outputs, targets, strict=True):
            height, width = image.shape[-2:]
            if "image_id" in target:
                image_id = int(target["image_id"])
            else:  # the eval sampler deals images out in turn: rank r holds r, r + world, ...
                image_id = len(self._images) * trainer.world_size + trainer.global_rank
            self._images.append(
                {
                    "image_id": image_id,
                    "width": int(width),
                    "height": int(height),
                    "target": _plain(target, ("boxes", "labels")),
                    "detections": _plain(pred, ("boxes", "scores", "labels")),
                }
            )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gathered = gather_to_rank_zero(self._images)  # every rank calls it: a collective under DDP
        self._images = []
        if gathered is None or not trainer.is_global_zero:
            return
        names = list(getattr(pl_module, "class_names", []) or [])
        detections, ground_truth = coco_files(
            gathered, names, _file_names(trainer.test_dataloaders), self.decimals
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / DETECTIONS_FILE).write_text(json.dumps(detections))
        (self.output_dir / GROUND_TRUTH_FILE).write_text(json.dumps(ground_truth))
        log.info(
            "Wrote %d detections on %d test images to %s (ground truth: %s)",
            len(detections),
            len(ground_truth["images"]),
            self.output_dir / DETECTIONS_FILE,
            GROUND_TRUTH_FILE,
        )


def coco_files(
    images: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    file_names: Mapping[int, str] | None = None,
    decimals: int = 3,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(COCO results, COCO data set) of per-image records ``{"image_id", "width", "height", "target":
    {"boxes" XYXY, "labels"}, "detections": {"boxes" XYXY, "scores", "labels"}}`` (plain lists).

    An image id seen twice (a sampler that pads repeats images) counts once; images go in id order.
    """
    unique: dict[int, Mapping[str, Any]] = {}
    for record in images:
        unique.setdefault(int(record["image_id"]), record)
    detections: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    image_records: list[dict[str, Any]] = []
    labels_seen: set[int] = set()
    for image_id in sorted(unique):
        record = unique[image_id]
        image_records.append(
            {
                "id": image_id,
                "file_name": (file_names or {}).get(image_id, ""),
                "width": int(record["width"]),
                "height": int(record["height"]),
            }
        )
        target, found = record["target"], record["detections"]
        for box, label in zip(target["boxes"], target["labels"], strict=True):
            x, y, w, h = _xywh(box, decimals)
            # ids from 1: COCOeval treats an annotation id of 0 as "no match"
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            labels_seen.add(int(label))
        for box, score, label in zip(found["boxes"], found["scores"], found["labels"], strict=True):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": list(_xywh(box, decimals)),
                    "score": float(score),
                }
            )
            labels_seen.add(int(label))
    count = max(len(class_names), 1 + max(labels_seen, default=-1))
    categories = [{"id": i, "name": class_names[i] if i < len(class_names) else str(i)} for i in range(count)]
    return detections, {"images": image_records, "annotations": annotations, "categories": categories}


def _plain(values: Mapping[str, Any], keys: Sequence[str]) -> dict[str, list[Any]]:
    # float32 before .tolist() whatever the autocast: what leaves torch is cast first
    out = {}
    for key in keys:
        value = values[key]
        if isinstance(value, Tensor):
            value = value.detach().cpu()
            value = value.float() if value.is_floating_point() else value
            value = value.tolist()
        out[key] = list(value)
    return out


def _xywh(box: Sequence[float], decimals: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (
        round(x1, decimals),
        round(y1, decimals),
        round(x2 - x1, decimals),
        round(y2 - y1, decimals),
    )


def _file_names(loaders: Any) -> dict[int, str]:
    """Image id -> file name from the test loader's data set (`DetectionDataset.images`), if it has them."""
    if isinstance(loaders, Sequence) and not isinstance(loaders, torch.utils.data.DataLoader):
        loaders = loaders[0] if loaders else None
    records = getattr(getattr(loaders, "dataset", None), "images", None)
    if not isinstance(records, Sequence):
        return {}
    return {
        int(r["id"]): str(r.get("file_name", "")) for r in records if isinstance(r, Mapping) and "id" in r
    }
