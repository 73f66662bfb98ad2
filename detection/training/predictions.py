"""Write predictions: one JSON of boxes and one image per input with the boxes drawn; under DDP the
ranks' shares are gathered first."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.io import decode_image, write_png
from torchvision.utils import draw_bounding_boxes

from detection.training.metrics import gather_to_rank_zero


def gather_predictions(predictions: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Every rank's predictions on global rank 0 (None on the others), one per image path (a sampler
    may repeat images to even out the ranks), in input order (``image_id``, the position in the
    folder). Call on every rank; in a single process the predictions, deduplicated and ordered."""
    gathered = gather_to_rank_zero(predictions)
    if gathered is None:
        return None
    unique: dict[str, dict[str, Any]] = {}
    for pred in gathered:
        unique.setdefault(str(pred["path"]), pred)
    return sorted(unique.values(), key=lambda p: (p.get("image_id", 0), str(p["path"])))


def write_predictions(
    predictions: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    run_dir: Path,
    score_thresh: float = 0.3,
) -> Path:
    images_dir = run_dir / "predictions"
    images_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for pred in predictions:
        keep = pred["scores"] >= score_thresh
        boxes, scores, labels = pred["boxes"][keep], pred["scores"][keep], pred["labels"][keep]
        path = Path(pred["path"])
        records.append(
            {
                "image": str(path),
                "detections": [
                    {
                        "box_xyxy": [round(v, 2) for v in b],
                        "score": round(s, 4),
                        "label": int(lab),
                        "class_name": class_names[lab] if lab < len(class_names) else str(lab),
                    }
                    for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist())
                ],
            }
        )
        image = decode_image(str(path), mode="RGB") if "image" not in pred else pred["image"]
        captions = [
            f"{class_names[lab] if lab < len(class_names) else lab} {s:.2f}"
            for lab, s in zip(labels.tolist(), scores.tolist())
        ]
        drawn = draw_bounding_boxes(image, boxes, labels=captions, colors="red", width=1)
        write_png(drawn.to(torch.uint8), str(images_dir / f"{path.stem}.png"))
    out = run_dir / "predictions.json"
    out.write_text(json.dumps(records, indent=2))
    return out
