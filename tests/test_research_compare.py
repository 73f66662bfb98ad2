"""scripts/compare.py: COCO mAP against faster_coco_eval, bootstrap intervals with known answers,
grouping a multirun by its overrides minus the seed, and the script's files.

Every run here is written by the test as the two COCO files a test run leaves
(`detections_test.json`, `ground_truth_test.json`), from seeded random boxes.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from detection.research.compare import (
    DETECTIONS,
    GROUND_TRUTH,
    NOISE,
    bootstrap,
    collect_groups,
    compare,
    metric_values,
    score_run,
)
from detection.training.errors import error_breakdown

REPO = Path(__file__).resolve().parents[1]
SIDES = (12, 24, 40, 70, 120, 160)  # small, medium and large boxes (COCO's 32 and 96 px limits)


def _ground_truth(n_images: int, n_classes: int, seed: int, crowd: float = 0.0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 300, "height": 300})
        for _ in range(int(rng.integers(1, 5))):
            side = float(rng.choice(SIDES)) * rng.uniform(0.8, 1.2)
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, 300 - w), rng.uniform(0, 300 - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval treats a box id 0 as "unmatched"
                    "image_id": i + 1,
                    "category_id": int(rng.integers(0, n_classes)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            if rng.random() < crowd:  # a crowd region around it: COCOeval must still match the box first
                box = [x - 0.1 * w, y - 0.1 * h, 1.2 * w, 1.2 * h]
                region = annotations[-1] | {"id": len(annotations) + 1, "bbox": box, "iscrowd": 1}
                annotations.append(region | {"area": box[2] * box[3]})
    categories = [{"id": c, "name": f"class {c}"} for c in range(n_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _detections(gt: dict[str, Any], seed: int, jitter: float = 0.12, false_alarms: int = 3) -> list[dict]:
    """Each box found with a shifted copy (some relabelled, some twice, some missed), plus false alarms."""
    rng = np.random.default_rng(seed)
    n_classes = len(gt["categories"])
    out = []
    for ann in gt["annotations"]:
        if rng.random() < 0.1:
            continue
        x, y, w, h = ann["bbox"]
        for _ in range(1 + int(rng.random() < 0.2)):
            label = ann["category_id"] if rng.random() > 0.1 else int(rng.integers(0, n_classes))
            box = [x + rng.normal(0, jitter) * w, y + rng.normal(0, jitter) * h]
            box += [w * np.exp(rng.normal(0, jitter)), h * np.exp(rng.normal(0, jitter))]
            # a better box tends to score higher, as a trained detector's would; no two scores tie
            score = float(rng.uniform(0.3, 1.0) * np.exp(-2 * jitter * abs(rng.normal())))
            out.append({"image_id": ann["image_id"], "category_id": label, "bbox": box, "score": score})
    for image in gt["images"]:
        for _ in range(int(rng.integers(0, false_alarms + 1))):
            w, h = rng.uniform(10, 150, 2)
            box = [float(rng.uniform(0, 150)), float(rng.uniform(0, 150)), float(w), float(h)]
            out.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.integers(0, n_classes)),
                    "bbox": box,
                    "score": float(rng.uniform(0, 0.6)),
                }
            )
    return [d | {"bbox": [float(v) for v in d["bbox"]]} for d in out]


def _faster_coco_eval(gt: dict[str, Any], dets: list[dict]) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(copy.deepcopy(gt))
        evaluation = COCOeval_faster(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _stats(evaluation: Any) -> tuple[np.ndarray, np.ndarray]:
    """COCO's mAP, mAP_50, mAP_75, small, medium, large, and each class's AP (NaN without boxes)."""
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # [T, R, K], area all, 100 detections
    per_class = [p[p > -1].mean() if (p > -1).any() else np.nan for p in np.moveaxis(precision, 2, 0)]
    return np.asarray(evaluation.stats[:6]), np.asarray(per_class)


def _write_run(path: Path, gt: dict[str, Any], dets: list[dict], overrides: list[str] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / GROUND_TRUTH).write_text(json.dumps(gt))
    (path / DETECTIONS).write_text(json.dumps(dets))
    (path / "metrics.json").write_text(json.dumps({"test/mAP": 0.0}))
    if overrides is not None:
        (path / ".hydra").mkdir()
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return path


def _perfect(gt: dict[str, Any], images: set[int]) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
        if a["image_id"] in images
    ]


@pytest.mark.parametrize("crowd", [0.0, 0.15])
def test_full_set_metrics_equal_faster_coco_eval(crowd: float) -> None:
    gt = _ground_truth(60, 5, seed=1, crowd=crowd)
    dets = _detections(gt, seed=2)
    ours = metric_values(score_run(gt, dets))[0]
    stats, per_class = _stats(_faster_coco_eval(gt, dets))
    assert np.all((stats > 0.02) & (stats < 0.95)), stats  # neither trivial nor empty
    np.testing.assert_allclose(ours[:6], stats, atol=1e-6)
    np.testing.assert_allclose(ours[6:], per_class, atol=1e-6)
    if not crowd:  # the error breakdown's AP50 is COCO's too (TIDE leaves crowd regions aside differently)
        assert error_breakdown(gt, dets)["AP50"] == pytest.approx(stats[1], abs=1e-6)


def test_a_bootstrap_replicate_is_coco_eval_on_the_resampled_images() -> None:
    # an image drawn k times counts k times: the same as COCOeval on a data set holding k copies
    gt = _ground_truth(40, 4, seed=3, crowd=0.1)
    dets = _detections(gt, seed=4, false_alarms=6)
    scored = score_run(gt, dets)
    draw = np.random.default_rng(5).integers(0, 40, 40)
    images, annotations, copies = [], [], []
    for new_id, old in enumerate(sorted(draw.tolist()), start=1):
        old_id = int(scored.image_ids[old])
        images.append({"id": new_id, "file_name": f"{new_id}.png", "width": 300, "height": 300})
        for a in (a for a in gt["annotations"] if a["image_id"] == old_id):
            annotations.append(a | {"id": len(annotations) + 1, "image_id": new_id})
        copies += [d | {"image_id": new_id} for d in dets if d["image_id"] == old_id]
    stats, per_class = _stats(_faster_coco_eval(gt | {"images": images, "annotations": annotations}, copies))
    ours = metric_values(scored, np.bincount(draw, minlength=40)[None, :])[0]
    np.testing.assert_allclose(ours, np.concatenate([stats, per_class]), atol=1e-6)


def test_interval_finds_a_known_improvement() -> None:
    # B is A with the detections of a third of the images replaced by perfect ones
    gt = _ground_truth(150, 5, seed=6)
    a = _detections(gt, seed=7)
    better = set(range(1, 151, 3))
    b = [d for d in a if d["image_id"] not in better] + _perfect(gt, better)
    truth = _stats(_faster_coco_eval(gt, b))[0] - _stats(_faster_coco_eval(gt, a))[0]
    values, replicates = bootstrap([[score_run(gt, a)], [score_run(gt, b)]], boot=300, seed=0)
    delta = values[1] - values[0]
    np.testing.assert_allclose(delta[:6], truth, atol=1e-6)  # the point estimate is the full-set delta
    difference = replicates[1] - replicates[0]
    for m in range(6):
        low, high = np.percentile(difference[:, m], [2.5, 97.5])
        assert 0 < low <= truth[m] <= high, (m, low, truth[m], high)


def test_identical_runs_differ_by_exactly_nothing(tmp_path: Path) -> None:
    gt = _ground_truth(30, 3, seed=8)
    dets = _detections(gt, seed=9)
    runs = [_write_run(tmp_path / name, gt, dets) for name in ("a", "b")]
    result = compare(runs, boot=200)
    rows = [r for r in result["rows"] if r["group"] == "b" and r["metric"] in ("mAP", "mAP_50")]
    for row in rows:
        assert row["delta"] == row["ci_low"] == row["ci_high"] == 0.0
        assert row["p"] == 1.0 and row["verdict"] == NOISE
        assert row["value_ci_low"] < row["value"] < row["value_ci_high"]  # a group's own value has a spread


def test_runs_differing_by_noise_alone_are_not_told_apart() -> None:
    # Every image holds the same boxes and B's detections are A's, dealt to other images (pairs swap):
    # both runs are equally good by construction (equal full-set mAP), and a resample favours A as
    # often as B, so the interval holds 0 however the replicates fall.
    layout = _ground_truth(1, 3, seed=10)["annotations"]
    gt = _ground_truth(80, 3, seed=10)
    gt["annotations"] = [
        a | {"id": i * 10 + k + 1, "image_id": i + 1} for i in range(80) for k, a in enumerate(layout)
    ]
    a = _detections(gt, seed=11, jitter=0.2)
    b = [d | {"image_id": d["image_id"] + (1 if d["image_id"] % 2 else -1)} for d in a]
    values, replicates = bootstrap([[score_run(gt, a)], [score_run(gt, b)]], boot=300, seed=0)
    difference = replicates[1] - replicates[0]
    np.testing.assert_allclose(values[1][:3], values[0][:3], atol=1e-12)
    assert np.abs(difference[:, 0]).max() > 0.005  # the replicates do differ, both ways
    for m in range(3):
        low, high = np.percentile(difference[:, m], [2.5, 97.5])
        assert low < 0 < high, (m, low, high)


def test_seeds_are_resampled_within_a_group() -> None:
    gt = _ground_truth(40, 3, seed=12)
    a, b = score_run(gt, _detections(gt, seed=13)), score_run(gt, _detections(gt, seed=14, jitter=0.3))
    values, replicates = bootstrap([[a], [b], [a, b]], boot=400, seed=1)
    np.testing.assert_allclose(values[2], (values[0] + values[1]) / 2)  # point estimate: mean over seeds
    only_a, only_b, mixed = replicates[0][:, 0], replicates[1][:, 0], replicates[2][:, 0]
    share = [np.isclose(mixed, x).mean() for x in (only_a, only_b, (only_a + only_b) / 2)]
    # seeds drawn with replacement: (a, a), (b, b) a quarter of the time each, one of each half of it
    assert sum(share) == pytest.approx(1.0) and all(0.15 < s < 0.65 for s in share), share


def test_runs_on_different_images_are_refused(tmp_path: Path) -> None:
    gt = _ground_truth(20, 3, seed=15)
    short = gt | {
        "images": gt["images"][:-2],
        "annotations": [a for a in gt["annotations"] if a["image_id"] <= 18],
    }
    first = _write_run(tmp_path / "full", gt, _detections(gt, seed=16))
    second = _write_run(tmp_path / "short", short, _detections(short, seed=16))
    with pytest.raises(ValueError, match=r"short was tested on 18 images and .*full on 20"):
        compare([first, second], boot=10)


def test_a_multirun_is_grouped_by_its_overrides_minus_the_seed(tmp_path: Path) -> None:
    gt = _ground_truth(20, 3, seed=17)
    sweep = tmp_path / "sweep"
    for job, (lr, seed) in enumerate([(0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1), (0.3, 0)]):
        overrides = ["experiment=fcos", f"optimizer.lr={lr}", f"seed={seed}"]
        if lr == 0.3:  # a failed job: no test detections
            (sweep / str(job) / ".hydra").mkdir(parents=True)
            (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
            continue
        _write_run(sweep / str(job), gt, _detections(gt, seed=job), overrides)
    single = _write_run(tmp_path / "single", gt, _detections(gt, seed=9), ["experiment=fcos", "seed=5"])
    groups, notes = collect_groups([sweep, single])
    assert [g.name for g in groups] == ["optimizer.lr=0.1", "optimizer.lr=0.2", "single"]
    assert [[p.name for p in g.runs] for g in groups] == [["0", "1"], ["2", "3"], ["single"]]
    assert len(notes) == 1 and notes[0].startswith(f"{sweep / '4'}: left out")
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        collect_groups([tmp_path / "nowhere"])


def test_the_script_writes_its_table_csv_and_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = _ground_truth(30, 3, seed=18)
    worse = _write_run(tmp_path / "worse", gt, _detections(gt, seed=19, jitter=0.25), ["model=a", "seed=0"])
    better = _write_run(tmp_path / "better", gt, _detections(gt, seed=20, jitter=0.03), ["model=b", "seed=0"])
    out = tmp_path / "out"
    argv = ["compare.py", str(worse), str(better), "--boot", "100", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "scripts" / "compare.py"), run_name="__main__")
    printed = capsys.readouterr().out
    text = (out / "compare.md").read_text()
    assert text in printed and "Comparison against `model=a`" in text and "dAP missed" in text
    with (out / "compare.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 * (6 + 3)  # groups x (main metrics + classes)
    row = next(r for r in rows if r["group"] == "model=b" and r["metric"] == "mAP")
    assert row["verdict"] == "better" and float(row["ci_low"]) > 0 and float(row["p"]) < 0.05
    assert float(row["delta"]) == pytest.approx(float(row["value"]) - float(row["baseline_value"]))
    assert (row["n_seeds"], row["n_images"]) == ("1", "30")
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------- real runs of the template
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_runs_seeds_are_noise_and_a_damaged_backbone_is_worse(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    """Three short training runs of the main job's detector on the small FashionDet set (48 training
    canvases, the 24 test ones): two seeds of the same config are not told apart; the same config
    without its ImageNet weights (the damaged variant) is worse, its interval clear of 0."""
    from helpers import isolated_environ, tiny, train_in_process

    def run(name: str, *overrides: str) -> Path:
        with isolated_environ(tmp_path / name):
            run_dir, _ = train_in_process(
                [
                    *tiny(fashiondet_small_root, tmp_path / name / "logs", limits=False, batch_size=8),
                    "model.backbone.weights=imagenet",
                    "trainer.max_epochs=4",
                    "model.scheduler.warmup_steps=4",  # of 24 steps (the main job warms up for 200)
                    "trainer.limit_val_batches=1",
                    "logger=csv",
                    "extras.print_config=false",
                    "++callbacks.dashboards=null",
                    *overrides,
                ]
            )
        return run_dir

    seed_0, seed_1 = run("seed0", "seed=0"), run("seed1", "seed=1")
    damaged = run("damaged", "seed=0", "model.backbone.weights=null")
    result = compare([seed_0, seed_1, damaged], boot=500)
    rows = {(r["group"], r["metric"]): r for r in result["rows"]}
    names = [g.name for g in result["groups"]]
    # 24 steps from ImageNet weights: mAP ~0.02 (mAP_50 ~0.07), from none ~0.0004
    assert rows[(names[0], "mAP")]["value"] > 0.01  # the baseline learned something to lose
    same_config, without_weights = rows[(names[1], "mAP")], rows[(names[2], "mAP")]
    assert same_config["ci_low"] <= 0.0 <= same_config["ci_high"] and same_config["verdict"] == NOISE
    assert without_weights["ci_high"] < 0.0 and without_weights["verdict"] == "worse"
