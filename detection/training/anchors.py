"""Anchors that fit the data: ``anchor_sizes=auto`` resolved from the training boxes, and the
coverage report printed before the first step (`AnchorCoverageReport`).

The boxes are taken as the detector sees them: scaled by its input resize (``min_size`` /
``max_size``), without the training augmentation.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from detection.models import build_from_spec
from detection.models.heads.anchors import AUTO, derive_anchor_sizes, to_input_pixels

log = logging.getLogger(__name__)


def training_boxes(
    datamodule: Any, min_size: int, max_size: int
) -> tuple[list[Tensor], list[tuple[int, int]]]:
    """Per training image: its boxes (xyxy) and size, in the detector's input pixels."""
    datasets = getattr(datamodule, "datasets", {})
    if "train" not in datasets:
        raise ValueError("anchor coverage and anchor_sizes=auto need the training split, which is not set up")
    dataset = datasets["train"]
    boxes, sizes = [], []
    for record, image_boxes in zip(dataset.images, dataset.index.boxes, strict=True):
        scaled, size = to_input_pixels(
            torch.as_tensor(image_boxes, dtype=torch.float32),
            (record["height"], record["width"]),
            min_size,
            max_size,
        )
        boxes.append(scaled)
        sizes.append(size)
    return boxes, sizes


def resolve_anchor_sizes(detector: Mapping[str, Any], datamodule: Any) -> list[list[float]] | None:
    """The anchor sizes that replace ``anchor_sizes: auto`` in a detector spec (None when not asked).

    As many levels and sizes per level as the head's sized anchor generator has (its
    ``sized_anchor_generator`` hook: RetinaNet's scales per octave, one for an RPN), spread over the
    training boxes' sides. A head without one cannot take ``auto``.
    """
    if detector.get("anchor_sizes") != AUTO:
        return None
    probe_spec = copy.deepcopy(dict(detector))
    probe_spec["anchor_sizes"] = None
    probe_spec["backbone"] = {**probe_spec["backbone"], "weights": None}
    probe = build_from_spec(probe_spec)
    generator = probe.sized_anchor_generator()
    if generator is None:
        raise ValueError(f"head {detector.get('head')!r} has no anchors to size: remove anchor_sizes=auto")
    boxes, _ = training_boxes(
        datamodule, int(detector.get("min_size", 128)), int(detector.get("max_size", 128))
    )
    sides = [math.sqrt(float(w) * float(h)) for b in boxes for w, h in (b[:, 2:] - b[:, :2]).tolist()]
    sizes = derive_anchor_sizes(sides, len(generator.sizes), len(generator.sizes[0]))
    log.info("anchor_sizes=auto: %s (from %d training boxes)", sizes, len(sides))
    return sizes


class AnchorCoverageReport(L.Callback):
    """Before the first step, one line: the share of training boxes the detector's positive
    assignment can reach (its ``anchor_coverage`` hook; anchors: best IoU >= the positive threshold;
    FCOS: a level accepts the box), and a warning naming the knob below 90 %; for a head without
    fixed anchors, a line that says so. Wired in by the training pipeline."""

    def __init__(self) -> None:
        self.coverage = None

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        detector = getattr(pl_module, "detector", None)
        datamodule = getattr(trainer, "datamodule", None)
        if detector is None or "train" not in getattr(datamodule, "datasets", {}):
            return
        transform = detector.transform
        boxes, sizes = training_boxes(datamodule, int(transform.min_size[0]), int(transform.max_size))
        self.coverage = detector.anchor_coverage(boxes, sizes)
        if self.coverage is None:
            log.info("anchor coverage: %s assigns positives without fixed anchors", type(detector).__name__)
            return
        log.info(self.coverage.line())
        warning = self.coverage.warning()
        if warning:
            log.warning(warning)
