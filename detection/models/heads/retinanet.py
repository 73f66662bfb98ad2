"""RetinaNet (torchvision) on a backbone + FPN, every knob a keyword argument."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.ops.misc import Conv2dNormActivation

from detection.models.heads.anchors import anchor_generator
from detection.models.heads.common import DetectorParts, build_transform
from detection.models.necks import DetectorBackbone
from detection.models.norms import head_norm_layer

BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")


class RetinaNetDetector(DetectorParts, RetinaNet):
    """torchvision's RetinaNet that declares its parts (`DetectorParts`)."""


def _tower(channels: int, num_convs: int, head_norm: str) -> nn.Sequential:
    norm_layer = None if (head_norm or "none") == "none" else head_norm_layer(head_norm)
    tower = nn.Sequential(
        *(Conv2dNormActivation(channels, channels, norm_layer=norm_layer) for _ in range(int(num_convs)))
    )
    for layer in tower.modules():
        if isinstance(layer, nn.Conv2d):
            torch.nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                torch.nn.init.zeros_(layer.bias)
    return tower


def build_retinanet(
    backbone: DetectorBackbone,
    num_classes: int,
    *,
    min_size: int = 128,
    max_size: int = 128,
    size_divisible: int = 32,
    num_convs: int = 4,
    head_norm: str | None = "gn",
    prior_probability: float = 0.01,
    anchor_scale: float = 4.0,
    anchor_sizes: Sequence[Sequence[float]] | None = None,
    scales_per_octave: int = 3,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    box_loss: str = "l1",
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.4,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 300,
    topk_candidates: int = 1000,
) -> RetinaNetDetector:
    """RetinaNet with anchors of side ``anchor_scale * stride * 2**(i/scales_per_octave)``, or the
    sides `anchor_sizes` gives per level (`detection.models.heads.anchors`).

    Anchors follow the paper by default (4 x stride, 3 scales x 3 ratios); the towers have
    GroupNorm. Without a norm (``head_norm="none"``, the paper's head) the towers' 0.01-std
    initialisation shrinks the signal by sqrt(9 x channels) x 0.01 / sqrt(2) per layer (three-fold
    at 256 channels, six-fold at 64), so the classifier's input and its gradients vanish and the
    focal loss never leaves its starting value. ``box_loss="giou"`` with GN gives torchvision's v2
    head. Labels are [0, num_classes) in and out.
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"unknown box_loss {box_loss!r}; choose one of {BOX_LOSSES}")
    anchors = anchor_generator(backbone.strides, anchor_scale, scales_per_octave, aspect_ratios, anchor_sizes)
    channels = backbone.out_channels
    head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=None)
    head.classification_head.conv = _tower(channels, num_convs, head_norm)
    head.regression_head.conv = _tower(channels, num_convs, head_norm)
    head.regression_head._loss_type = box_loss
    # RetinaNetHead does not pass prior_probability through to its classifier.
    torch.nn.init.constant_(
        head.classification_head.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability)
    )
    body = backbone.body
    model = RetinaNetDetector(
        backbone,
        num_classes,
        min_size=min_size,
        max_size=max_size,
        image_mean=body.image_mean,
        image_std=body.image_std,
        anchor_generator=anchors,
        head=head,
        score_thresh=float(score_thresh),
        nms_thresh=float(nms_thresh),
        detections_per_img=int(detections_per_img),
        fg_iou_thresh=float(fg_iou_thresh),
        bg_iou_thresh=float(bg_iou_thresh),
        topk_candidates=int(topk_candidates),
    )
    model.transform = build_transform(body, min_size, max_size, size_divisible)
    return model
