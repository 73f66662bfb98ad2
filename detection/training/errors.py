"""Where the missing AP goes: a TIDE-style breakdown of detection errors by type.

Follows Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection Errors" (ECCV 2020).
The authors' `tidecv` package (2020) is unmaintained and fails under numpy 2, and no maintained
library does this, so it is written here by hand, after the paper and tidecv's source.

Matching (per image, detections by descending score, at most `max_dets` per image): a detection is
a true positive when its best IoU with a not yet matched ground-truth box of its own class is
>= t_f (0.5). Every other detection (crowd regions aside, see below) gets exactly one error type,
tested in tidecv's order:

- background: the image has no ground truth;
- localisation: right class, t_b <= IoU <= t_f with the best box of its class (t_b = 0.1);
- classification: IoU >= t_f with a box of another class;
- duplicate: right class, IoU >= t_f with a box that a higher-scoring detection already matched;
- background: IoU <= t_b with every box;
- both: whatever is left (mostly a wrong class at t_b < IoU < t_f).

A ground-truth box that no detection matched is *missed* unless a localisation or classification
error targets it while it is unmatched (fixing that error would find it).

Each dAP is AP50 after the oracle fix of every error of one type, minus AP50 (clamped at 0, as
in tidecv): classification and localisation errors become true positives of the box they target
(its class, their score), the highest-scoring one per box, the others of that type for the same
box are dropped, as is one whose box was already matched; both, duplicate and background errors are
dropped; missed boxes leave the ground-truth count. The types overlap in what they fix, so the dAPs
need not add up to 1 - AP50.

Deviations from tidecv, on purpose: AP50 averages the classes that have ground truth (COCO's rule;
tidecv also counts classes with only false positives, as AP 0), so the AP50 here equals COCO's AP
at IoU 0.5 on crowd-free data with at most `max_dets` detections per image; and the best-scoring
error per box is chosen within one error type (tidecv shares it between the localisation and
classification fixes, so fixing one type can drop a detection the other type would fix).

Crowd regions (``iscrowd``) are not ground truth: an unmatched detection covering more than t_f of
its area with a crowd region of its class is left out, as in tidecv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detection.training.diagnostics import box_iou, to_numpy

__all__ = ["ERROR_TYPES", "average_precision", "error_breakdown", "error_breakdown_arrays"]

ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
RECALL_POINTS = np.linspace(0.0, 1.0, 101)

# codes of the false positives' types (index into ERROR_TYPES); -1: not a false positive
_CLS, _LOC, _BOTH, _DUPE, _BKG = 0, 1, 2, 3, 4


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated AP of one class from its detections (NaN without ground truth)."""
    if num_gt <= 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    tp = np.asarray(is_tp, dtype=bool)[order]
    tps, fps = np.cumsum(tp, dtype=np.float64), np.cumsum(~tp, dtype=np.float64)
    recall = tps / num_gt
    precision = tps / (fps + tps + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)
    return float(sampled.mean())


def error_breakdown(
    ground_truth: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    *,
    pos_thresh: float = 0.5,
    bg_thresh: float = 0.1,
    max_dets: int = 100,
) -> dict[str, float]:
    """AP50 and the dAP of each error type from COCO-format files.

    Args:
        ground_truth: a COCO data set dict (``images``, ``annotations`` with xywh ``bbox``).
        detections: COCO results (``image_id``, ``category_id``, xywh ``bbox``, ``score``).

    Returns:
        ``{"AP50": ..., "classification": dAP, "localisation": ..., "both": ..., "duplicate": ...,
        "background": ..., "missed": ...}``, all on the 0-1 scale of AP.
    """
    image_ids = [int(image["id"]) for image in ground_truth.get("images", [])]
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    targets: list[dict[str, list]] = [{"boxes": [], "labels": [], "iscrowd": []} for _ in image_ids]
    for ann in ground_truth.get("annotations", []):
        target = targets[index[int(ann["image_id"])]]
        target["boxes"].append(_xyxy(ann["bbox"]))
        target["labels"].append(int(ann["category_id"]))
        target["iscrowd"].append(int(ann.get("iscrowd", 0)))
    preds: list[dict[str, list]] = [{"boxes": [], "scores": [], "labels": []} for _ in image_ids]
    for det in detections:
        if int(det["image_id"]) not in index:
            raise ValueError(f"a detection names image_id {det['image_id']}, which the ground truth lacks")
        pred = preds[index[int(det["image_id"])]]
        pred["boxes"].append(_xyxy(det["bbox"]))
        pred["scores"].append(float(det["score"]))
        pred["labels"].append(int(det["category_id"]))
    return error_breakdown_arrays(
        preds, targets, pos_thresh=pos_thresh, bg_thresh=bg_thresh, max_dets=max_dets
    )


