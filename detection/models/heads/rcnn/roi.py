"""The RoI heads of both R-CNN heads: torchvision's RoIHeads around a given pooler and box head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads

from detection.models.precision import Float32Predictions


class BoxPredictor(Float32Predictions, FastRCNNPredictor):
    """torchvision's box predictor whose class scores and box deltas are float32 under autocast
    (`detection.models.precision`): detections are decoded and suppressed in float32."""


def build_roi_heads(
    box_roi_pool: nn.Module,
    box_head: nn.Module,
    representation_size: int,
    num_classes: int,
    *,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    batch_size_per_image: int,
    positive_fraction: float,
    bbox_reg_weights: Sequence[float] | None,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
) -> RoIHeads:
    """torchvision RoIHeads with a (num_classes + 1)-way predictor, class 0 = background."""
    return RoIHeads(
        box_roi_pool,
        box_head,
        BoxPredictor(int(representation_size), int(num_classes) + 1),
        float(fg_iou_thresh),
        float(bg_iou_thresh),
        int(batch_size_per_image),
        float(positive_fraction),
        tuple(float(w) for w in bbox_reg_weights) if bbox_reg_weights is not None else None,
        float(score_thresh),
        float(nms_thresh),
        int(detections_per_img),
    )
