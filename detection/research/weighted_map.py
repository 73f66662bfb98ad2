"""COCO box mAP of a run whose test images are reweighted: the scorer under `scripts/compare.py`'s
bootstrap (see `detection.research.compare` for why a run is matched once and then reweighted).

`score_run` matches a run's detections to its ground truth once, as COCOeval.evaluate does (per
image, class, area range and IoU threshold: greedy by score, crowd regions and out-of-range boxes
ignored, 100 detections per image and class); `metric_values` turns image weights (how many times
each image is drawn) into mAP, mAP_50, mAP_75, mAP per size and AP per class. With every weight 1
this equals COCOeval's stats.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MAIN_METRICS", "Scored", "metric_values", "quiet_nanmean", "score_run"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # as COCOeval's Params
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
AREAS = {"": (0.0, 1e10), "_small": (0.0, 32.0**2), "_medium": (32.0**2, 96.0**2), "_large": (96.0**2, 1e10)}
MAX_DETS = 100
MAIN_METRICS = ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large")


# ---------------------------------------------------------------- matching, once per run


@dataclass
class _Curve:
    """One class in one area range, detections in COCO's order (by score, ties by image order)."""

    image: np.ndarray  # [S] image index of each special detection
    tp: np.ndarray  # [T, S] true positive at each IoU threshold
    fp: np.ndarray  # [T, S] counted false positive (not ignored) at each threshold
    plain_image: np.ndarray  # [U] image of each (segment, image) pair of plain false positives
    plain_count: np.ndarray  # [U] how many plain false positives that pair holds
    plain_upto: np.ndarray  # [S] number of pairs before each special


@dataclass
class Scored:
    """A run matched once: everything a resample of its test images needs."""

    path: str
    image_ids: np.ndarray  # [N] sorted
    class_ids: list[int]
    class_names: list[str]
    num_boxes: int
    gt_count: np.ndarray  # [A, K, N] boxes that count (not ignored) per area, class, image
    curves: list[list[_Curve]]  # [A][K]
    ground_truth: dict[str, Any] = field(repr=False, default_factory=dict)
    detections: list[dict[str, Any]] = field(repr=False, default_factory=list)

    @property
    def metric_names(self) -> list[str]:
        return [*MAIN_METRICS, *(f"AP/{name}" for name in self.class_names)]


def score_run(ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]], path: str = "") -> Scored:
    """Match a run's detections to its ground truth (COCO dicts, xywh boxes) at every threshold."""
    image_ids = np.array(sorted({int(image["id"]) for image in ground_truth["images"]}), dtype=np.int64)
    index = {int(i): n for n, i in enumerate(image_ids)}
    categories = sorted(ground_truth["categories"], key=lambda c: int(c["id"]))
    class_ids = [int(c["id"]) for c in categories]
    k_of = {c: k for k, c in enumerate(class_ids)}
    boxes: dict[tuple[int, int], list[Any]] = {}
    for ann in ground_truth["annotations"]:
        key = (index[int(ann["image_id"])], k_of[int(ann["category_id"])])
        boxes.setdefault(key, []).append((ann["bbox"], float(ann["area"]), int(ann.get("iscrowd", 0))))
    dets: dict[tuple[int, int], list[Any]] = {}
    for det in detections:
        if int(det["image_id"]) not in index:
            raise ValueError(f"{path}: a detection names image {det['image_id']}, not in its ground truth")
        if int(det["category_id"]) in k_of:  # COCOeval only scores the categories of the ground truth
            key = (index[int(det["image_id"])], k_of[int(det["category_id"])])
            dets.setdefault(key, []).append((det["bbox"], float(det["score"])))

    n, k_count, a_count = len(image_ids), len(class_ids), len(AREAS)
    gt_count = np.zeros((a_count, k_count, n), dtype=np.int64)
    parts: list[list[list[tuple]]] = [[[] for _ in range(k_count)] for _ in range(a_count)]
    for i, k in sorted(set(boxes) | set(dets)):  # image order, as COCOeval concatenates them
        g = boxes.get((i, k), [])
        g_box = np.array([b for b, _, _ in g], dtype=np.float64).reshape(-1, 4)
        g_area = np.array([a for _, a, _ in g], dtype=np.float64)
        crowd = np.array([c for _, _, c in g], dtype=bool)
        d = dets.get((i, k), [])
        scores = np.array([s for _, s in d], dtype=np.float64)
        order = np.argsort(-scores, kind="mergesort")[:MAX_DETS]
        d_box = np.array([b for b, _ in d], dtype=np.float64).reshape(-1, 4)[order]
        scores = scores[order]
        d_area = d_box[:, 2] * d_box[:, 3]
        iou = _coco_iou(d_box, g_box, crowd)
        cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        for a, (low, high) in enumerate(AREAS.values()):
            ignore = crowd | (g_area < low) | (g_area > high)
            gt_count[a, k, i] = int((~ignore).sum())
            if not len(scores):
                continue
            if ignore.tobytes() not in cache:
                cache[ignore.tobytes()] = _match(iou, ignore, crowd)
            matched, matched_ignored = cache[ignore.tobytes()]
            outside = (d_area < low) | (d_area > high)
            ignored = matched_ignored | (~matched & outside[None, :])
            parts[a][k].append((np.full(len(scores), i), scores, matched & ~ignored, ~matched & ~ignored))
    curves = [[_curve(parts[a][k], n) for k in range(k_count)] for a in range(a_count)]
    return Scored(
        path=path,
        image_ids=image_ids,
        class_ids=class_ids,
        class_names=[str(c.get("name", c["id"])) for c in categories],
        num_boxes=len(ground_truth["annotations"]),
        gt_count=gt_count,
        curves=curves,
        ground_truth=dict(ground_truth),
        detections=list(detections),
    )