def error_breakdown_arrays(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    *,
    pos_thresh: float = 0.5,
    bg_thresh: float = 0.1,
    max_dets: int = 100,
) -> dict[str, float]:
    """As `error_breakdown`, from per-image arrays: preds ``{"boxes" [N,4] xyxy, "scores",
    "labels"}`` and targets ``{"boxes" [M,4] xyxy, "labels"}`` (optional ``"iscrowd"`` [M])."""
    if not 0.0 <= bg_thresh < pos_thresh <= 1.0:
        raise ValueError(f"need 0 <= bg_thresh < pos_thresh <= 1, got {bg_thresh} and {pos_thresh}")
    det_class, det_score, det_tp, det_type, det_target = [], [], [], [], []
    gt_class, gt_used, gt_usable = [], [], []
    for pred, target in zip(preds, targets, strict=True):
        offset = len(gt_class)  # ground-truth boxes are numbered over the whole set
        image = _match_image(pred, target, pos_thresh, bg_thresh, max_dets)
        for key, values in zip(
            (det_class, det_score, det_tp, det_type, det_target, gt_class, gt_used, gt_usable), image
        ):
            key.append(values)
        det_target[-1] = np.where(det_target[-1] >= 0, det_target[-1] + offset, -1)
    cat = _concatenate
    det = {
        "class": cat(det_class, np.int64),
        "score": cat(det_score, np.float64),
        "tp": cat(det_tp, bool),
        "type": cat(det_type, np.int64),
        "target": cat(det_target, np.int64),
    }
    gt = {"class": cat(gt_class, np.int64), "used": cat(gt_used, bool), "usable": cat(gt_usable, bool)}
    base = _mean_ap(det["class"], det["score"], det["tp"], gt["class"])
    result = {"AP50": base}
    for code, name in enumerate(ERROR_TYPES):
        fixed = _fixed_ap(det, gt, code)
        # as in tidecv: a fix can only help; a negative difference would be a binning artefact
        result[name] = max(fixed - base, 0.0) if base == base else float("nan")
    return result


