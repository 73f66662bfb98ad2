"""Whether an exported detector gives PyTorch's detections: match them image by image, measure errors.

On each image the exported model's detections are matched to PyTorch's (same label, nearest box
within `MATCH_PX`, in PyTorch score order). Parity holds when every matched pair agrees within
`atol` on box coordinates (pixels) and on scores, and every unmatched detection ties with the
score cut-off (its score within `atol` of the lowest kept score: which of two equal scores
survives top-k is arbitrary).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from detection.research.timing import median_ms

MATCH_PX = 1.0  # boxes further apart than this are different detections, not one with an error
Detections = tuple[np.ndarray, ...]  # (boxes [N, 4], scores [N], labels [N])


def compare(ref: Detections, out: Detections, atol: float) -> dict[str, Any]:
    """Match one image's detections (same label, nearest box) in PyTorch score order; measure errors."""
    r_boxes, r_scores, r_labels = ref
    o_boxes, o_scores, o_labels = out
    used = np.zeros(len(o_boxes), dtype=bool)
    box_err = score_err = 0.0
    matched = 0
    unmatched_r = []
    for i in np.argsort(-r_scores, kind="stable"):
        # distance in pixels, so that degenerate (zero-area) boxes of an untrained head match too
        distance = np.abs(o_boxes - r_boxes[i]).max(axis=1) if len(o_boxes) else np.zeros(0)
        distance = np.where(~used & (o_labels == r_labels[i]), distance, np.inf)
        j = int(distance.argmin()) if len(distance) else -1
        if j >= 0 and distance[j] <= MATCH_PX:
            used[j] = True
            matched += 1
            box_err = max(box_err, float(distance[j]))
            score_err = max(score_err, float(abs(r_scores[i] - o_scores[j])))
        else:
            unmatched_r.append(float(r_scores[i]))
    floor = min([*r_scores.tolist(), *o_scores.tolist()], default=0.0)
    unmatched = unmatched_r + o_scores[~used].tolist()
    ties_only = all(s <= floor + atol for s in unmatched)
    return {
        "n_ref": len(r_boxes),
        "n_out": len(o_boxes),
        "matched": matched,
        "box_err": box_err,
        "score_err": score_err,
        "ok": ties_only and box_err <= atol and score_err <= atol,
    }


def verdict(results: Sequence[dict[str, Any]], atol: float) -> str:
    if not any(r["n_ref"] for r in results):
        return "vacuous: no detections"
    return f"{'pass' if all(r['ok'] for r in results) else 'FAIL'} (atol {atol:g})"


def check(
    run: Callable[[Tensor], Detections], ref: Sequence[Detections], images: Sequence[Tensor], atol: float
) -> dict[str, Any]:
    """The table columns of one exported runtime: detections, errors, parity and speed."""
    results = [compare(r, run(image), atol) for r, image in zip(ref, images)]
    return {
        "images": len(images),
        "detections": f"{sum(r['n_ref'] for r in results)} / {sum(r['n_out'] for r in results)}",
        "matched": sum(r["matched"] for r in results),
        "max_box_err": max(r["box_err"] for r in results),
        "max_score_err": max(r["score_err"] for r in results),
        "parity": verdict(results, atol),
        "ms": median_ms(lambda: run(images[0]), warmup=1, runs=5),
    }