def _coco_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU [D, G] of xywh boxes as pycocotools' bbIou computes it (crowd: over the detection's area)."""
    if not len(d) or not len(g):
        return np.zeros((len(d), len(g)))
    w = np.minimum(d[:, None, 2] + d[:, None, 0], g[None, :, 2] + g[None, :, 0]) - np.maximum(
        d[:, None, 0], g[None, :, 0]
    )
    h = np.minimum(d[:, None, 3] + d[:, None, 1], g[None, :, 3] + g[None, :, 1]) - np.maximum(
        d[:, None, 1], g[None, :, 1]
    )
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    d_area, g_area = (d[:, 2] * d[:, 3])[:, None], (g[:, 2] * g[:, 3])[None, :]
    union = np.where(crowd[None, :], d_area, d_area + g_area - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _match(iou: np.ndarray, ignore: np.ndarray, crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.evaluateImg's greedy matching of score-sorted detections at every IoU threshold.

    Returns [T, D] arrays: matched, and matched to an ignored box. Boxes are visited ignored last;
    a box stays free for later detections only when it is a crowd region; a match to an ignored box
    is taken only when no counted box qualifies; ties go to the later box, as in COCOeval.
    """
    t_count, d_count = len(IOU_THRESHOLDS), iou.shape[0]
    matched = np.zeros((t_count, d_count), dtype=bool)
    matched_ignored = np.zeros((t_count, d_count), dtype=bool)
    if d_count == 0 or iou.shape[1] == 0:
        return matched, matched_ignored
    order = np.argsort(ignore, kind="mergesort")
    rows = iou[:, order].tolist()
    ig, cr = ignore[order].tolist(), crowd[order].tolist()
    best = iou.max(axis=1)
    candidates = np.flatnonzero(best >= IOU_THRESHOLDS[0]).tolist()  # the rest match nothing
    for t, threshold in enumerate(IOU_THRESHOLDS):
        threshold = min(float(threshold), 1 - 1e-10)
        taken = [False] * len(ig)
        for d in candidates:
            if best[d] < threshold:
                continue
            row, value, m = rows[d], threshold, -1
            for g in range(len(ig)):
                if taken[g] and not cr[g]:
                    continue
                if m > -1 and not ig[m] and ig[g]:
                    break
                if row[g] < value:
                    continue
                value, m = row[g], g
            if m > -1:
                taken[m] = True
                matched[t, d], matched_ignored[t, d] = True, ig[m]
    return matched, matched_ignored


