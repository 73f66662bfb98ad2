"""Adaptive training sample selection (ATSS; Zhang et al., 2020) for anchor-based heads.

A fixed IoU threshold decides positives well only where anchors are dense against the objects
(COCO boxes on 800 px inputs). On small canvases the coarse levels hold a handful of anchors, and
a box between two anchor centres reaches the threshold with few of them or none. ATSS sets the
threshold per box instead: on each level it takes the `topk` anchors whose centres lie closest to
the box's centre, and makes positive those among them whose IoU with the box is at least the mean
plus the standard deviation of these candidates' IoUs, and whose centre lies inside the box. An
anchor positive for several boxes goes to the one it overlaps most; every other anchor is a
negative (there is no ignored band).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

ASSIGNMENTS = ("iou", "atss")


def atss_assign(
    boxes: Tensor, anchors: Tensor, num_anchors_per_level: Sequence[int], topk: int = 9
) -> Tensor:
    """Per anchor, the index of the box it is positive for, or -1 (a negative).

    `boxes` [G, 4] and `anchors` [A, 4] are xyxy; `anchors` are ordered level by level with
    `num_anchors_per_level` of them on each level (torchvision's anchor order).
    """
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    if boxes.numel() == 0:
        return matched
    if sum(num_anchors_per_level) != anchors.shape[0]:
        raise ValueError(
            f"num_anchors_per_level {list(num_anchors_per_level)} sums to {sum(num_anchors_per_level)}, "
            f"but there are {anchors.shape[0]} anchors"
        )
    iou = box_iou(boxes, anchors)  # [G, A]
    box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    distance = torch.cdist(box_centres, anchor_centres)  # [G, A]
    candidates, start = [], 0
    for count in num_anchors_per_level:
        k = min(int(topk), int(count))
        if k > 0:
            nearest = distance[:, start : start + count].topk(k, dim=1, largest=False).indices
            candidates.append(nearest + start)
        start += count
    candidate = torch.cat(candidates, dim=1)  # [G, K]
    candidate_iou = iou.gather(1, candidate)
    spread = candidate_iou.std(dim=1, keepdim=True) if candidate.shape[1] > 1 else 0.0
    threshold = candidate_iou.mean(dim=1, keepdim=True) + spread
    centre = anchor_centres[candidate]  # [G, K, 2]
    inside = (centre > boxes[:, None, :2]).all(dim=2) & (centre < boxes[:, None, 2:]).all(dim=2)
    positive = (candidate_iou >= threshold) & inside & (candidate_iou > 0)
    # the IoU of each (box, anchor) pair that is positive; -1 elsewhere
    positive_iou = torch.full_like(iou, -1.0)
    box_index = torch.arange(boxes.shape[0], device=boxes.device)[:, None].expand_as(candidate)
    positive_iou[box_index[positive], candidate[positive]] = candidate_iou[positive]
    best_iou, best_box = positive_iou.max(dim=0)
    return torch.where(best_iou > 0, best_box, matched)
