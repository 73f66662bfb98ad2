"""FCOS (torchvision) on a backbone + FPN, every knob a keyword argument."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torchvision.models.detection.fcos import FCOS, FCOSClassificationHead, FCOSHead, FCOSRegressionHead

from detection.models.heads.anchors import Coverage, anchor_generator, fcos_coverage
from detection.models.heads.classes import replace_dense_classifier
from detection.models.heads.common import build_transform
from detection.models.heads.contract import Detector, register_head
from detection.models.necks import DetectorBackbone
from detection.models.norms import head_norm_layer
from detection.models.precision import Float32Predictions


class FCOSDetector(Detector, FCOS):
    """torchvision's FCOS under the head contract (`Detector`)."""

    def anchor_coverage(self, boxes: Sequence[Tensor], input_sizes: Sequence[tuple[int, int]]) -> Coverage:
        return fcos_coverage(self.backbone.strides, self.center_sampling_radius, boxes, input_sizes)

    def replace_classifier(self, num_classes: int, prior_probability: float = 0.01) -> None:
        replace_dense_classifier(self, num_classes, prior_probability)


class FCOSPredictionHead(Float32Predictions, FCOSHead):
    """torchvision's FCOS head whose predictions are float32 under autocast (`detection.models.precision`)."""


@register_head("fcos", neck={"extra_levels": "p6p7", "p6p7_from": "p5"})
def build_fcos(
    backbone: DetectorBackbone,
    num_classes: int,
    *,
    min_size: int = 128,
    max_size: int = 128,
    size_divisible: int = 32,
    num_convs: int = 4,
    head_norm: str | None = "gn",
    prior_probability: float = 0.01,
    center_sampling_radius: float = 1.5,
    score_thresh: float = 0.2,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    topk_candidates: int = 1000,
) -> FCOSDetector:
    """FCOS with one anchor point per location whose size is the level's stride.

    torchvision assigns a box to the levels whose anchor size times 4..8 brackets it, so the sizes
    must be the strides. `num_convs` and `head_norm` ("gn" or "none") shape both towers of the
    head (shared across levels); the rest are `torchvision.models.detection.FCOS` arguments.
    Labels are [0, num_classes) in and out.
    """
    norm_layer = head_norm_layer(head_norm)
    channels = backbone.out_channels
    head = FCOSPredictionHead(channels, 1, num_classes, num_convs=0)
    # FCOSHead does not pass a norm layer through; its two towers do accept one.
    head.classification_head = FCOSClassificationHead(
        channels, 1, num_classes, int(num_convs), float(prior_probability), norm_layer=norm_layer
    )
    head.regression_head = FCOSRegressionHead(channels, 1, int(num_convs), norm_layer=norm_layer)
    body = backbone.body
    model = FCOSDetector(
        backbone,
        num_classes,
        min_size=min_size,
        max_size=max_size,
        image_mean=body.image_mean,
        image_std=body.image_std,
        anchor_generator=anchor_generator(backbone.strides, anchor_scale=1.0, aspect_ratios=(1.0,)),
        head=head,
        center_sampling_radius=float(center_sampling_radius),
        score_thresh=float(score_thresh),
        nms_thresh=float(nms_thresh),
        detections_per_img=int(detections_per_img),
        topk_candidates=int(topk_candidates),
    )
    model.transform = build_transform(body, min_size, max_size, size_divisible)
    return model