def _curve(parts: list[tuple], n_images: int) -> _Curve:
    t_count = len(IOU_THRESHOLDS)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return _Curve(empty, np.zeros((t_count, 0), bool), np.zeros((t_count, 0), bool), empty, empty, empty)
    image = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    tp = np.concatenate([p[2] for p in parts], axis=1)
    fp = np.concatenate([p[3] for p in parts], axis=1)
    order = np.argsort(-scores, kind="mergesort")
    image, tp, fp = image[order], tp[:, order], fp[:, order]
    kept = (tp | fp).any(axis=0)  # a detection ignored at every threshold never counts
    image, tp, fp = image[kept], tp[:, kept], fp[:, kept]
    plain = fp.all(axis=0)  # a false positive at every threshold: only its count before each special matters
    special = ~plain
    segment = np.cumsum(special) - special  # specials before each detection
    n_special = int(special.sum())
    before = plain & (segment < n_special)  # plain ones after the last special change nothing
    pairs, counts = np.unique(segment[before] * n_images + image[before], return_counts=True)
    pair_segment = pairs // n_images
    return _Curve(
        image=image[special],
        tp=tp[:, special],
        fp=fp[:, special],
        plain_image=pairs % n_images,
        plain_count=counts.astype(np.float64),
        plain_upto=np.searchsorted(pair_segment, np.arange(n_special), side="right"),
    )


# ---------------------------------------------------------------- AP of reweighted images


def _ap(curve: _Curve, weights: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """AP [B, T] of one class and area range when image i counts weights[b, i] times (NaN: no boxes)."""
    b_count, t_count = weights.shape[0], len(IOU_THRESHOLDS)
    num_gt = weights @ gt.astype(np.float64)  # [B]
    out = np.full((b_count, t_count), np.nan)
    present = num_gt > 0
    if not present.any():
        return out
    out[present] = 0.0
    if curve.image.size == 0:
        return out
    w = weights[:, curve.image]  # [B, S]
    plain = np.cumsum(weights[:, curve.plain_image] * curve.plain_count, axis=1)
    plain = np.concatenate([np.zeros((b_count, 1)), plain], axis=1)[:, curve.plain_upto]  # [B, S]
    safe_gt = np.where(present, num_gt, 1.0)[:, None]
    for t in range(t_count):
        tps = np.cumsum(w * curve.tp[t], axis=1)
        fps = plain + np.cumsum(w * curve.fp[t], axis=1)
        counted = curve.tp[t][None, :] & (w > 0)
        # precision only at true positives: between them it falls, so it never sets the envelope
        precision = np.where(counted, tps / (fps + tps + np.spacing(1)), 0.0)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        # how many of the 101 recall points each detection is the first to reach (COCO's searchsorted)
        reached = np.searchsorted(RECALL_POINTS, tps / safe_gt, side="right")
        gained = np.diff(reached, axis=1, prepend=0)
        out[present, t] = ((envelope * gained).sum(axis=1) / len(RECALL_POINTS))[present]
    return out


def metric_values(scored: Scored, weights: np.ndarray | None = None) -> np.ndarray:
    """The metrics of `Scored.metric_names` [B, M] for image weights [B, N] (None: all images once).

    mAP averages the classes that have boxes in that area range (COCO's rule); NaN when none has.
    """
    if weights is None:
        weights = np.ones((1, len(scored.image_ids)))
    weights = np.asarray(weights, dtype=np.float64)
    k_count = len(scored.class_ids)
    values = np.full((weights.shape[0], len(MAIN_METRICS) + k_count), np.nan)
    with quiet_nanmean():
        for a in range(len(AREAS)):
            aps = np.stack([_ap(scored.curves[a][k], weights, scored.gt_count[a, k]) for k in range(k_count)])
            per_class = np.nanmean(aps, axis=2)  # [K, B]: a class with boxes has all thresholds
            if a == 0:
                values[:, 0] = np.nanmean(per_class, axis=0)
                values[:, 1] = np.nanmean(aps[:, :, 0], axis=0)
                values[:, 2] = np.nanmean(aps[:, :, 5], axis=0)
                values[:, len(MAIN_METRICS) :] = per_class.T
            else:
                values[:, 2 + a] = np.nanmean(per_class, axis=0)
    return values


@contextlib.contextmanager
def quiet_nanmean() -> Iterator[None]:
    """numpy warns on the mean of all-NaN values; here NaN is the answer (no boxes in that range)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
