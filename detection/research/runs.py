"""Load what a training run left: its detector, and the FashionDet images it was tested on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detection.research.tables import Job


def data_root(job: Job) -> Path:
    """The job's data set folder (``data.root``, relative to the launch directory)."""
    root = job.get("data.root")
    if not root or "${" in str(root):
        raise ValueError(f"{job.path}: data.root is not a plain path in .hydra/config.yaml ({root!r})")
    return Path(root).expanduser()


def split_images(
    root: str | Path, count: int, split: str = "test"
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """The first `count` images of a COCO-layout split as float [3,H,W] in [0,1], with targets."""
    from detection.data import build_eval_transforms, make_reader

    dataset = make_reader("coco", Path(root)).dataset(split, build_eval_transforms())
    images, targets = [], []
    for i in range(min(count, len(dataset))):
        image, target = dataset[i]
        images.append(image.as_subclass(Tensor))
        targets.append({"boxes": target["boxes"].as_subclass(Tensor), "labels": target["labels"]})
    return images, targets


def checkpoint_of(job: Job) -> Path | None:
    """The checkpoint the job was tested with (best by val/mAP), else its last.ckpt."""
    best = (job.metrics or {}).get("best_checkpoint")
    if best and Path(best).is_file():
        return Path(best)
    last = job.path / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def load_detector(checkpoint: str | Path) -> nn.Module:
    """The detector of a DetectionTask checkpoint, in eval mode on the CPU."""
    from detection.training import DetectionTask

    task = DetectionTask.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=True)
    return task.detector.eval()


def weights_label(weights: Any) -> str:
    """How a backbone started: imagenet, scratch, or the file name of a pretraining checkpoint."""
    if weights is None or str(weights).lower() in ("none", "null", ""):
        return "scratch"
    if str(weights).lower() == "imagenet":
        return "imagenet"
    return f"ckpt:{Path(str(weights)).name}"


@torch.no_grad()
def predict(model: nn.Module, images: list[Tensor], batch_size: int = 8) -> list[dict[str, Tensor]]:
    out: list[dict[str, Tensor]] = []
    for i in range(0, len(images), batch_size):
        out.extend(model(images[i : i + batch_size]))
    return out
