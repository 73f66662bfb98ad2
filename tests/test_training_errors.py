"""The TIDE-style error breakdown on hand-made detections whose answer is known, and in the dashboards.

The set: four images, one 40 px box each (classes 0, 1, 0, 1), and one exact detection per box.
Each case spoils it with a single error of one kind; that kind, and no other, must cost AP50, and
fixing it must give the perfect AP50 back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from detection.training.callbacks.dashboards import DetectionDashboards
from detection.training.errors import ERROR_TYPES, error_breakdown, error_breakdown_arrays

BOX = [10.0, 10.0, 40.0, 40.0]  # xywh
SHIFTED = [30.0, 30.0, 40.0, 40.0]  # IoU 400 / 2800 = 0.14 with BOX: between t_b = 0.1 and t_f = 0.5
NUDGED = [12.0, 12.0, 40.0, 40.0]  # IoU 0.82 with BOX
AWAY = [200.0, 200.0, 30.0, 30.0]  # overlaps nothing


def _ground_truth() -> dict[str, Any]:
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 300, "height": 300} for i in range(1, 5)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": (i - 1) % 2, "bbox": BOX, "area": 1600.0, "iscrowd": 0}
            for i in range(1, 5)
        ],
        "categories": [{"id": 0, "name": "zero"}, {"id": 1, "name": "one"}],
    }


def _perfect() -> list[dict[str, Any]]:
    return [
        {"image_id": i, "category_id": (i - 1) % 2, "bbox": BOX, "score": 1.0 - 0.1 * i} for i in range(1, 5)
    ]


def _with(changes: dict[int, dict[str, Any]], extra: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The perfect detections with some changed ({image: fields}, None fields: dropped) and extra ones."""
    out = []
    for det in _perfect():
        change = changes.get(det["image_id"], {})
        if change is not None:
            out.append(det | change)
    return out + list(extra)


CASES = {
    "localisation": _with({2: {"bbox": SHIFTED}}),
    "classification": _with({2: {"category_id": 0}}),
    # the highest-scoring detection takes the box; the duplicate, scored above the other images'
    # true positives, drags their precision down
    "duplicate": _with({}, [{"image_id": 1, "category_id": 0, "bbox": NUDGED, "score": 0.85}]),
    "background": _with({}, [{"image_id": 1, "category_id": 0, "bbox": AWAY, "score": 0.95}]),
    "both": _with({}, [{"image_id": 1, "category_id": 1, "bbox": SHIFTED, "score": 0.95}]),
    "missed": _with({4: None}),
}


def test_perfect_detections_lose_nothing() -> None:
    result = error_breakdown(_ground_truth(), _perfect())
    assert result == {"AP50": 1.0, **dict.fromkeys(ERROR_TYPES, 0.0)}


@pytest.mark.parametrize("kind", list(CASES))
def test_a_single_error_lands_in_its_own_bin(kind: str) -> None:
    result = error_breakdown(_ground_truth(), CASES[kind])
    assert result["AP50"] < 0.95
    assert result[kind] == pytest.approx(1.0 - result["AP50"])  # fixing it restores the perfect AP50
    assert {k: v for k, v in result.items() if k not in (kind, "AP50")} == {
        k: 0.0 for k in ERROR_TYPES if k != kind
    }


def test_only_the_best_of_several_errors_on_one_box_is_fixed() -> None:
    # two poorly placed detections of image 2's box: the fix makes the higher one a true positive
    # and drops the other (else the fix would add a duplicate)
    extra = [{"image_id": 2, "category_id": 1, "bbox": [28.0, 28.0, 40.0, 40.0], "score": 0.5}]
    result = error_breakdown(_ground_truth(), _with({2: {"bbox": SHIFTED}}, extra))
    assert result["localisation"] == pytest.approx(1.0 - result["AP50"])
    assert result["missed"] == 0.0  # the box is not missed: a localisation fix finds it


def test_arrays_and_coco_files_give_the_same_breakdown() -> None:
    gt, dets = _ground_truth(), CASES["localisation"] + CASES["background"][-1:]
    preds = [
        {
            "boxes": torch.tensor([_xyxy(d["bbox"]) for d in dets if d["image_id"] == i]).reshape(-1, 4),
            "scores": torch.tensor([d["score"] for d in dets if d["image_id"] == i]),
            "labels": torch.tensor([d["category_id"] for d in dets if d["image_id"] == i]),
        }
        for i in range(1, 5)
    ]
    targets = [
        {"boxes": torch.tensor([_xyxy(a["bbox"])]), "labels": torch.tensor([a["category_id"]])}
        for a in gt["annotations"]
    ]
    assert error_breakdown_arrays(preds, targets) == pytest.approx(error_breakdown(gt, dets))


def test_the_dashboards_write_the_breakdown_after_validation(tmp_path: Path) -> None:
    gt, dets = _ground_truth(), CASES["missed"]
    preds = [
        {
            "boxes": np.array([_xyxy(d["bbox"]) for d in dets if d["image_id"] == i]).reshape(-1, 4),
            "scores": np.array([d["score"] for d in dets if d["image_id"] == i]),
            "labels": np.array([d["category_id"] for d in dets if d["image_id"] == i], dtype=np.int64),
        }
        for i in range(1, 5)
    ]
    targets = [
        {"boxes": np.array([_xyxy(a["bbox"])]), "labels": np.array([a["category_id"]])}
        for a in gt["annotations"]
    ]
    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    files = DetectionDashboards(output_dir=tmp_path / "plots", log_wandb=False).write(
        trainer, preds, targets, ["zero", "one"]
    )
    errors = json.loads(files["numbers"].read_text())["errors"]
    assert errors == pytest.approx(error_breakdown(gt, dets))
    assert errors["missed"] > 0 and errors["localisation"] == 0.0


def _xyxy(box: list[float]) -> list[float]:
    return [box[0], box[1], box[0] + box[2], box[1] + box[3]]
