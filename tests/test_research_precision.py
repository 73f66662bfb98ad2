"""scripts/precision_check.py: mosaics of test canvases scored per precision, on a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import read_metrics, reference_run

from detection.research import precision


def test_mosaic_detections_split_back_into_their_canvases() -> None:
    g = torch.Generator().manual_seed(0)
    canvases = [
        (
            torch.rand(3, 40, 50, generator=g),
            {"boxes": torch.tensor([[1.0, 2.0, 30.0, 20.0]]), "labels": torch.tensor([i])},
        )
        for i in range(4)
    ]
    image, origins = precision.mosaic(canvases, grid=2)
    assert image.shape == (3, 80, 100) and origins == [(0, 0), (50, 0), (0, 40), (50, 40)]
    assert torch.equal(image[:, 40:, 50:], canvases[3][0])
    shifted = torch.cat(
        [t["boxes"] + torch.tensor([x, y, x, y]) for (_, t), (x, y) in zip(canvases, origins)]
    )
    found = {"boxes": shifted, "scores": torch.ones(4), "labels": torch.arange(4)}
    for (_, target), part in zip(canvases, precision.split_detections(found, origins, (40, 50)), strict=True):
        assert torch.equal(part["boxes"], target["boxes"]) and torch.equal(part["labels"], target["labels"])


@pytest.mark.slow
def test_precision_check_scores_a_checkpoint_per_precision(
    fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    run_dir = reference_run(fashiondet_small_root, tmp_path_factory)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    common = ["--ckpt", str(ckpt), "--data-root", str(fashiondet_small_root), "--threads", "1"]
    # one canvas per mosaic at the checkpoint's own input size: the run's own test figures
    (alone,) = precision.main(
        [*common, "--grid", "1", "--images", "24", "--precisions", "fp32", "--out", str(tmp_path / "a")]
    )
    assert alone["mAP_75"] == pytest.approx(read_metrics(run_dir)["test/mAP_75"], abs=2e-3)
    rows = precision.main(
        [*common, "--grid", "2", "--images", "8", "--precisions", "fp32,bf16", "--out", str(tmp_path / "b")]
    )
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert rows[0]["delta_mAP_75"] == 0.0 and all(r["detections"] > 0 for r in rows)
    table = (tmp_path / "b" / "precision_check.md").read_text()
    assert "mAP_75 - fp32" in table and "bf16" in table