def _xyxy(box: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def _concatenate(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def _match_image(
    pred: Mapping[str, Any], target: Mapping[str, Any], pos: float, bg: float, max_dets: int
) -> tuple[np.ndarray, ...]:
    """One image: each kept detection's class, score, true positive, error type and target box;
    each ground-truth box's class, whether it was matched and whether an error could fix it."""
    scores = to_numpy(pred["scores"]).astype(np.float64).reshape(-1)
    order = np.argsort(-scores, kind="mergesort")[:max_dets]
    boxes = to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)[order]
    labels, scores = to_numpy(pred["labels"]).astype(np.int64).reshape(-1)[order], scores[order]
    t_boxes = to_numpy(target["boxes"]).astype(np.float64).reshape(-1, 4)
    t_labels = to_numpy(target["labels"]).astype(np.int64).reshape(-1)
    crowd = (
        to_numpy(target["iscrowd"]).astype(bool).reshape(-1)
        if "iscrowd" in target and len(target["iscrowd"])
        else np.zeros(len(t_labels), dtype=bool)
    )
    crowd_boxes, crowd_labels = t_boxes[crowd], t_labels[crowd]
    t_boxes, t_labels = t_boxes[~crowd], t_labels[~crowd]
    n, m = len(boxes), len(t_boxes)

    iou = box_iou(boxes, t_boxes)
    same = labels[:, None] == t_labels[None, :]
    cls_iou = iou * same
    tp = np.zeros(n, dtype=bool)
    used = np.zeros(m, dtype=bool)
    if m:
        # greedy in score order; only a detection with a same-class IoU >= pos can match anything
        buffer = cls_iou.copy()
        for i in np.flatnonzero(cls_iou.max(axis=1) >= pos):
            j = int(buffer[i].argmax())
            if buffer[i, j] >= pos:
                tp[i], used[j] = True, True
                buffer[:, j] = 0.0
    keep = np.ones(n, dtype=bool)
    if len(crowd_boxes) and n:
        covered = _crowd_overlap(boxes, crowd_boxes) * (labels[:, None] == crowd_labels[None, :])
        keep = tp | (covered.max(axis=1) <= pos)

    kind = np.full(n, -1, dtype=np.int64)
    aim = np.full(n, -1, dtype=np.int64)  # the box a localisation or classification fix would take
    usable = np.zeros(m, dtype=bool)
    fp = ~tp & keep
    if m == 0:
        kind[fp] = _BKG
    elif fp.any():
        rows = np.arange(n)
        best_cls = cls_iou.argmax(axis=1)
        other_iou = iou * ~same
        best_other = other_iou.argmax(axis=1)
        dupe_iou = (cls_iou * used[None, :]).max(axis=1)
        loc = (bg <= cls_iou[rows, best_cls]) & (cls_iou[rows, best_cls] <= pos)
        cls = ~loc & (other_iou[rows, best_other] >= pos)
        dupe = ~loc & ~cls & (dupe_iou >= pos)
        bkg = ~loc & ~cls & ~dupe & (iou.max(axis=1) <= bg)
        kind[fp] = np.select([loc, cls, dupe, bkg], [_LOC, _CLS, _DUPE, _BKG], _BOTH)[fp]
        aim[fp & loc] = best_cls[fp & loc]
        aim[fp & cls] = best_other[fp & cls]
        fixable = aim[aim >= 0]
        usable[fixable[~used[fixable]]] = True
    # crowd-covered detections are left out of the AP altogether
    return labels[keep], scores[keep], tp[keep], kind[keep], aim[keep], t_labels, used, usable


def _crowd_overlap(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Intersection over the detection's own area (COCO's IoU with a crowd region)."""
    lt = np.maximum(boxes[:, None, :2], regions[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=2)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    return np.where(area > 0, inter / np.maximum(area, 1e-12), 0.0)


def _mean_ap(classes: np.ndarray, scores: np.ndarray, tp: np.ndarray, gt_classes: np.ndarray) -> float:
    """Mean AP over the classes with ground truth (NaN when there is none)."""
    labels, counts = np.unique(gt_classes, return_counts=True)
    if len(labels) == 0:
        return float("nan")
    aps = [average_precision(scores[classes == c], tp[classes == c], int(k)) for c, k in zip(labels, counts)]
    return float(np.mean(aps))


def _fixed_ap(det: dict[str, np.ndarray], gt: dict[str, np.ndarray], code: int) -> float:
    """Mean AP50 once every error of type ERROR_TYPES[code] is fixed by its oracle."""
    classes, scores, tp = det["class"].copy(), det["score"], det["tp"].copy()
    keep = np.ones(len(classes), dtype=bool)
    gt_classes = gt["class"]
    if ERROR_TYPES[code] == "missed":
        gt_classes = gt_classes[gt["used"] | gt["usable"]]
    elif code in (_CLS, _LOC):
        errors = np.flatnonzero(det["type"] == code)
        keep[errors] = False
        targets = det["target"][errors]
        # the best-scoring error of this type per box that nothing matched becomes its detection
        open_ = errors[~gt["used"][targets]]
        ranked = open_[np.lexsort((-scores[open_], det["target"][open_]))]
        first = np.unique(det["target"][ranked], return_index=True)[1]
        winners = ranked[first]
        keep[winners], tp[winners] = True, True
        classes[winners] = gt_classes[det["target"][winners]]
    else:
        keep[det["type"] == code] = False
    return _mean_ap(classes[keep], scores[keep], tp[keep], gt_classes)
