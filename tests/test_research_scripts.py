"""The research scripts, each run as a user runs it, in its smallest setting (tiny data, 1-2 batches)."""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import importlib
import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from detection.research import benchmark, transfer
from detection.research.tables import Job, t_interval, without_seed
from detection.research.timing import Spread, median_iqr_ms

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def _run(script: str, *args: str) -> str:
    """The tool's `main` in this process with the script's command line, what it printed. The script
    is its module's shim (test_each_script_is_a_shim_that_loads_detection_research_first), so this is
    the script as a user runs it, less a process start; the training runs a tool launches are
    processes of their own. torch's thread count, which a tool sets, is put back."""
    tool = importlib.import_module(f"detection.research.{TOOLS[script][0]}")
    threads, printed = torch.get_num_threads(), io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            tool.main(list(args))
    finally:
        torch.set_num_threads(threads)
    return printed.getvalue()


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


# each script's module and flags: the README and users call them, so they stay as they are
TOOLS = {
    "benchmark.py": (
        "benchmark",
        {"--sweep-dir", "--out", "--heads", "--backbones", "--images", "--warmup", "--runs", "--threads"},
    ),
    "benchmark_heads.py": (
        "heads",
        {"--backbone", "--weights", "--size", "--batch", "--fpn-channels", "--num-classes", "--proposals"}
        | {"--variant", "--warmup", "--runs", "--threads", "--checkpoints", "--data-root"},
    ),
    "transfer_study.py": (
        "transfer",
        {"--sweep-dir", "--out", "--pretrained", "--pretrained-crops", "--pretrained-imagenet-crops"}
        | {"--pretrain-overrides", "--crops-overrides", "--variants", "--seeds", "--with-sweep-dir"},
    ),
    "profile_backbone.py": (
        "profile",
        {"--backbones", "--size", "--batch-sizes", "--warmup", "--steps", "--threads", "--device", "--out"}
        | {"--layouts", "--precisions"},
    ),
    "export.py": ("export", {"--ckpt", "--heads", "--data-root", "--images", "--atol", "--threads", "--out"}),
    "overhead.py": (
        "overhead",
        {"--head", "--backbone", "--weights", "--data-root", "--preset", "--steps", "--batch-size"}
        | {"--repeats", "--threads", "--out"},
    ),
    "precision_check.py": (
        "precision",
        {"--ckpt", "--data-root", "--grid", "--images", "--precisions", "--threads", "--out"},
    ),
}


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
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
    from detection.research.runs import load_detector

    rows = _csv(sweep / "benchmark.csv")
    assert {r["head"] for r in rows} == {"faster_rcnn", "light_head_rcnn"}
    jobs = {}
    for job in sweep.glob("[0-9]*"):
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        jobs[config["model"]["detector"]["head"]] = (job, config["model"]["backbone"]["name"])
    assert sorted(r["head"] for r in rows) == sorted(jobs)  # one seed each: one row per job
    for row in rows:
        assert row["status"] == "ok", row
        assert 0.0 <= float(row["test_mAP"]) <= 1.0
        assert float(row["infer_ms"]) > 0 and float(row["params_M"]) > 0 and float(row["epoch_s"]) > 0
        # the median inside its interquartile range; one seed: no interval, no standard deviation
        assert float(row["infer_ms_q1"]) <= float(row["infer_ms"]) <= float(row["infer_ms_q3"])
        assert (
            row["n"] == "1" and row["test_mAP_ci_low"] == row["test_mAP_ci_high"] == row["test_mAP_std"] == ""
        )
        assert row["jobs"] == jobs[row["head"]][0].name
        assert row["weights"] == "imagenet"
        job, backbone = jobs[row["head"]]
        assert row["backbone"] == backbone == "efficientnet_lite0"
        metrics, timing = _json(job / "metrics.json"), _json(job / "timing.json")
        for key in ("test/mAP", "test/mAP_50", "val/mAP"):
            assert 0.0 <= float(row[key.replace("/", "_")]) <= 1.0
            assert float(row[key.replace("/", "_")]) == pytest.approx(metrics[key]), key
        assert float(row["train_s"]) == pytest.approx(timing["train_s"])
        assert float(row["epoch_s"]) == pytest.approx(timing["epoch_s_estimate"])
        detector = load_detector(metrics["best_checkpoint"])
        assert float(row["params_M"]) * 1e6 == pytest.approx(sum(p.numel() for p in detector.parameters()))
    pair = _csv(sweep / "light_head_vs_faster.csv")
    assert len(pair) == 1 and float(pair[0]["head_ratio"]) > 0
    by_head, pair = {r["head"]: r for r in rows}, pair[0]
    assert (pair["backbone"], pair["weights"]) == ("efficientnet_lite0", "imagenet")
    assert pair["mAP_F"] == by_head["faster_rcnn"]["test_mAP"]
    assert pair["mAP_LH"] == by_head["light_head_rcnn"]["test_mAP"]
    for split in ("e2e", "head"):
        light, faster = float(pair[f"{split}_LH"]), float(pair[f"{split}_F"])
        assert float(pair[f"{split}_ratio"]) == pytest.approx(light / faster)
    assert all(float(pair[f"{split}_{head}"]) > 0 for split in ("e2e", "head", "roi") for head in ("F", "LH"))
    assert all(
        float(pair[f"{split}_{head}_q1"])
        <= float(pair[f"{split}_{head}"])
        <= float(pair[f"{split}_{head}_q3"])
        for split in ("e2e", "head", "roi")
        for head in ("F", "LH")
    )
    assert min(_png_size(sweep / "benchmark.png")) > 0
    table = (sweep / "benchmark.md").read_text()
    assert "| faster_rcnn |" in table and "Light-Head" in out
    faster_row = by_head["faster_rcnn"]
    spread = [float(faster_row[k]) for k in ("infer_ms", "infer_ms_q1", "infer_ms_q3")]
    assert f"| {float(faster_row['test_mAP']):.3f} (n=1) |" in table
    assert "| {:.1f} [{:.1f}–{:.1f}] |".format(*spread) in table
    # the dashboards callback (in the default callbacks) wrote its plots and numbers for each job
    for job in ("0", "1"):
        plots = sweep / job / "plots"
        names = {p.name.split("_", 3)[-1] for p in plots.glob("val_*")}
        assert {"per_class_ap.png", "pr_curves.png", "confusion_matrix.png", "dashboard.json"} <= names, names
        numbers = json.loads(next(plots.glob("*_dashboard.json")).read_text())
        assert len(numbers["confusion_matrix"]) == 11 and len(numbers["ap"]) == 10


