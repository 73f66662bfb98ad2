"""The R-CNN machinery both two-stage heads share: torchvision's GeneralizedRCNN, RPN and RoIHeads.

`build_rcnn` wires a `DetectorBackbone`, an RPN on its FPN levels and RoIHeads around the RoI
subnet a head passes in (`box_roi_pool` and `box_head`): Faster R-CNN passes MultiScaleRoIAlign and
two large fully connected layers, Light-Head R-CNN its thin map, PS-RoIAlign and one layer. Its
keyword-only options are every R-CNN head's knobs (``rpn_*``, ``box_*``, anchors, input size).

The classes are [0, num_classes) at the interface; inside, class 0 is background, so targets are
shifted +1 on the way in (on copies: the caller's dicts are not touched) and detections -1 on the
way out.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads

from detection.models.heads.anchors import COVERAGE_KNOB, Coverage, anchor_coverage
from detection.models.heads.classes import replace_rcnn_predictor
from detection.models.heads.common import DetectionTransform, build_transform
from detection.models.heads.contract import Detector
from detection.models.heads.rcnn.roi import build_roi_heads
from detection.models.heads.rcnn.rpn import FeatureSelectRPN, build_rpn
from detection.models.necks import DetectorBackbone

__all__ = [
    "COCO_COUNTS",
    "RCNN",
    "FeatureSelectRPN",
    "build_rcnn",
    "build_roi_heads",
    "build_rpn",
    "proposal_counts",
]


class RCNN(Detector, GeneralizedRCNN):
    """GeneralizedRCNN under the head contract (`Detector`), whose labels are [0, num_classes) in
    and out (background handled inside). Anchors: the RPN's."""

    def __init__(
        self,
        backbone: DetectorBackbone,
        rpn: FeatureSelectRPN,
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

    def anchor_coverage(self, boxes: Sequence[Tensor], input_sizes: Sequence[tuple[int, int]]) -> Coverage:
        rpn = self.rpn
        threshold = rpn.proposal_matcher.high_threshold
        strides = self.backbone.strides
        return anchor_coverage(
            "RPN anchors", rpn.anchor_generator, strides, boxes, input_sizes, threshold, COVERAGE_KNOB
        )

    def sized_anchor_generator(self) -> AnchorGenerator:
        return self.rpn.anchor_generator

    def replace_classifier(self, num_classes: int, prior_probability: float = 0.01) -> None:
        replace_rcnn_predictor(self, num_classes)


# torchvision's Faster R-CNN values, made for COCO inputs resized to 800 x 1333
COCO_COUNTS = {
    "rpn_pre_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_test": 1000,
    "rpn_batch_size_per_image": 256,
    "box_batch_size_per_image": 512,
}
_COUNT_FLOORS = {
    "rpn_pre_nms_top_n_train": 200,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 100,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
}


def proposal_counts(min_size: int, max_size: int) -> dict[str, int]:
    """RPN top-n and sampling counts for inputs of `min_size` x `max_size`.

    The COCO values scaled by the input area against COCO's 800 x 1333 (anchors, and so
    proposals worth keeping, grow with the area), never above them and never below a floor that
    keeps recall on small inputs. 128 px (FashionDet): 200 / 100 pre-NMS (train / test), 100 / 100
    post-NMS, 64 RPN and 64 box samples per image; 800 x 1333 and above: the COCO values. Detections
    per image stay 100 (COCO's mAP counts the best 100).
    """
    scale = min(1.0, (int(min_size) * int(max_size)) / (800 * 1333))
    return {k: max(_COUNT_FLOORS[k], round(v * scale)) for k, v in COCO_COUNTS.items()}


def build_rcnn(
    backbone: DetectorBackbone,
    num_classes: int,
    box_roi_pool: nn.Module,
    box_head: nn.Module,
    representation_size: int,
    detector_class: type[RCNN] | None = None,
    *,
    min_size: int = 128,
    max_size: int = 128,
    size_divisible: int = 32,
    anchor_scale: float = 4.0,
    anchor_sizes: Sequence[Sequence[float]] | None = None,
    scales_per_octave: int = 1,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_head_convs: int = 1,
    rpn_pre_nms_top_n_train: int | None = None,
    rpn_pre_nms_top_n_test: int | None = None,
    rpn_post_nms_top_n_train: int | None = None,
    rpn_post_nms_top_n_test: int | None = None,
    rpn_nms_thresh: float = 0.7,
    rpn_fg_iou_thresh: float = 0.7,
    rpn_bg_iou_thresh: float = 0.3,
    rpn_batch_size_per_image: int | None = None,
    rpn_positive_fraction: float = 0.5,
    rpn_score_thresh: float = 0.0,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
    box_fg_iou_thresh: float = 0.5,
    box_bg_iou_thresh: float = 0.5,
    box_batch_size_per_image: int | None = None,
    box_positive_fraction: float = 0.25,
    bbox_reg_weights: Sequence[float] | None = None,
) -> RCNN:
    """An R-CNN (`detector_class`, an `RCNN` by default) around the RoI subnet (`box_roi_pool` ->
    `box_head` -> `representation_size`).

    Anchors: ``scales_per_octave`` sizes per FPN level from ``anchor_scale x stride`` (or
    `anchor_sizes`) with `aspect_ratios`; the default (4, one size) gives 32 px at stride 8, the
    smallest anchor of the usual P2-P6 setting (8 x stride from 4). The ``rpn_*`` and ``box_*`` knobs mirror
    `torchvision.models.detection.FasterRCNN`'s; the proposal and sampling counts left at None
    follow the input size (`proposal_counts`).
    """
    counts = proposal_counts(min_size, max_size)
    given = {
        "rpn_pre_nms_top_n_train": rpn_pre_nms_top_n_train,
        "rpn_pre_nms_top_n_test": rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_train": rpn_post_nms_top_n_train,
        "rpn_post_nms_top_n_test": rpn_post_nms_top_n_test,
        "rpn_batch_size_per_image": rpn_batch_size_per_image,
        "box_batch_size_per_image": box_batch_size_per_image,
    }
    counts.update({k: int(v) for k, v in given.items() if v is not None})
    rpn = build_rpn(
        backbone,
        anchor_scale=anchor_scale,
        anchor_sizes=anchor_sizes,
        scales_per_octave=scales_per_octave,
        aspect_ratios=aspect_ratios,
        head_convs=rpn_head_convs,
        pre_nms_top_n_train=counts["rpn_pre_nms_top_n_train"],
        pre_nms_top_n_test=counts["rpn_pre_nms_top_n_test"],
        post_nms_top_n_train=counts["rpn_post_nms_top_n_train"],
        post_nms_top_n_test=counts["rpn_post_nms_top_n_test"],
        nms_thresh=rpn_nms_thresh,
        fg_iou_thresh=rpn_fg_iou_thresh,
        bg_iou_thresh=rpn_bg_iou_thresh,
        batch_size_per_image=counts["rpn_batch_size_per_image"],
        positive_fraction=rpn_positive_fraction,
        score_thresh=rpn_score_thresh,
    )
    roi_heads = build_roi_heads(
        box_roi_pool,
        box_head,
        representation_size,
        num_classes,
        fg_iou_thresh=box_fg_iou_thresh,
        bg_iou_thresh=box_bg_iou_thresh,
        batch_size_per_image=counts["box_batch_size_per_image"],
        positive_fraction=box_positive_fraction,
        bbox_reg_weights=bbox_reg_weights,
        score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh,
        detections_per_img=box_detections_per_img,
    )
    transform = build_transform(backbone.body, min_size, max_size, size_divisible)
    return (detector_class or RCNN)(backbone, rpn, roi_heads, transform, num_classes)
