"""A new classification layer for another number of classes: fine-tuning a detector on other data.

Only the layer whose size depends on the classes is replaced (freshly initialised as its head
does it); everything else keeps its weights. Each head does it in its `replace_classifier` hook
(`detection.models.heads.Detector`), with one of the helpers here where it fits:
- dense heads (FCOS, RetinaNet): the classification tower's last conv
  ``head.classification_head.cls_logits`` (``num_anchors * C`` outputs; bias at the prior
  probability, as torchvision initialises it);
- R-CNN heads: the box predictor ``roi_heads.box_predictor`` (class scores over C + 1 with
  background, and its class-specific box deltas).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def prior_bias(prior_probability: float) -> float:
    """The logit bias whose sigmoid is `prior_probability` (the focal-loss start of every class)."""
    return -math.log((1 - prior_probability) / prior_probability)


def replace_dense_classifier(detector: nn.Module, num_classes: int, prior_probability: float) -> None:
    head = detector.head.classification_head
    old = head.cls_logits
    new = nn.Conv2d(old.in_channels, head.num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
    torch.nn.init.normal_(new.weight, std=0.01)
    torch.nn.init.constant_(new.bias, prior_bias(prior_probability))
    head.cls_logits = new.to(old.weight)
    head.num_classes = num_classes


def replace_rcnn_predictor(detector: nn.Module, num_classes: int) -> None:
    old = detector.roi_heads.box_predictor
    new = type(old)(old.cls_score.in_features, num_classes + 1)  # keeps float32 predictions
    detector.roi_heads.box_predictor = new.to(old.cls_score.weight)


def replace_classifier(detector: nn.Module, num_classes: int, prior_probability: float = 0.01) -> nn.Module:
    """`detector` (any head of `build_detector`) predicting `num_classes` classes; changed in place."""
    detector.replace_classifier(int(num_classes), float(prior_probability))
    detector.num_classes = int(num_classes)
    return detector