@pytest.mark.slow
def test_transfer_study_pretrains_then_compares_backbone_starts(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    study = tmp_path / "study"
    log_dir = tmp_path / "logs"
    # the variants of distinct code paths: a pretraining's checkpoint, none, a frozen backbone, EMA
    # (the other pretrainings run as this one does: their overrides compose, tested below)
    variants = ["fashion_crops", "scratch", "imagenet_freeze4", "imagenet_ema"]
    _run(
        "transfer_study.py",
        f"--out={study}",
        "--seeds=0",
        f"--variants={','.join(variants)}",
        "--pretrain-overrides",
        "trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=1 "
        "trainer.limit_test_batches=1 data.train_size=64 data.val_size=32 data.test_size=32 "
        "data.batch_size=16 logger=csv extras.num_threads=1 extras.print_config=false "
        f"paths.log_dir={log_dir}",
        f"--crops-overrides=data.crops.root={fashiondet_small_root} data.crops.generate.preset=small",
        "--",
        *_tiny(fashiondet_small_root, log_dir),
        "trainer.max_epochs=1",
    )
    pretrained = {
        key: (study / name / "checkpoints" / "last.ckpt").resolve()
        for key, name, _ in transfer.PRETRAININGS
        if key in transfer.needed_pretrainings(variants)
    }
    assert list(pretrained) == ["fashion_crops_ckpt"] and all(path.is_file() for path in pretrained.values())
    assert not (study / "pretrain_fashion_mnist").exists()  # only the pretrainings the variants need
    sweep = study / "multirun"
    runs = _csv(sweep / "transfer_study_runs.csv")
    assert sorted(r["variant"] for r in runs) == sorted(variants)
    assert all(r["status"] == "ok" for r in runs), runs
    assert len(runs) == len(list(sweep.glob("[0-9]*")))  # one row per job
    for run in runs:
        metrics = _json(sweep / run["job"] / "metrics.json")
        assert run["seed"] == "0"
        for key in ("test/mAP", "test/mAP_50", "val/mAP"):
            assert 0.0 <= float(run[key.replace("/", "_")]) <= 1.0
            assert float(run[key.replace("/", "_")]) == pytest.approx(metrics[key]), key
    summary = _csv(sweep / "transfer_study.csv")
    assert [r["n"] for r in summary] == ["1"] * len(variants)
    ordered = [v for v in transfer.VARIANTS if v in variants]  # the table keeps the study's order
    assert [r["variant"] for r in summary] == [transfer.LABELS[v] for v in ordered]
    by_variant = {r["variant"]: r for r in runs}
    for row, variant in zip(summary, ordered, strict=True):
        # one seed: the mean is that job's value; no interval, no standard deviation
        assert row["test_mAP"] == f"{float(by_variant[variant]['test_mAP']):.3f} (n=1)"
        assert float(row["test_mAP_mean"]) == pytest.approx(float(by_variant[variant]["test_mAP"]))
        assert row["test_mAP_ci_low"] == row["test_mAP_std"] == ""
    assert min(_png_size(sweep / "transfer_study.png")) > 0

    def job_config(variant: str) -> dict:
        job = sweep / by_variant[variant]["job"] / ".hydra"
        return yaml.safe_load((job / "config.yaml").read_text()), yaml.safe_load(
            (job / "overrides.yaml").read_text()
        )

    config, overrides = job_config("fashion_crops")
    for key, path in pretrained.items():
        assert f"transfer.{key}={path}" in overrides
    # each variant's backbone start, freeze and EMA, as the jobs ran them
    for variant, freeze_at, ema in [
        ("scratch", 0, False),
        ("imagenet_freeze4", 4, False),
        ("imagenet_ema", 0, True),
    ]:
        config, _ = job_config(variant)
        assert config["transfer"]["variants"][variant]["freeze_at"] == freeze_at
        checkpoint = torch.load(
            sweep / by_variant[variant]["job"] / "checkpoints" / "last.ckpt", weights_only=True
        )
        assert ("current_model_state" in checkpoint) == ema, variant
        assert checkpoint["hyper_parameters"]["detector"]["backbone"]["freeze_at"] == freeze_at

    # a later run of more seeds joins the table of the first (--with-sweep-dir)
    more = tmp_path / "more_seeds"
    _run(
        "transfer_study.py",
        f"--out={more}",
        "--seeds=1",
        "--variants=imagenet_ema",
        f"--with-sweep-dir={sweep}",
        "--",
        *_tiny(fashiondet_small_root, log_dir),
        "trainer.max_epochs=1",
    )
    # an ImageNet variant starts from no pretraining run: none is run, none is named
    assert not any((more / name).exists() for _, name, _ in transfer.PRETRAININGS)
    more_overrides = yaml.safe_load((more / "multirun" / "0" / ".hydra" / "overrides.yaml").read_text())
    assert {f"transfer.{key}=null" for key, _, _ in transfer.PRETRAININGS} <= set(more_overrides)
    joined = _csv(more / "multirun" / "transfer_study_runs.csv")
    assert len(joined) == len(runs) + 1
    ema_runs = [r for r in joined if r["variant"] == "imagenet_ema"]
    assert sorted(r["seed"] for r in ema_runs) == ["0", "1"]
    assert all((more / "multirun" / r["job"] / "metrics.json").is_file() for r in joined)
    ema_row = next(r for r in _csv(more / "multirun" / "transfer_study.csv") if r["n"] == "2")
    values = [float(r["test_mAP"]) for r in ema_runs]
    assert ema_row["variant"] == transfer.LABELS["imagenet_ema"]
    assert ema_row["test_mAP"].startswith(f"{np.mean(values):.3f} [")
    # two seeds: mean ± t(0.975, 1) s/√2, t = 12.706
    half = 12.706 * np.std(values, ddof=1) / np.sqrt(2)
    assert float(ema_row["test_mAP_ci_high"]) == pytest.approx(np.mean(values) + half, abs=1e-4)
    assert float(ema_row["test_mAP_std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-4)
    with pytest.raises(ValueError, match="imagenet_ema with seed 1 is in two jobs"):
        transfer.read_jobs(more / "multirun", [sweep, more / "multirun"])


def test_every_pretraining_and_variant_of_the_transfer_study_composes() -> None:
    """The study's pretrainings and detection jobs as it launches them (the test above runs one
    pretraining and four variants): each set of overrides composes, and each variant names its
    pretraining's checkpoint key."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for key, _, overrides in transfer.PRETRAININGS:
            config = compose("train", overrides=overrides)
            assert config.task_name.startswith("pretrain_"), key
        config = compose("train", overrides=["experiment=transfer_study"])
    variants = OmegaConf.to_container(config.transfer.variants, resolve=False)
    assert set(variants) == set(transfer.VARIANTS)
    for key, _, _ in transfer.PRETRAININGS:
        assert variants[key.removesuffix("_ckpt")]["weights"] == f"${{transfer.{key}}}"


@pytest.mark.slow
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
    from torch import nn

    from detection.models import build_backbone

    for small, large in (rows[:2], rows[2:]):
        assert float(large["activations_MB"]) > float(small["activations_MB"]) > 0  # grows with the batch
        # feature maps are per image: twice the batch keeps about twice the activations
        assert float(large["activations_MB"]) == pytest.approx(2 * float(small["activations_MB"]), rel=0.1)
        assert float(small["gflops"]) > 0 and float(small["images_per_s"]) > 0
        assert small["gflops"] == large["gflops"]  # per image
        model = build_backbone(small["backbone"], weights=None, norm="bn", freeze_at=0)
        for row in (small, large):
            assert float(row["params_M"]) * 1e6 == pytest.approx(sum(p.numel() for p in model.parameters()))
            assert int(row["width"]) == model.channels[-1]
            assert int(row["depth"]) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    # torchvision's 1.81 GMACs for ResNet-18 at 224 px (its fc left out), at (64/224)^2 the pixels
    assert float(rows[0]["gflops"]) == pytest.approx(2 * 1.8135 * (64 / 224) ** 2, rel=2e-3)
    assert rows[0]["memory_measure"] in ("peak RSS growth (CPU)", "CUDA max allocated")
    assert int(rows[2]["depthwise"]) > 0 and int(rows[0]["depthwise"]) == 0
    assert (tmp_path / "profile_backbone.png").stat().st_size > 0 and "resnet18" in out
    assert min(_png_size(tmp_path / "profile_backbone.png")) > 0


def _profile_two_rows(tmp_path: Path, *flags: str) -> list[dict[str, str]]:
    """profile_backbone.py at 32 px, one timed step, one thread: its two CSV rows."""
    fixed = ["--size=32", "--steps=1", "--warmup=0", "--threads=1", f"--out={tmp_path}"]
    _run("profile_backbone.py", *flags, *fixed)
    rows = _csv(tmp_path / "profile_backbone.csv")
    assert len(rows) == 2
    return rows


@pytest.mark.slow
def test_profile_backbone_measures_both_memory_layouts(tmp_path: Path) -> None:
    nchw, nhwc = _profile_two_rows(
        tmp_path, "--backbones=efficientnet_lite0", "--layouts=nchw,nhwc", "--batch-sizes=2"
    )
    assert (nchw["layout"], nhwc["layout"]) == ("nchw", "nhwc")
    # the same network: the same parameters and FLOPs, only the memory layout differs
    for key in ("params_M", "gflops", "depth", "activations_MB"):
        assert float(nchw[key]) == pytest.approx(float(nhwc[key]), rel=1e-6), key
    assert float(nhwc["images_per_s"]) > 0


@pytest.mark.slow
def test_profile_backbone_measures_bfloat16_autocast(tmp_path: Path) -> None:
    fp32, bf16 = _profile_two_rows(
        tmp_path,
        "--backbones=timm:resnet10t",
        "--layouts=nhwc",
        "--precisions=fp32,bf16",
        "--batch-sizes=128",
    )
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    assert float(fp32["params_M"]) == float(bf16["params_M"])
    # autocast keeps the convolutions' inputs for backward in bfloat16: at a batch where feature maps
    # outweigh its bfloat16 copies of the weights, well under float32's bytes
    assert float(bf16["activations_MB"]) < 0.8 * float(fp32["activations_MB"])
    assert float(bf16["images_per_s"]) > 0


@pytest.mark.slow
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
    for name, row in rows.items():
        assert row["head"] == "fcos" and row["images"] == "3", name
        assert row["exported"].startswith("yes") and row["parity"] == "pass (atol 0.001)", row
        n_torch, n_out = (int(v) for v in row["detections"].split(" / "))
        assert n_torch > 0 and n_torch == n_out == int(row["matched"]), row
        assert float(row["max_box_err"]) <= 1e-3 and float(row["max_score_err"]) <= 1e-3, row
    assert (tmp_path / "fcos.torchscript.pt").is_file()
    assert (tmp_path / "export.png").stat().st_size > 0
    assert min(_png_size(tmp_path / "export.png")) > 0


def test_export_parity_fails_on_a_moved_box_a_changed_score_or_a_lost_detection() -> None:
    from detection.research.export_check import compare, verdict

    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 50]], dtype=np.float32)
    scores, labels = np.array([0.9, 0.6, 0.5], dtype=np.float32), np.array([1, 2, 1])
    ref = (boxes, scores, labels)
    same = compare(ref, ref, 1e-3)
    assert same["ok"] and same["matched"] == 3 and same["box_err"] == same["score_err"] == 0.0
    moved = compare(ref, (boxes + np.array([0, 0, 0.01, 0]), scores, labels), 1e-3)
    assert not moved["ok"] and moved["matched"] == 3 and moved["box_err"] == pytest.approx(0.01)
    rescored = compare(ref, (boxes, scores + np.array([0, 0.01, 0]), labels), 1e-3)
    assert not rescored["ok"] and rescored["score_err"] == pytest.approx(0.01)
    assert not compare(ref, (boxes[1:], scores[1:], labels[1:]), 1e-3)["ok"]  # lost the best one
    assert not compare(ref, (boxes, scores, np.array([2, 2, 1])), 1e-3)["ok"]  # relabelled
    # the lowest score may fall either side of a top-k cut-off: losing it is a tie, not an error
    assert compare(ref, (boxes[:2], scores[:2], labels[:2]), 1e-3)["ok"]
    assert verdict([moved, same], 1e-3) == "FAIL (atol 0.001)" and verdict([same], 1e-3).startswith("pass")


@pytest.mark.slow
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
    plain = float(rows[0]["seconds"])
    for row in rows:
        assert float(row["ms_per_step"]) == pytest.approx(1000 * float(row["seconds"]) / 2)
        assert float(row["ratio"]) == pytest.approx(float(row["seconds"]) / plain)
    assert float(rows[2]["seconds"]) >= float(rows[1]["seconds"])  # the step clock runs inside fit()
    note = (tmp_path / "overhead.md").read_text()
    found = re.search(r"plain vs Lightning: (\S+) \(the steps moved them by up to (\S+)\)", note)
    assert found, note
    difference, moved = float(found[1]), float(found[2])
    assert difference < 1e-5  # the same steps on the same batches: the same weights
    assert moved > 1e-4 > difference  # ... and the steps did train: equal weights are no accident
    assert (tmp_path / "overhead.png").stat().st_size > 0
    assert min(_png_size(tmp_path / "overhead.png")) > 0


@pytest.mark.slow
def test_benchmark_heads_prints_both_heads_per_image(tmp_path: Path) -> None:
    out = _run(
        "benchmark_heads.py",
        "--size=64",
        "--batch=2",
        "--fpn-channels=32",
        "--num-classes=5",
        "--proposals=20",
        "--runs=1",
        "--warmup=0",
    )
    lines = out.strip().splitlines()
    assert "input 64x64, batch 2, FPN 32 ch, 5 classes, Light-Head S, 1 thread(s)" in lines[0]
    assert lines[0].endswith("median [interquartile range] of 1 runs")
    params = dict(re.findall(r"^\s+(\w+)\s+head parameters: ([\d.]+) M$", out, re.MULTILINE))
    assert (
        set(params) == {"faster_rcnn", "light_head_rcnn"}
        and params["faster_rcnn"] != params["light_head_rcnn"]
    )
    table = {line[:18].strip(): line[18:] for line in lines[-7:-2]}
    assert list(table) == ["end to end", "backbone", "head (RPN + RoI)", "RoI heads", "proposals/img"]
    numbers = {key: [float(v) for v in re.findall(r"\d+\.\d+", text)] for key, text in table.items()}
    proposals = numbers.pop("proposals/img")  # a count: Faster, Light-Head, ratio; no spread
    assert len(proposals) == 3 and all(0 < n <= 20 for n in proposals[:2])  # at most --proposals
    for key, values in numbers.items():
        # "median [q1–q3]" per detector, then the ratio of the medians
        assert len(values) == 7 and re.search(r"\d \[\d+\.\d–\d+\.\d\]", table[key]), table[key]
        for median, q1, q3 in (values[0:3], values[3:6]):
            assert 0 < q1 <= median <= q3
        # the table's medians are rounded to 0.1 ms: their ratio is known to within that
        assert values[6] == pytest.approx(
            values[3] / values[0], abs=0.01 + 0.05 * (1 + values[6]) / values[0]
        )
    faster = {key: values[0] for key, values in numbers.items()}
    # the backbone is a part of the whole pass, and the share line is its time over the whole one
    assert faster["backbone"] < faster["end to end"]
    assert lines[-2].startswith("backbone alone")
    share = float(lines[-2].rsplit(": ", 1)[1])
    assert share == pytest.approx(faster["backbone"] / faster["end to end"], abs=0.05)
    floor = float(lines[-1].rsplit(": ", 1)[1])
    # the table is rounded to 0.1 ms
    assert floor == pytest.approx(1 - faster["RoI heads"] / faster["end to end"], abs=0.05)


def test_t_interval_and_the_timing_quartiles_by_hand() -> None:
    interval = t_interval([1.0, 2.0, 3.0])
    # mean 2, s = 1, t(0.975, 2) = 4.3027: half-width 4.3027 / √3 = 2.484
    assert (interval.mean, interval.std, interval.n) == (2.0, 1.0, 3)
    assert interval.low == pytest.approx(2 - 2.4841, abs=1e-4)
    assert interval.high == pytest.approx(2 + 2.4841, abs=1e-4)
    assert interval.text(".3f") == "2.000 [-0.484, 4.484]"
    one = t_interval([0.25, None, float("nan")])  # missing values left out
    assert one.text() == "0.250 (n=1)" and one.n == 1 and np.isnan([one.low, one.high, one.std]).all()
    assert t_interval([]).text() == "-"
    # quartiles interpolated between the sorted runs 1 2 3 4 5 7 10, as numpy.percentile does
    spread = Spread.of([5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.0])
    assert spread == (4.0, 2.5, 6.0) == tuple(np.percentile([5, 1, 4, 2, 3, 10, 7], [50, 25, 75]))
    assert spread.text() == "4.0 [2.5–6.0]"
    assert Spread.of([8.0]) == (8.0, 8.0, 8.0)
    calls = []
    timed = median_iqr_ms(lambda: calls.append(1), warmup=2, runs=5)
    assert len(calls) == 7 and 0 <= timed.q1 <= timed.median <= timed.q3
    assert without_seed(["model=fcos", "seed=1", "+seed=2", "seeded=1"]) == ("model=fcos", "seeded=1")


def _job(number: int, head: str, seed: int, value: float) -> Job:
    job = Job(path=Path(str(number)), number=number, overrides=[f"model={head}", f"seed={seed}"])
    job.config = {"seed": seed, "model": {"detector": {"head": head}, "backbone": {"name": "resnet18"}}}
    job.metrics = {"test/mAP": value, "test/mAP_50": value, "val/mAP": value}
    job.timing = {"train_s": 10.0 * number}
    return job


def test_benchmark_and_transfer_study_report_seeds_as_a_mean_with_its_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    latency = {0: [1.0, 2.0], 1: [3.0, 4.0], 2: [5.0], 3: [9.0]}
    monkeypatch.setattr(
        benchmark, "measure", lambda job, *_: {"latency": latency[job.number], "params_M": 1.0}
    )
    monkeypatch.setattr(benchmark, "split_images", lambda *_: ([], None))
    monkeypatch.setattr(benchmark, "data_root", lambda job: None)
    jobs = [
        _job(0, "fcos", 0, 1.0),
        _job(1, "fcos", 1, 2.0),
        _job(3, "retinanet", 0, 0.5),
        _job(2, "fcos", 2, 3.0),
    ]
    fcos, retinanet = benchmark.tabulate(jobs, argparse.Namespace(images=2, warmup=0, runs=1))
    # the three seeds of fcos are one row: their mean with its t interval (as above)
    assert (fcos["head"], fcos["n"], fcos["jobs"], fcos["setting"]) == ("fcos", 3, "0 1 2", "")
    assert fcos["test_mAP"] == 2.0 and fcos["test_mAP_text"] == "2.000 [-0.484, 4.484]"
    assert fcos["test_mAP_std"] == 1.0 and fcos["train_s"] == 10.0
    # the per-image times of its three checkpoints pooled: 1 2 3 4 5
    assert (fcos["infer_ms"], fcos["infer_ms_q1"], fcos["infer_ms_q3"]) == (3.0, 2.0, 4.0)
    assert fcos["infer_text"] == "3.0 [2.0–4.0]" and fcos["status"] == "ok"
    assert retinanet["test_mAP_text"] == "0.500 (n=1)" and retinanet["test_mAP_ci_low"] is None

    rows = [
        {**benchmark.sweeps.job_results(job), "variant": "imagenet", "seed": job.get("seed")} for job in jobs
    ]
    rows[2]["variant"] = "scratch"
    imagenet, scratch = transfer.summarise(rows)
    assert (imagenet["n"], imagenet["test_mAP"], imagenet["test_mAP_std"]) == (
        3,
        "2.000 [-0.484, 4.484]",
        1.0,
    )
    assert (scratch["n"], scratch["test_mAP"], scratch["test_mAP_std"]) == (1, "0.500 (n=1)", None)


@pytest.mark.parametrize("script", sorted(TOOLS))
def test_each_script_is_a_shim_that_loads_detection_research_first(script: str) -> None:
    source = (SCRIPTS / script).read_text()
    body = ast.parse(source).body
    imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
    # the package sets the OpenMP wait policy, which only counts before torch is first imported
    assert (
        isinstance(imports[0], ast.ImportFrom)
        and imports[0].module == f"detection.research.{TOOLS[script][0]}"
    )
    assert len(source.splitlines()) <= 30
    # ... and runs its main with the command line, as the tests call it (`_run`)
    assert [alias.name for alias in imports[0].names] == ["main"]
    guard = body[-1]
    assert isinstance(guard, ast.If) and ast.unparse(guard) == "if __name__ == '__main__':\n    main()"


def test_detection_research_makes_openmp_wait_passively_unless_told_otherwise() -> None:
    code = "import os, sys, detection.research; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE False"), ("ACTIVE", "ACTIVE False")):
        run_env = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        proc = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.strip() == expected, proc.stderr


@pytest.mark.parametrize("script", sorted(TOOLS))
def test_each_tool_keeps_its_command_line(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, flags = TOOLS[script]
    tool = importlib.import_module(f"detection.research.{module}")
    with pytest.raises(SystemExit) as exited:
        tool.main(["--help"])
    assert exited.value.code == 0
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out)) == flags | {"--help"}
