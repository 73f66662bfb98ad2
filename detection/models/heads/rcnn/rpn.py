"""The region proposal network of both R-CNN heads: torchvision's RPN on the named FPN levels."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from detection.models.heads.anchors import anchor_generator
from detection.models.necks import DetectorBackbone
from detection.models.precision import Float32Predictions


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


class RPNPredictionHead(Float32Predictions, RPNHead):
    """torchvision's RPN head whose objectness and deltas are float32 under autocast
    (`detection.models.precision`): the proposals are decoded and suppressed in float32."""


def build_rpn(
    backbone: DetectorBackbone,
    *,
    anchor_scale: float,
    anchor_sizes: Sequence[Sequence[float]] | None,
    scales_per_octave: int,
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
    """RPN over every FPN level; anchors ``anchor_scale x stride x 2**(i / scales_per_octave)``, or
    `anchor_sizes` (one list per level)."""
    anchors = anchor_generator(backbone.strides, anchor_scale, scales_per_octave, aspect_ratios, anchor_sizes)
    head = RPNPredictionHead(
        backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=int(head_convs)
    )
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
