"""The research scripts, each run as a user runs it, in its smallest setting (tiny data, 1-2 batches)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def _run(script: str, *args: str, timeout: int = 240) -> str:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_WAIT_POLICY": "PASSIVE", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def _tiny(data_root: Path, log_dir: Path) -> list[str]:
    return [
        f"data.root={data_root}",
        "data.generate.preset=small",
        "data.batch_size=2",
        "data.eval_batch_size=4",
        "data.print_summary=false",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "model.detector.neck.out_channels=32",
        "logger=csv",
        f"paths.log_dir={log_dir}",
        "extras.num_threads=1",
        "extras.print_config=false",
    ]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_benchmark_tabulates_heads_and_compares_light_head(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "bench"
    out = _run(
        "benchmark.py",
        "--heads=faster_rcnn,light_head_rcnn",
        "--backbones=efficientnet_lite0",
        "--images=2",
        "--runs=1",
        "--warmup=0",
        f"--out={sweep}",
        "--",
        *_tiny(fashiondet_small_root, tmp_path / "logs"),
        "+model.detector.rpn_post_nms_top_n_test=50",
    )
    rows = _csv(sweep / "benchmark.csv")
    assert {r["head"] for r in rows} == {"faster_rcnn", "light_head_rcnn"}
    for row in rows:
        assert row["status"] == "ok", row
        assert 0.0 <= float(row["test_mAP"]) <= 1.0
        assert float(row["infer_ms"]) > 0 and float(row["params_M"]) > 0 and float(row["epoch_s"]) > 0
        assert row["weights"] == "imagenet"
    pair = _csv(sweep / "light_head_vs_faster.csv")
    assert len(pair) == 1 and float(pair[0]["head_ratio"]) > 0
    assert (sweep / "benchmark.png").stat().st_size > 0
    assert "| faster_rcnn |" in (sweep / "benchmark.md").read_text() and "Light-Head" in out
    # the dashboards callback (in the default callbacks) wrote its plots and numbers for each job
    for job in ("0", "1"):
        plots = sweep / job / "plots"
        names = {p.name.split("_", 3)[-1] for p in plots.glob("val_*")}
        assert {"per_class_ap.png", "pr_curves.png", "confusion_matrix.png", "dashboard.json"} <= names, names
        numbers = json.loads(next(plots.glob("*_dashboard.json")).read_text())
        assert len(numbers["confusion_matrix"]) == 11 and len(numbers["ap"]) == 10


def test_transfer_study_pretrains_then_compares_three_backbone_starts(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    study = tmp_path / "study"
    log_dir = tmp_path / "logs"
    _run(
        "transfer_study.py",
        f"--out={study}",
        "--seeds=0",
        "--pretrain-overrides",
        "trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=1 "
        "trainer.limit_test_batches=1 data.train_size=64 data.val_size=32 data.test_size=32 "
        "data.batch_size=16 logger=csv extras.num_threads=1 extras.print_config=false "
        f"paths.log_dir={log_dir}",
        "--",
        *_tiny(fashiondet_small_root, log_dir),
    )
    assert (study / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    sweep = study / "multirun"
    runs = _csv(sweep / "transfer_study_runs.csv")
    assert sorted(r["variant"] for r in runs) == ["fashion_mnist", "imagenet", "scratch"]
    assert all(r["status"] == "ok" for r in runs), runs
    summary = _csv(sweep / "transfer_study.csv")
    assert [r["n"] for r in summary] == ["1", "1", "1"]
    assert all("±" in r["test_mAP"] for r in summary)
    assert (sweep / "transfer_study.png").stat().st_size > 0
    fashion = next(sweep / r["job"] for r in runs if r["variant"] == "fashion_mnist")
    config = (fashion / ".hydra" / "overrides.yaml").read_text()
    assert "transfer.fashion_mnist_ckpt=" in config and "last.ckpt" in config


def test_profile_backbone_writes_table_and_plot(tmp_path: Path) -> None:
    out = _run(
        "profile_backbone.py",
        "--backbones=resnet18,mobilenet_v3_large",
        "--batch-sizes=1,2",
        "--size=64",
        "--steps=1",
        "--warmup=0",
        "--threads=1",
        f"--out={tmp_path}",
    )
    rows = _csv(tmp_path / "profile_backbone.csv")
    assert [(r["backbone"], r["batch"]) for r in rows] == [
        ("resnet18", "1"),
        ("resnet18", "2"),
        ("mobilenet_v3_large", "1"),
        ("mobilenet_v3_large", "2"),
    ]
    for small, large in (rows[:2], rows[2:]):
        assert float(large["activations_MB"]) > float(small["activations_MB"]) > 0  # grows with the batch
        assert float(small["gflops"]) > 0 and float(small["images_per_s"]) > 0
    assert rows[0]["memory_measure"] in ("peak RSS growth (CPU)", "CUDA max allocated")
    assert int(rows[2]["depthwise"]) > 0 and int(rows[0]["depthwise"]) == 0
    assert (tmp_path / "profile_backbone.png").stat().st_size > 0 and "resnet18" in out


def test_export_fcos_matches_onnxruntime_on_fashiondet_images(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    _run(
        "export.py",
        "--heads=fcos",
        f"--data-root={fashiondet_small_root}",
        "--images=3",
        f"--out={tmp_path}",
    )
    rows = {r["format"]: r for r in _csv(tmp_path / "export.csv")}
    onnx = rows["ONNX (opset 17) + onnxruntime"]
    assert onnx["exported"].startswith("yes") and (tmp_path / "fcos.onnx").is_file()
    assert onnx["parity"].startswith("pass"), onnx
    n_torch, n_onnx = (int(v) for v in onnx["detections"].split(" / "))
    assert n_torch > 0 and n_torch == n_onnx == int(onnx["matched"])
    assert float(onnx["max_box_err"]) <= 1e-3 and float(onnx["max_score_err"]) <= 1e-3
    assert rows["TorchScript (trace)"]["parity"].startswith("pass")
    assert (tmp_path / "export.png").stat().st_size > 0


def test_overhead_prints_the_ratio_and_both_loops_agree(fashiondet_small_root: Path, tmp_path: Path) -> None:
    out = _run(
        "overhead.py",
        f"--data-root={fashiondet_small_root}",
        "--preset=small",
        "--steps=2",
        "--batch-size=2",
        "--repeats=1",
        "--weights=none",
        f"--out={tmp_path}",
    )
    assert "Lightning / plain:" in out
    rows = _csv(tmp_path / "overhead.csv")
    assert [r["loop"] for r in rows] == ["plain PyTorch", "Lightning (steps)", "Lightning (whole fit())"]
    assert all(float(r["ratio"]) > 0 for r in rows)
    note = (tmp_path / "overhead.md").read_text()
    difference = float(note.split("plain vs Lightning: ")[1].split(".\n")[0].rstrip("."))
    assert difference < 1e-5  # the same steps on the same batches: the same weights
    assert (tmp_path / "overhead.png").stat().st_size > 0
