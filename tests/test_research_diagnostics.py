"""Research diagnostics against torchmetrics on real FashionDet boxes; the table and sweep helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from detection.research import sweeps
from detection.research.runs import split_images
from detection.research.tables import markdown_table, mean_std, read_multirun, write_tables
from detection.training import diagnostics


def _jittered_predictions(targets: list[dict], seed: int = 0) -> list[dict]:
    """Detections made from the true boxes: shifted, some relabelled, some dropped, plus false alarms."""
    generator = torch.Generator().manual_seed(seed)
    preds = []
    for target in targets:
        boxes = target["boxes"].clone()
        n = len(boxes)
        side = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + side * 0.25 * (torch.rand(n, 4, generator=generator) - 0.5)
        labels = target["labels"].clone()
        flip = torch.rand(n, generator=generator) < 0.2
        labels[flip] = (labels[flip] + 1) % 10
        keep = torch.rand(n, generator=generator) > 0.1
        extra = torch.rand(2, 4, generator=generator).sort(dim=1).values * 128
        extra = torch.stack([extra[:, 0], extra[:, 1], extra[:, 2], extra[:, 3]], dim=1)
        preds.append(
            {
                "boxes": torch.cat([boxes[keep], extra]),
                "scores": torch.rand(int(keep.sum()) + 2, generator=generator),
                "labels": torch.cat([labels[keep], torch.randint(0, 10, (2,), generator=generator)]),
            }
        )
    return preds


def test_ap50_per_class_matches_torchmetrics(fashiondet_small_root: Path) -> None:
    _, targets = split_images(fashiondet_small_root, 24, "val")
    preds = _jittered_predictions(targets)
    curves = diagnostics.pr_curves(preds, targets, 10, iou_thresh=0.5)
    metric = MeanAveragePrecision(iou_thresholds=[0.5], class_metrics=True, backend="faster_coco_eval")
    metric.update(preds, targets)
    result = metric.compute()
    theirs = dict(zip(result["classes"].tolist(), result["map_per_class"].tolist()))
    for label, curve in enumerate(curves):
        if curve.num_gt:
            assert curve.ap == pytest.approx(theirs[label], abs=0.02), label
    assert np.nanmean([c.ap for c in curves]) == pytest.approx(float(result["map"]), abs=0.01)


def test_confusion_matrix_counts_every_box_once(fashiondet_small_root: Path) -> None:
    _, targets = split_images(fashiondet_small_root, 24, "val")
    preds = _jittered_predictions(targets, seed=1)
    matrix = diagnostics.confusion_matrix(preds, targets, 10, iou_thresh=0.5, score_thresh=0.3)
    truths = sum(len(t["labels"]) for t in targets)
    kept = sum(int((p["scores"] >= 0.3).sum()) for p in preds)
    assert matrix.shape == (11, 11)
    assert matrix[:10].sum() == truths  # each true box: matched once or missed once
    assert matrix[:, :10].sum() == kept  # each kept detection: matched once or a false alarm
    assert matrix[10, 10] == 0
    assert np.trace(matrix[:10, :10]) > 0  # most jittered boxes keep their class
    matched = matrix[:10, :10].sum()
    assert np.trace(matrix[:10, :10]) >= 0.7 * matched  # 80% keep their label in _jittered_predictions
    # a changed label is always true label + 1: every confusion sits on that one diagonal
    relabelled = sum(matrix[t, (t + 1) % 10] for t in range(10))
    assert relabelled > 0 and relabelled == matched - np.trace(matrix[:10, :10])


def test_perfect_predictions_have_ap_one_and_a_diagonal_matrix(fashiondet_small_root: Path) -> None:
    _, targets = split_images(fashiondet_small_root, 8, "test")
    preds = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    curves = diagnostics.pr_curves(preds, targets, 10)
    assert all(c.ap == pytest.approx(1.0) for c in curves if c.num_gt)
    matrix = diagnostics.confusion_matrix(preds, targets, 10)
    assert matrix.sum() == np.trace(matrix)


def test_tables_write_csv_and_markdown(tmp_path: Path) -> None:
    rows = [{"name": "a", "value": 0.5}, {"name": "b", "value": None}]
    columns = [("name", "name", ""), ("value", "value", ".2f")]
    csv_path, md_path = write_tables(rows, columns, tmp_path / "t", note="a note")
    assert csv_path.read_text().splitlines() == ["name,value", "a,0.5", "b,"]
    assert "| a | 0.50 |" in md_path.read_text() and "a note" in md_path.read_text()
    assert markdown_table(rows, columns).count("\n") == 3
    assert markdown_table(rows, columns).splitlines() == [
        "| name | value |",
        "|:---|---:|",
        "| a | 0.50 |",
        "| b | - |",
    ]
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert mean_std([0.25]) == (0.25, 0.0) and all(np.isnan(mean_std([])))


def test_sweeps_split_overrides_and_read_a_jobs_results(tmp_path: Path) -> None:
    assert sweeps.split_argv(["--runs=1", "--", "seed=1", "--x"]) == (["--runs=1"], ["seed=1", "--x"])
    assert sweeps.split_argv(["--runs=1"]) == (["--runs=1"], [])
    stamped = sweeps.stamped_dir(["seed=1", f"paths.log_dir={tmp_path}"], "benchmark/multiruns", "bench")
    assert stamped.parent == tmp_path / "benchmark" / "multiruns" and stamped.name.endswith("_bench")
    assert sweeps.stamped_dir([], "study", "s").parts[:2] == ("logs", "study")
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps({"test/mAP": 0.25, "test/mAP_50": 0.5, "val/mAP": 0.125}))
    (job / "timing.json").write_text(json.dumps({"train_s": 3.0, "epoch_s_estimate": 30.0}))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "error.txt").write_text("Traceback ...\nRuntimeError: out of memory\n")
    done, failed = (sweeps.job_results(j) for j in read_multirun(tmp_path))
    assert done["status"] == "ok" and (done["test_mAP"], done["test_mAP_50"], done["val_mAP"]) == (
        0.25,
        0.5,
        0.125,
    )
    assert (done["job"], done["train_s"], done["epoch_s"]) == (0, 3.0, 30.0)
    assert failed["status"] == "failed: RuntimeError: out of memory" and failed["test_mAP"] is None
    assert [c[1] for c in sweeps.metric_columns(".3f")] == ["test mAP", "test mAP_50", "val mAP"]
