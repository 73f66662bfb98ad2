"""RetinaNet (torchvision) on a backbone + FPN, every knob a keyword argument."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import _box_loss
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.ops import box_iou, sigmoid_focal_loss
from torchvision.ops.misc import Conv2dNormActivation

from detection.models.heads.anchors import (
    COVERAGE_KNOB,
    Coverage,
    anchor_coverage,
    anchor_generator,
    atss_coverage,
)
from detection.models.heads.atss import ASSIGNMENTS, atss_assign
from detection.models.heads.classes import replace_dense_classifier
from detection.models.heads.common import build_transform
from detection.models.heads.contract import Detector, register_head
from detection.models.necks import DetectorBackbone
from detection.models.norms import head_norm_layer
from detection.models.precision import Float32Predictions

BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")
LOSS_NORMALIZATIONS = ("batch", "image")


class RetinaNetDetector(Detector, RetinaNet):
    """torchvision's RetinaNet under the head contract (`Detector`) that picks its positive anchors
    by a fixed IoU threshold (``assignment="iou"``, torchvision's matcher) or by ATSS, and divides
    its losses by the positives of the whole batch (``loss_normalization="batch"``) or, as
    torchvision does, by each image's own (``"image"``)."""

    assignment: str = "iou"
    atss_topk: int = 9
    loss_normalization: str = "batch"

    def anchor_coverage(self, boxes: Sequence[Tensor], input_sizes: Sequence[tuple[int, int]]) -> Coverage:
        strides = self.backbone.strides
        if self.assignment == "atss":
            part, knob = "RetinaNet anchors (ATSS)", f"{COVERAGE_KNOB}, or model.detector.atss_topk"
            return atss_coverage(
                part, self.anchor_generator, strides, boxes, input_sizes, self.atss_topk, knob
            )
        threshold = self.proposal_matcher.high_threshold
        generator = self.anchor_generator
        return anchor_coverage(
            "RetinaNet anchors", generator, strides, boxes, input_sizes, threshold, COVERAGE_KNOB
        )

    def sized_anchor_generator(self) -> AnchorGenerator:
        return self.anchor_generator

    def replace_classifier(self, num_classes: int, prior_probability: float = 0.01) -> None:
        replace_dense_classifier(self, num_classes, prior_probability)

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor]
    ) -> dict[str, Tensor]:
        if self.assignment == "atss":
            counts = self.anchor_generator.num_anchors_per_level
            pairs = zip(targets, anchors, strict=True)
            matched = [atss_assign(t["boxes"], a, counts, self.atss_topk) for t, a in pairs]
        else:
            matched = [self._iou_match(t["boxes"], a) for t, a in zip(targets, anchors, strict=True)]
        if self.loss_normalization == "image":
            return self.head.compute_loss(targets, head_outputs, anchors, matched)
        return self._batch_normalized_loss(targets, head_outputs, anchors, matched)

    def _iou_match(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        if boxes.numel() == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
        return self.proposal_matcher(box_iou(boxes, anchors))

    def _batch_normalized_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched: list[Tensor],
    ) -> dict[str, Tensor]:
        # torchvision's terms (focal loss over the anchors that are not ignored, the box loss over
        # the positives), summed over the batch and divided once by all its positives: per image,
        # a canvas with one small item would weigh its thousands of negatives against 3 positives.
        box_loss_type = self.head.regression_head._loss_type
        classification = regression = positives = head_outputs["cls_logits"].new_zeros(())
        for target, logits, deltas, image_anchors, image_matched in zip(
            targets,
            head_outputs["cls_logits"],
            head_outputs["bbox_regression"],
            anchors,
            matched,
            strict=True,
        ):
            foreground = image_matched >= 0
            gt_classes = torch.zeros_like(logits)
            gt_classes[foreground, target["labels"][image_matched[foreground]]] = 1.0
            valid = image_matched != self.proposal_matcher.BETWEEN_THRESHOLDS
            classification = classification + sigmoid_focal_loss(
                logits[valid], gt_classes[valid], reduction="sum"
            )
            regression = regression + _box_loss(
                box_loss_type,
                self.box_coder,
                image_anchors[foreground],
                target["boxes"][image_matched[foreground]],
                deltas[foreground],
            )
            positives = positives + foreground.sum()
        positives = positives.clamp(min=1)  # on the device: no host sync per image
        return {"classification": classification / positives, "bbox_regression": regression / positives}


class RetinaNetPredictionHead(Float32Predictions, RetinaNetHead):
    """torchvision's RetinaNet head whose predictions are float32 under autocast
    (`detection.models.precision`)."""


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


@register_head("retinanet", neck={"extra_levels": "p6p7", "p6p7_from": "c5"})
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
    assignment: str = "iou",
    atss_topk: int = 9,
    loss_normalization: str = "batch",
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
    head. ``assignment="atss"`` picks the positive anchors by ATSS with `atss_topk` candidates per
    level (`detection.models.heads.atss`; the IoU thresholds are then unused).
    ``loss_normalization="batch"`` (the default here, as in FCOS) divides both losses by the
    positives of the whole batch; ``"image"`` keeps torchvision's division by each image's own
    positives, under which an image with a few small objects weighs its negatives many times over
    (docs/results.md measures the two on FashionDet). Labels are [0, num_classes) in and
    out.
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"unknown box_loss {box_loss!r}; choose one of {BOX_LOSSES}")
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {assignment!r}; choose one of {ASSIGNMENTS}")
    if loss_normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(
            f"unknown loss_normalization {loss_normalization!r}; choose one of {LOSS_NORMALIZATIONS}"
        )
    anchors = anchor_generator(backbone.strides, anchor_scale, scales_per_octave, aspect_ratios, anchor_sizes)
    channels = backbone.out_channels
    head = RetinaNetPredictionHead(
        channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=None
    )
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
    model.assignment, model.atss_topk, model.loss_normalization = (
        assignment,
        int(atss_topk),
        loss_normalization,
    )
    model.transform = build_transform(body, min_size, max_size, size_divisible)
    return model
