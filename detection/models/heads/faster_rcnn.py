"""Faster R-CNN with FPN: MultiScaleRoIAlign and torchvision's two-layer box head on the R-CNN core."""

from __future__ import annotations

from typing import Any

from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from detection.models.heads.contract import register_head
from detection.models.heads.rcnn import RCNN, build_rcnn
from detection.models.necks import DetectorBackbone


@register_head("faster_rcnn", neck={"extra_levels": "maxpool"}, options_from=(build_rcnn,))
def build_faster_rcnn(
    backbone: DetectorBackbone,
    num_classes: int,
    *,
    roi_output_size: int = 7,
    roi_sampling_ratio: int = 2,
    roi_canonical_scale: int = 224,
    roi_canonical_level: int = 4,
    representation_size: int = 1024,
    **rcnn_options: Any,
) -> RCNN:
    """Faster R-CNN: RPN on every FPN level, MultiScaleRoIAlign over the FPN levels that come from
    the backbone (not the extra ones), TwoMLPHead (`representation_size`) and the predictors.

    `rcnn_options` are `build_rcnn`'s knobs (RPN, box sampling and post-processing, anchors).
    """
    pooled_levels = backbone.names[: len(backbone.body.feature_specs)]
    roi_pool = MultiScaleRoIAlign(
        pooled_levels,
        output_size=int(roi_output_size),
        sampling_ratio=int(roi_sampling_ratio),
        canonical_scale=int(roi_canonical_scale),
        canonical_level=int(roi_canonical_level),
    )
    box_head = TwoMLPHead(backbone.out_channels * int(roi_output_size) ** 2, int(representation_size))
    return build_rcnn(backbone, num_classes, roi_pool, box_head, int(representation_size), **rcnn_options)
