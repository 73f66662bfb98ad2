"""A YOLOv8-style head: decoupled anchor-free branches, task-aligned assignment, distribution focal loss.

Design:

- Points: one per feature-map cell, at its centre ((i + 0.5) x stride), on every level of the neck
  (`DetectorBackbone.feature_specs`). Each level is read at its own width, so the head also sits on
  ``model/neck=none``, where the backbone's levels differ.
- Branches (decoupled, one pair per level, not shared across levels, as in YOLOv8): box
  (conv3x3-norm-SiLU x `num_convs`, then a 1x1 conv to 4 x `reg_max`) and class (the same, then a
  1x1 conv to C, bias at `prior_probability`).
- Boxes as distributions (GFL: Li et al., "Generalized Focal Loss", NeurIPS 2020): each distance
  left / top / right / bottom from the point, in strides, is a softmax over the bins
  0 .. reg_max - 1, decoded as its expectation. The distribution focal loss (DFL) is the
  cross-entropy against the two bins around the target distance, weighted by its closeness to each.
- Assignment (TOOD: Feng et al., "Task-aligned One-stage Object Detection", ICCV 2021): per box,
  the candidates are the points whose centres lie inside it; their alignment t = s^alpha x u^beta
  (s: the predicted score of the box's class, u: the IoU of the predicted box with the box, both
  detached) ranks them, and the `tal_topk` best are positive. A point positive for several boxes
  goes to the one it overlaps most. Its class target is t rescaled per box so that the box's best
  t becomes the box's best IoU among its positives (a soft, quality-aware label); every other
  class and point has target 0.
- Losses, each divided once by the sum of the class targets over the batch (at least 1): BCE with
  logits over every point and class; 1 - CIoU of the positives' decoded boxes; DFL. The box terms
  weigh each positive by its target score. `box_gain`, `cls_gain`, `dfl_gain` weigh the three.
- Inference: sigmoid scores above `score_thresh`, the `topk_candidates` best (point, class) pairs,
  class-wise NMS, `detections_per_img` kept; every step is a traceable torch op, as in
  torchvision's FCOS.

Everything after the branches (decoding, assignment, losses, NMS) computes in float32: the head's
predictions leave it as float32 under autocast (`Float32Predictions`) and the points are float32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import _topk_min
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, complete_box_iou_loss
from torchvision.ops.misc import Conv2dNormActivation

from detection.models.heads.classes import prior_bias
from detection.models.heads.common import build_transform
from detection.models.heads.contract import Detector, register_head
from detection.models.necks import DetectorBackbone
from detection.models.norms import head_norm_layer
from detection.models.precision import Float32Predictions

__all__ = [
    "YOLOv8Detector",
    "YOLOv8Head",
    "YOLOv8PredictionHead",
    "build_yolov8",
    "distribution_focal_loss",
    "task_aligned_assign",
]

HEAD_NORMS = ("bn", "gn", "none")


def _norm_layer(head_norm: str | None) -> Callable[[int], nn.Module] | None:
    head_norm = head_norm or "none"  # YAML null reads as None
    if head_norm not in HEAD_NORMS:
        raise ValueError(f"unknown head_norm {head_norm!r}; choose one of {HEAD_NORMS}")
    if head_norm == "bn":  # YOLOv8's; synchronised under DDP like every BatchNorm (trainer.sync_batchnorm)
        return nn.BatchNorm2d
    # None, not Identity: Conv2dNormActivation then keeps the conv's bias
    return None if head_norm == "none" else head_norm_layer(head_norm)


def _branch(
    in_channels: int, channels: int, outputs: int, num_convs: int, norm: Callable | None, last: str
) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(num_convs):
        c_in = in_channels if i == 0 else channels
        layers[str(i)] = Conv2dNormActivation(c_in, channels, 3, norm_layer=norm, activation_layer=nn.SiLU)
    # the last layer by name, so hooks and tools find it (replace_classifier, export's score spread)
    layers[last] = nn.Conv2d(channels if num_convs else in_channels, outputs, 1)
    return nn.Sequential(layers)


class YOLOv8Head(nn.Module):
    """Per level a box and a class branch; ``forward(features)`` -> ``{"cls_logits" [N, A, C],
    "box_logits" [N, A, 4 x reg_max]}`` over the A points of all levels (row-major per level)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        reg_max: int,
        num_convs: int,
        box_channels: int,
        cls_channels: int,
        head_norm: str | None,
        prior_probability: float,
    ) -> None:
        super().__init__()
        norm = _norm_layer(head_norm)
        self.num_classes, self.reg_max = num_classes, reg_max
        self.box_branches = nn.ModuleList(
            _branch(c, box_channels, 4 * reg_max, num_convs, norm, "box_logits") for c in in_channels
        )
        self.cls_branches = nn.ModuleList(
            _branch(c, cls_channels, num_classes, num_convs, norm, "cls_logits") for c in in_channels
        )
        self.replace_classifier(num_classes, prior_probability)

    def replace_classifier(self, num_classes: int, prior_probability: float) -> None:
        """A fresh class conv on every level (default init, bias at the prior); the rest kept."""
        for branch in self.cls_branches:
            old = branch.cls_logits
            new = nn.Conv2d(old.in_channels, num_classes, 1)
            nn.init.constant_(new.bias, prior_bias(prior_probability))
            branch.cls_logits = new.to(old.weight)
        self.num_classes = num_classes

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        def flat(x: Tensor) -> Tensor:  # [N, K, H, W] -> [N, H x W, K]
            return x.permute(0, 2, 3, 1).flatten(1, 2)

        cls = [flat(branch(f)) for branch, f in zip(self.cls_branches, features, strict=True)]
        box = [flat(branch(f)) for branch, f in zip(self.box_branches, features, strict=True)]
        return {"cls_logits": torch.cat(cls, 1), "box_logits": torch.cat(box, 1)}


