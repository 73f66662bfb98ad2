"""Faster R-CNN with FPN, assembled from torchvision's GeneralizedRCNN / RPN / RoIHeads.

`RCNN`, `build_rpn` and `build_roi_heads` are shared with Light-Head R-CNN. The classes are
[0, num_classes) at the interface; inside, class 0 is background, so targets are shifted +1 on
the way in (on copies: the caller's dicts are not touched) and detections -1 on the way out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from detection.models.heads.common import DetectionTransform, anchor_generator, build_transform
from detection.models.necks import DetectorBackbone


class RCNN(GeneralizedRCNN):
    """GeneralizedRCNN whose labels are [0, num_classes) in and out (background handled inside)."""

    def __init__(
        self,
        backbone: DetectorBackbone,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        transform: DetectionTransform,
        num_classes: int,
    ) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.num_classes = int(num_classes)

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if targets is not None:
            targets = [{**t, "labels": t["labels"] + 1} for t in targets]
        out = super().forward(images, targets)
        if self.training:
            return out
        return [{**d, "labels": d["labels"] - 1} for d in out]


class FeatureSelectRPN(RegionProposalNetwork):
    """An RPN that runs on the named feature maps only (the backbone may return more)."""

    def __init__(self, feature_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.feature_names = list(feature_names)

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        selected = OrderedDict((name, features[name]) for name in self.feature_names)
        return super().forward(images, selected, targets)


def build_rpn(
    backbone: DetectorBackbone,
    *,
    anchor_scale: float,
    aspect_ratios: Sequence[float],
    head_convs: int,
    pre_nms_top_n_train: int,
    pre_nms_top_n_test: int,
    post_nms_top_n_train: int,
    post_nms_top_n_test: int,
    nms_thresh: float,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    batch_size_per_image: int,
    positive_fraction: float,
    score_thresh: float,
) -> FeatureSelectRPN:
    """RPN over every FPN level with one anchor size per level (anchor_scale x stride)."""
    anchors = anchor_generator(backbone.strides, anchor_scale, 1, aspect_ratios)
    head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=int(head_convs))
    return FeatureSelectRPN(
        backbone.names,
        anchor_generator=anchors,
        head=head,
        fg_iou_thresh=float(fg_iou_thresh),
        bg_iou_thresh=float(bg_iou_thresh),
        batch_size_per_image=int(batch_size_per_image),
        positive_fraction=float(positive_fraction),
        pre_nms_top_n={"training": int(pre_nms_top_n_train), "testing": int(pre_nms_top_n_test)},
        post_nms_top_n={"training": int(post_nms_top_n_train), "testing": int(post_nms_top_n_test)},
        nms_thresh=float(nms_thresh),
        score_thresh=float(score_thresh),
    )


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
        FastRCNNPredictor(int(representation_size), int(num_classes) + 1),
        float(fg_iou_thresh),
        float(bg_iou_thresh),
        int(batch_size_per_image),
        float(positive_fraction),
        tuple(float(w) for w in bbox_reg_weights) if bbox_reg_weights is not None else None,
        float(score_thresh),
        float(nms_thresh),
        int(detections_per_img),
    )


def build_faster_rcnn(
    backbone: DetectorBackbone,
    num_classes: int,
    *,
    min_size: int = 128,
    max_size: int = 128,
    size_divisible: int = 32,
    anchor_scale: float = 4.0,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_head_convs: int = 1,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_thresh: float = 0.7,
    rpn_fg_iou_thresh: float = 0.7,
    rpn_bg_iou_thresh: float = 0.3,
    rpn_batch_size_per_image: int = 256,
    rpn_positive_fraction: float = 0.5,
    rpn_score_thresh: float = 0.0,
    roi_output_size: int = 7,
    roi_sampling_ratio: int = 2,
    roi_canonical_scale: int = 224,
    roi_canonical_level: int = 4,
    representation_size: int = 1024,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
    box_fg_iou_thresh: float = 0.5,
    box_bg_iou_thresh: float = 0.5,
    box_batch_size_per_image: int = 512,
    box_positive_fraction: float = 0.25,
    bbox_reg_weights: Sequence[float] | None = None,
) -> RCNN:
    """Faster R-CNN: RPN on every FPN level, MultiScaleRoIAlign over the FPN levels that come from
    the backbone (not the extra ones), TwoMLPHead (`representation_size`) and the predictors.

    Anchors: one size per level, ``anchor_scale x stride`` with `aspect_ratios`; the default 4
    gives 32 px at stride 8, the smallest anchor of the usual P2-P6 setting (8 x stride from 4).
    The knobs mirror `torchvision.models.detection.FasterRCNN`'s (``rpn_*``, ``box_*``).
    """
    rpn = build_rpn(
        backbone,
        anchor_scale=anchor_scale,
        aspect_ratios=aspect_ratios,
        head_convs=rpn_head_convs,
        pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        post_nms_top_n_train=rpn_post_nms_top_n_train,
        post_nms_top_n_test=rpn_post_nms_top_n_test,
        nms_thresh=rpn_nms_thresh,
        fg_iou_thresh=rpn_fg_iou_thresh,
        bg_iou_thresh=rpn_bg_iou_thresh,
        batch_size_per_image=rpn_batch_size_per_image,
        positive_fraction=rpn_positive_fraction,
        score_thresh=rpn_score_thresh,
    )
    pooled_levels = backbone.names[: len(backbone.body.levels)]
    roi_pool = MultiScaleRoIAlign(
        pooled_levels,
        output_size=int(roi_output_size),
        sampling_ratio=int(roi_sampling_ratio),
        canonical_scale=int(roi_canonical_scale),
        canonical_level=int(roi_canonical_level),
    )
    box_head = TwoMLPHead(backbone.out_channels * int(roi_output_size) ** 2, int(representation_size))
    roi_heads = build_roi_heads(
        roi_pool,
        box_head,
        representation_size,
        num_classes,
        fg_iou_thresh=box_fg_iou_thresh,
        bg_iou_thresh=box_bg_iou_thresh,
        batch_size_per_image=box_batch_size_per_image,
        positive_fraction=box_positive_fraction,
        bbox_reg_weights=bbox_reg_weights,
        score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh,
        detections_per_img=box_detections_per_img,
    )
    transform = build_transform(backbone.body, min_size, max_size, size_divisible)
    return RCNN(backbone, rpn, roi_heads, transform, num_classes)
