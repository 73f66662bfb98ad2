"""Per-class precision-recall and a confusion matrix for detections, at one IoU threshold.

Inputs are per image: predictions ``{"boxes" [N,4] xyxy, "scores" [N], "labels" [N]}`` and targets
``{"boxes" [M,4], "labels" [M]}`` as numpy arrays or tensors, labels in [0, C).

- `pr_curves`: for each class, detections of that class over all images sorted by score; a
  detection is a true positive when it overlaps a not yet matched ground-truth box of its class
  by IoU >= `iou_thresh` (greedy in score order, as in COCO and VOC). AP is the area under the
  interpolated curve sampled at 101 recall points (COCO's rule) at that single IoU.
- `confusion_matrix`: detections with score >= `score_thresh` are matched to ground truth
  class-agnostically, highest IoU first, one-to-one, IoU >= `iou_thresh`; matched pairs count at
  [true class, predicted class], unmatched ground truth at [true class, background] (missed) and
  unmatched detections at [background, predicted class] (false alarm). Rows: truth; columns:
  prediction; the last row and column are background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def to_numpy(value: Any) -> np.ndarray:
    """`value` as a numpy array; floating tensors as float64, whatever their dtype.

    numpy has no bfloat16, and float16 box areas overflow past 255 px sides: detections that
    autocast left in low precision are widened before anything is computed from them.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.double() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class ClassCurve:
    precision: np.ndarray  # at RECALL_POINTS (interpolated)
    ap: float  # NaN when the class has no ground truth
    num_gt: int
    num_det: int


def pr_curves(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_thresh: float = 0.5,
) -> list[ClassCurve]:
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    hits: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    num_gt = np.zeros(num_classes, dtype=np.int64)
    for pred, target in zip(preds, targets, strict=True):
        p_boxes, p_scores, p_labels = (
            to_numpy(pred["boxes"]),
            to_numpy(pred["scores"]),
            to_numpy(pred["labels"]),
        )
        t_boxes, t_labels = to_numpy(target["boxes"]), to_numpy(target["labels"])
        for c in np.unique(np.concatenate([p_labels, t_labels]).astype(np.int64)):
            if not 0 <= c < num_classes:
                continue
            gt = t_boxes[t_labels == c]
            num_gt[c] += len(gt)
            mask = p_labels == c
            if not mask.any():
                continue
            order = np.argsort(-p_scores[mask], kind="stable")
            boxes, s = p_boxes[mask][order], p_scores[mask][order]
            tp = np.zeros(len(boxes), dtype=bool)
            if len(gt):
                iou = box_iou(boxes, gt)
                taken = np.zeros(len(gt), dtype=bool)
                for i in range(len(boxes)):
                    candidates = np.where(taken, -1.0, iou[i])
                    j = int(candidates.argmax())
                    if candidates[j] >= iou_thresh:
                        taken[j] = True
                        tp[i] = True
            scores[c].append(s)
            hits[c].append(tp)
    curves = []
    for c in range(num_classes):
        s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        tp = np.concatenate(hits[c]) if hits[c] else np.zeros(0, dtype=bool)
        curves.append(_curve(s, tp, int(num_gt[c])))
    return curves


def _curve(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> ClassCurve:
    if num_gt == 0:
        return ClassCurve(np.zeros_like(RECALL_POINTS), float("nan"), 0, len(scores))
    if len(scores) == 0:
        return ClassCurve(np.zeros_like(RECALL_POINTS), 0.0, num_gt, 0)
    order = np.argsort(-scores, kind="stable")
    tp = tp[order]
    tps = np.cumsum(tp)
    fps = np.cumsum(~tp)
    recall = tps / num_gt
    precision = tps / np.maximum(tps + fps, 1)
    # the interpolated precision at recall r is the best precision at any recall >= r
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)
    return ClassCurve(sampled, float(sampled.mean()), num_gt, len(scores))


def confusion_matrix(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_thresh: float = 0.5,
    score_thresh: float = 0.3,
) -> np.ndarray:
    background = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for pred, target in zip(preds, targets, strict=True):
        keep = to_numpy(pred["scores"]) >= score_thresh
        p_boxes, p_labels = to_numpy(pred["boxes"])[keep], to_numpy(pred["labels"])[keep].astype(np.int64)
        t_boxes, t_labels = to_numpy(target["boxes"]), to_numpy(target["labels"]).astype(np.int64)
        iou = box_iou(t_boxes, p_boxes)
        pairs = np.argwhere(iou >= iou_thresh)
        used_t = np.zeros(len(t_boxes), dtype=bool)
        used_p = np.zeros(len(p_boxes), dtype=bool)
        for t, p in pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]:
            if not used_t[t] and not used_p[p]:
                used_t[t] = used_p[p] = True
                matrix[t_labels[t], p_labels[p]] += 1
        np.add.at(matrix, (t_labels[~used_t], background), 1)
        np.add.at(matrix, (background, p_labels[~used_p]), 1)
    return matrix
