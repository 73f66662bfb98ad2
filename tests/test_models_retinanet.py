"""RetinaNet's sample selection (ATSS) and loss normalisation, on real anchors and a real head."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from detection.models import build_detector
from detection.models.heads.anchors import _grid_anchors, anchor_generator
from detection.models.heads.atss import atss_assign

STRIDES = (8, 16, 32)
# FashionDet-like items on a 128 px canvas: 13 to 64 px, one pair overlapping
BOXES = torch.tensor(
    [[10.0, 12.0, 23.0, 26.0], [40.0, 36.0, 100.0, 100.0], [96.0, 4.0, 118.0, 60.0], [50.0, 40.0, 90.0, 80.0]]
)


def _anchors(scale: float = 8.0) -> tuple[torch.Tensor, list[int]]:
    generator = anchor_generator(STRIDES, scale, 1, (1.0,))
    return _grid_anchors(generator, STRIDES, 128, 128)


def test_atss_gives_every_box_positives_whose_centres_lie_inside_it() -> None:
    anchors, counts = _anchors()
    matched = atss_assign(BOXES, anchors, counts)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    iou = box_iou(BOXES, anchors)
    for index, box in enumerate(BOXES):
        positives = (matched == index).nonzero().flatten()
        assert len(positives) >= 1, f"box {index} has no positive anchor"
        inside = (centres[positives] > box[:2]).all(1) & (centres[positives] < box[2:]).all(1)
        assert inside.all()
    # each box's positives do not depend on the other boxes; an anchor positive for several boxes
    # belongs to the one it overlaps most
    alone = torch.stack([atss_assign(BOXES[j : j + 1], anchors, counts) == 0 for j in range(len(BOXES))])
    positive = matched >= 0
    assert torch.equal(positive, alone.any(dim=0))
    contested = (alone.sum(dim=0) > 1).nonzero().flatten()
    assert len(contested) > 0  # the two overlapping items share candidates
    for anchor in contested:
        owners = alone[:, anchor].nonzero().flatten()
        assert matched[anchor] == owners[iou[owners, anchor].argmax()]
    # anchors whose centre lies in no box are negatives
    in_box = (centres[:, None] > BOXES[None, :, :2]).all(2) & (centres[:, None] < BOXES[None, :, 2:]).all(2)
    assert (matched[~in_box.any(dim=1)] == -1).all()
    # with 8 x stride anchors, items of at most 64 px are taken by the finest level, as FCOS takes them
    assert positive[: counts[0]].sum() == positive.sum()


def test_atss_threshold_adapts_to_the_anchor_size() -> None:
    # anchors 16 x stride overlap the items at IoU well under 0.1: a fixed 0.5 (or 0.4) threshold
    # finds no positive for any of them, ATSS still finds some for each
    anchors, counts = _anchors(scale=16.0)
    assert box_iou(BOXES, anchors).max() < 0.3
    matched = atss_assign(BOXES, anchors, counts)
    assert set(matched[matched >= 0].tolist()) == set(range(len(BOXES)))


def test_atss_without_boxes_and_with_wrong_counts() -> None:
    anchors, counts = _anchors()
    assert (atss_assign(torch.zeros((0, 4)), anchors, counts) == -1).all()
    with pytest.raises(ValueError, match="sums to"):
        atss_assign(BOXES, anchors, [counts[0], counts[1]])


@pytest.mark.parametrize("assignment", ["atss", "iou"])
def test_batch_normalisation_weighs_every_positive_alike(assignment: str) -> None:
    """Over the batch, each loss is (sum over images) / (all positives); per image, torchvision's
    mean of each image's own ratio. Checked against single-image runs of the same head."""
    torch.manual_seed(0)
    options = {"assignment": assignment, "fg_iou_thresh": 0.4, "bg_iou_thresh": 0.3, "box_loss": "giou"}
    backbone = {"name": "resnet18", "weights": None, "norm": "frozen_bn"}
    neck = {"out_channels": 32, "extra_levels": "none"}  # P3-P5, as the FashionDet recipes
    batch_model = build_detector("retinanet", 3, backbone, neck, loss_normalization="batch", **options)
    image_model = build_detector("retinanet", 3, backbone, neck, loss_normalization="image", **options)
    # a prior of 0.5 instead of 0.01: the negatives then weigh, and the two normalisations part
    torch.nn.init.zeros_(batch_model.head.classification_head.cls_logits.bias)
    image_model.load_state_dict(batch_model.state_dict())
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [
        {"boxes": BOXES[:1], "labels": torch.tensor([0])},
        {"boxes": BOXES, "labels": torch.tensor([0, 1, 2, 1])},
    ]
    batch_model.train(), image_model.train()
    with torch.no_grad():
        together = batch_model(images, targets)
        per_image = image_model(images, targets)
        alone = [image_model([i], [t]) for i, t in zip(images, targets, strict=True)]
    anchors = batch_model.anchor_generator
    counts = anchors.num_anchors_per_level
    grid, _ = _grid_anchors(anchors, batch_model.backbone.strides, 128, 128)
    if assignment == "atss":
        positives = [int((atss_assign(t["boxes"], grid, counts) >= 0).sum()) for t in targets]
    else:
        positives = [int((batch_model._iou_match(t["boxes"], grid) >= 0).sum()) for t in targets]
    assert positives[0] < positives[1]
    for key in ("classification", "bbox_regression"):
        expected = sum(a[key] * n for a, n in zip(alone, positives, strict=True)) / sum(positives)
        assert together[key].item() == pytest.approx(expected.item(), rel=1e-4)
        assert per_image[key].item() == pytest.approx((alone[0][key] + alone[1][key]).item() / 2, rel=1e-4)
        assert together[key].item() != pytest.approx(per_image[key].item(), rel=1e-2)
