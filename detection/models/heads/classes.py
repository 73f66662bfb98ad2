"""A new classification layer for another number of classes: fine-tuning a detector on other data.

Only the layer whose size depends on the classes is replaced (freshly initialised as its head
does it); everything else keeps its weights.
- FCOS and RetinaNet: the classification tower's last conv ``head.classification_head.cls_logits``
  (``num_anchors * C`` outputs; bias at the prior probability, as torchvision initialises it);
- Faster R-CNN and Light-Head R-CNN: the box predictor ``roi_heads.box_predictor`` (class scores
  over C + 1 with background, and its class-specific box deltas).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _replace_dense_classifier(detector: nn.Module, num_classes: int, prior_probability: float) -> None:
    head = detector.head.classification_head
    old = head.cls_logits
    new = nn.Conv2d(old.in_channels, head.num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
    torch.nn.init.normal_(new.weight, std=0.01)
    torch.nn.init.constant_(new.bias, -math.log((1 - prior_probability) / prior_probability))
    head.cls_logits = new.to(old.weight)
    head.num_classes = num_classes


def _replace_rcnn_predictor(detector: nn.Module, num_classes: int, prior_probability: float) -> None:
    old = detector.roi_heads.box_predictor
    new = type(old)(old.cls_score.in_features, num_classes + 1)  # keeps float32 predictions
    detector.roi_heads.box_predictor = new.to(old.cls_score.weight)


def replace_classifier(detector: nn.Module, num_classes: int, prior_probability: float = 0.01) -> nn.Module:
    """`detector` (any head of `build_detector`) predicting `num_classes` classes; changed in place."""
    if hasattr(detector, "roi_heads"):
        _replace_rcnn_predictor(detector, int(num_classes), prior_probability)
    elif hasattr(getattr(detector, "head", None), "classification_head"):
        _replace_dense_classifier(detector, int(num_classes), prior_probability)
    else:
        raise TypeError(f"no known classification layer in a {type(detector).__name__}")
    detector.num_classes = int(num_classes)
    return detector
