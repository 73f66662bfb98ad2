"""Anchors that fit the data: anchor_sizes=auto is resolved from the training boxes and kept in the
checkpoint, and every run reports its anchor coverage before the first step (a warning below 90 %)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import isolated_environ, tiny, train_in_process

from detection.models.heads.anchors import COVERAGE_WARNING
from detection.training import DetectionTask

LOGGER = "detection.training.anchors"


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path) -> Iterator[None]:
    with isolated_environ(tmp_path):
        yield


def _run(data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, *extra: str) -> Path:
    overrides = [
        *tiny(data_root, tmp_path / "logs"),
        "trainer.max_epochs=1",
        "logger=csv",
        "test=false",
        *extra,
    ]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_dir, _ = train_in_process(overrides)
    return run_dir


@pytest.mark.parametrize(
    ("model", "part", "extra"),
    [
        # the recipe's ATSS anchors are 8 x stride; auto is asked for here to check its round trip
        ("retinanet", "RetinaNet anchors (ATSS)", ["model.detector.anchor_sizes=auto"]),
        ("faster_rcnn", "RPN anchors", []),
        ("fcos", "FCOS level assignment", []),
    ],
    ids=["retinanet", "faster_rcnn", "fcos"],
)
def test_auto_anchors_are_resolved_reported_and_kept(
    model: str,
    part: str,
    extra: list[str],
    fashiondet_small_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_dir = _run(fashiondet_small_root, tmp_path, caplog, f"experiment=fashiondet_{model}", *extra)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("anchor coverage")]
    assert len(lines) == 1 and f"anchor coverage, {part}: " in lines[0], lines
    share = float(lines[0].split(": ")[1].split("%")[0]) / 100
    assert share >= COVERAGE_WARNING  # the recipes fit FashionDet's boxes: no warning
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == LOGGER]
    if model == "fcos":
        return
    spec = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"][
        "detector"
    ]
    sizes = spec["anchor_sizes"]
    assert isinstance(sizes, list) and all(isinstance(v, float) for level in sizes for v in level)
    flat = [v for level in sizes for v in level]
    assert flat == sorted(flat) and 8 <= flat[0] < flat[-1] <= 80  # FashionDet items are 16-64 px
    detector = DetectionTask.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", weights_only=True
    ).detector
    generator = detector.rpn.anchor_generator if model == "faster_rcnn" else detector.anchor_generator
    assert [list(level) for level in generator.sizes] == sizes  # a reload rebuilds the same anchors


@pytest.mark.parametrize(
    "overrides",
    [
        # a fixed IoU threshold: ATSS sets its own per box, so anchors this large still get positives
        ["model=retinanet", "model.detector.assignment=iou", "model.detector.anchor_scale=16"],
        ["model=faster_rcnn", "model.detector.anchor_sizes=null", "model.detector.anchor_scale=16"],
    ],
    ids=["retinanet_iou", "faster_rcnn"],
)
def test_anchors_that_miss_the_boxes_warn_and_name_the_knob(
    overrides: list[str], fashiondet_small_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _run(fashiondet_small_root, tmp_path, caplog, *overrides)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(warnings) == 1 and "model.detector.anchor_sizes" in warnings[0], warnings
    share = float(warnings[0].split("only ")[1].split("%")[0]) / 100
    assert share < 0.5  # 128-512 px anchors for 16-64 px items