class YOLOv8PredictionHead(Float32Predictions, YOLOv8Head):
    """`YOLOv8Head` whose predictions are float32 under autocast (`detection.models.precision`)."""


def cell_centres(features: Sequence[Tensor], strides: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The points [A, 2] (x, y input pixels, float32) of all levels and each one's stride [A]."""
    points, point_strides = [], []
    for feature, stride in zip(features, strides, strict=True):
        h, w = feature.shape[-2:]
        ys = (torch.arange(h, device=feature.device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, device=feature.device, dtype=torch.float32) + 0.5) * stride
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((x, y), -1).reshape(-1, 2))
        point_strides.append(torch.full_like(x, float(stride)).reshape(-1))
    return torch.cat(points), torch.cat(point_strides)


def decode_boxes(box_logits: Tensor, points: Tensor, strides: Tensor) -> Tensor:
    """xyxy boxes [..., 4] from distributions [..., 4 x reg_max]: each side the expected bin x stride."""
    reg_max = box_logits.shape[-1] // 4
    probabilities = box_logits.unflatten(-1, (4, reg_max)).softmax(-1)
    bins = torch.arange(reg_max, dtype=probabilities.dtype, device=probabilities.device)
    # a product and a sum, not a matmul: autocast lowers matmul's float32 inputs to 16 bits
    distances = (probabilities * bins).sum(-1) * strides[..., None]  # left, top, right, bottom
    return torch.cat((points - distances[..., :2], points + distances[..., 2:]), -1)


def distribution_focal_loss(box_logits: Tensor, distances: Tensor) -> Tensor:
    """GFL's DFL per positive [P] (the mean over its four sides): `box_logits` [P, 4 x reg_max], the
    target `distances` [P, 4] in bins; cross-entropy against the two bins around each distance,
    each weighted by its closeness to it."""
    reg_max = box_logits.shape[-1] // 4
    distances = distances.clamp(0, reg_max - 1 - 0.01).flatten()  # the upper bin must exist
    left = distances.long()  # floor: distances >= 0
    left_weight = (left + 1) - distances
    logits = box_logits.reshape(-1, reg_max)
    loss = F.cross_entropy(logits, left, reduction="none") * left_weight
    loss = loss + F.cross_entropy(logits, left + 1, reduction="none") * (1 - left_weight)
    return loss.view(-1, 4).mean(-1)


@torch.no_grad()
def task_aligned_assign(
    scores: Tensor,
    boxes: Tensor,
    points: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
) -> tuple[Tensor, Tensor, Tensor]:
    """TOOD's assignment on one image (module docstring), vectorised over boxes and points.

    `scores` [A, C] predicted probabilities, `boxes` [A, 4] predicted xyxy, `points` [A, 2],
    `gt_boxes` [G, 4], `gt_labels` [G]. Returns the box each point is positive for, or -1 [A];
    that box [A, 4] (zeros for negatives); the soft class targets [A, C].
    """
    num_points, num_classes = scores.shape
    if gt_boxes.numel() == 0:
        return (
            torch.full((num_points,), -1, dtype=torch.int64, device=scores.device),
            scores.new_zeros((num_points, 4)),
            scores.new_zeros((num_points, num_classes)),
        )
    x, y = points[:, 0], points[:, 1]
    inside = (
        (x > gt_boxes[:, 0:1]) & (x < gt_boxes[:, 2:3]) & (y > gt_boxes[:, 1:2]) & (y < gt_boxes[:, 3:4])
    )  # [G, A]
    iou = box_iou(gt_boxes, boxes).clamp(min=0)
    metric = scores[:, gt_labels].T.pow(alpha) * iou.pow(beta) * inside
    # rank the candidates above every outside point, so that ties at 0 (early in training) still
    # fill a box's top-k with its own points
    top = torch.where(inside, metric, -1.0).topk(min(int(topk), num_points), dim=1).indices
    positive = torch.zeros_like(inside).scatter_(1, top, True) & inside
    # a point positive for several boxes keeps the one it overlaps most
    best = torch.where(positive, iou, -1.0).argmax(0)  # [A]
    positive &= torch.arange(len(gt_boxes), device=best.device)[:, None] == best
    foreground = positive.any(0)
    metric, iou = metric * positive, iou * positive
    # per box, t rescaled so that its largest t becomes its largest IoU among its positives
    quality = (metric * iou.amax(1, keepdim=True) / (metric.amax(1, keepdim=True) + eps)).amax(0)
    targets = F.one_hot(gt_labels[best], num_classes).to(scores.dtype) * quality[:, None]
    matched = torch.where(foreground, best, -1)
    return matched, gt_boxes[best] * foreground[:, None], targets


class YOLOv8Detector(Detector, nn.Module):
    """A YOLOv8-style detector under the head contract (`Detector`; design in the module docstring).

    ``forward(images, targets)``: images a list of float [3, H, W] in [0, 1]. In train mode,
    targets ``[{"boxes" [G, 4] xyxy pixels, "labels" [G] in [0, C)}]`` (G may be 0), and it returns
    ``{"classification", "box_iou", "box_dfl"}``, weighted by their gains (their sum is the loss).
    In eval mode one ``{"boxes" [N, 4] xyxy input pixels, "scores" [N], "labels" [N]}`` per image.
    """

    def __init__(
        self,
        backbone: DetectorBackbone,
        head: YOLOv8PredictionHead,
        transform: nn.Module,
        num_classes: int,
        *,
        tal_topk: int,
        tal_alpha: float,
        tal_beta: float,
        box_gain: float,
        cls_gain: float,
        dfl_gain: float,
        score_thresh: float,
        nms_thresh: float,
        topk_candidates: int,
        detections_per_img: int,
    ) -> None:
        super().__init__()
        self.backbone, self.head, self.transform, self.num_classes = backbone, head, transform, num_classes
        self.tal_topk, self.tal_alpha, self.tal_beta = tal_topk, tal_alpha, tal_beta
        self.box_gain, self.cls_gain, self.dfl_gain = box_gain, cls_gain, dfl_gain
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.topk_candidates, self.detections_per_img = topk_candidates, detections_per_img

    def replace_classifier(self, num_classes: int, prior_probability: float = 0.01) -> None:
        self.head.replace_classifier(num_classes, prior_probability)
        self.num_classes = num_classes

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("in train mode the detector needs targets: [{'boxes', 'labels'}] per image")
        original_sizes = [(img.shape[-2], img.shape[-1]) for img in images]
        images, targets = self.transform(images, targets)
        maps = self.backbone(images.tensors)
        features = [maps[name] for name in self.backbone.names]
        outputs = self.head(features)
        points, strides = cell_centres(features, self.backbone.strides)
        if self.training:
            return self.compute_loss(targets, outputs, points, strides)
        detections = self.postprocess_detections(outputs, points, strides, images.image_sizes)
        return self.transform.postprocess(detections, images.image_sizes, original_sizes)

    def compute_loss(
        self, targets: list[dict[str, Tensor]], outputs: dict[str, Tensor], points: Tensor, strides: Tensor
    ) -> dict[str, Tensor]:
        cls_logits, box_logits = outputs["cls_logits"], outputs["box_logits"]
        boxes = decode_boxes(box_logits, points, strides)  # [N, A, 4]
        scores = cls_logits.detach().sigmoid()
        knobs = {"topk": self.tal_topk, "alpha": self.tal_alpha, "beta": self.tal_beta}
        assigned = [
            task_aligned_assign(s, b, points, t["boxes"], t["labels"], **knobs)
            for s, b, t in zip(scores, boxes.detach(), targets, strict=True)
        ]
        matched, target_boxes, target_scores = (torch.stack(parts) for parts in zip(*assigned, strict=True))
        # one normaliser for the batch: an image with few small objects does not outweigh the others
        total = target_scores.sum().clamp(min=1)
        classification = F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="sum")
        foreground = matched >= 0
        weight = target_scores.sum(-1)[foreground]
        target_boxes = target_boxes[foreground]
        box_iou_loss = complete_box_iou_loss(boxes[foreground], target_boxes, reduction="none")
        # the target's distances from each positive's point, in strides (the bins' unit)
        at = points.expand_as(boxes[..., :2])[foreground]
        stride = strides.expand_as(boxes[..., 0])[foreground, None]
        distances = torch.cat((at - target_boxes[:, :2], target_boxes[:, 2:] - at), -1) / stride
        dfl = distribution_focal_loss(box_logits[foreground], distances)
        return {
            "classification": self.cls_gain * classification / total,
            "box_iou": self.box_gain * (box_iou_loss * weight).sum() / total,
            "box_dfl": self.dfl_gain * (dfl * weight).sum() / total,
        }

    def postprocess_detections(
        self, outputs: dict[str, Tensor], points: Tensor, strides: Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        detections = []
        for index, size in enumerate(image_sizes):  # by index: iterating a tensor warns when traced
            cls_logits, box_logits = outputs["cls_logits"][index], outputs["box_logits"][index]
            num_classes = cls_logits.shape[-1]
            scores = cls_logits.sigmoid().flatten()
            keep = scores > self.score_thresh
            scores, index = scores[keep], torch.where(keep)[0]
            # _topk_min: a k that stays symbolic when traced (torchvision's FCOS does the same)
            scores, order = scores.topk(_topk_min(index, self.topk_candidates, 0))
            index = index[order]
            point, labels = torch.div(index, num_classes, rounding_mode="floor"), index % num_classes
            boxes = decode_boxes(box_logits[point], points[point], strides[point])
            boxes = clip_boxes_to_image(boxes, size)
            kept = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
        return detections


@register_head("yolov8", neck={"extra_levels": "none"})
def build_yolov8(
    backbone: DetectorBackbone,
    num_classes: int,
    *,
    min_size: int = 128,
    max_size: int = 128,
    size_divisible: int = 32,
    num_convs: int = 2,
    box_channels: int | None = None,
    cls_channels: int | None = None,
    head_norm: str | None = "bn",
    reg_max: int = 16,
    prior_probability: float = 0.01,
    tal_topk: int = 10,
    tal_alpha: float = 0.5,
    tal_beta: float = 6.0,
    box_gain: float = 7.5,
    cls_gain: float = 0.5,
    dfl_gain: float = 1.5,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    topk_candidates: int = 1000,
    detections_per_img: int = 100,
) -> YOLOv8Detector:
    """A YOLOv8-style head on the neck's levels (P3-P5 by default: no extra levels).

    `box_channels` / `cls_channels` None take YOLOv8's widths from the first level's width c:
    max(16, c / 4, 4 x reg_max) and max(c, min(C, 100)). `head_norm` is "bn" (YOLOv8's), "gn" or
    "none". The TAL knobs (`tal_topk`, `tal_alpha`, `tal_beta`) and the loss gains default to
    YOLOv8's. Labels are [0, num_classes) in and out.
    """
    if int(reg_max) < 2:
        raise ValueError(f"reg_max must be at least 2 (bins per box side), got {reg_max}")
    if int(num_convs) < 0 or int(tal_topk) < 1:
        raise ValueError(f"num_convs must be >= 0 and tal_topk >= 1, got {num_convs} and {tal_topk}")
    widths = [spec.channels for spec in backbone.feature_specs]
    head = YOLOv8PredictionHead(
        widths,
        num_classes,
        reg_max=int(reg_max),
        num_convs=int(num_convs),
        box_channels=int(box_channels or max(16, widths[0] // 4, 4 * int(reg_max))),
        cls_channels=int(cls_channels or max(widths[0], min(num_classes, 100))),
        head_norm=head_norm,
        prior_probability=float(prior_probability),
    )
    return YOLOv8Detector(
        backbone,
        head,
        build_transform(backbone.body, min_size, max_size, size_divisible),
        num_classes,
        tal_topk=int(tal_topk),
        tal_alpha=float(tal_alpha),
        tal_beta=float(tal_beta),
        box_gain=float(box_gain),
        cls_gain=float(cls_gain),
        dfl_gain=float(dfl_gain),
        score_thresh=float(score_thresh),
        nms_thresh=float(nms_thresh),
        topk_candidates=int(topk_candidates),
        detections_per_img=int(detections_per_img),
    )
