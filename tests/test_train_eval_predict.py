"""After training: `scripts/eval.py` repeats the training run's test, `scripts/predict.py` writes boxes
and drawn images, and a checkpoint loads and predicts in plain Python, without Hydra."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    hydra_job,
    isolated_environ,
    read_metrics,
    reference_run,
    run_script,
    single_run_dir,
    small_data,
    subprocess_env,
)
from PIL import Image

from detection.data import FASHION_MNIST_CLASSES


def _script_overrides(data_root: Path, log_dir: Path) -> list[str]:
    return [*small_data(data_root, log_dir), "data.eval_batch_size=8"]


def _evaluate(checkpoint: str | Path, data_root: Path, tmp_path: Path, in_process: bool = False) -> dict:
    """`scripts/eval.py ckpt_path=<checkpoint>` on the small set (or its job in this process, as the
    script runs it); its metrics.json."""
    overrides = [f"ckpt_path={checkpoint}", *_script_overrides(data_root, tmp_path / "logs")]
    if in_process:
        from detection import pipelines
        from detection.runtime.launch import job

        with isolated_environ(tmp_path), hydra_job(overrides, config_name="eval") as cfg:
            job(pipelines.evaluate)(cfg)
    else:
        run_script("eval", overrides, tmp_path, timeout=300)
    return read_metrics(single_run_dir(tmp_path / "logs", "eval"))


def _assert_same_test_metrics(evaluated: dict, trained: dict) -> None:
    test_names = sorted(k for k in trained if k.startswith("test/"))
    assert "test/mAP" in test_names and "test/AP/Sandal" in test_names
    assert sorted(k for k in evaluated if k.startswith("test/")) == test_names
    assert trained["test/mAR_100"] > 0  # some boxes match: the comparison below is not of zeros only
    for name in test_names:
        assert math.isclose(evaluated[name], trained[name], rel_tol=0, abs_tol=1e-6), name


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_eval_repeats_the_training_test(
    fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reference = reference_run(fashiondet_small_root, tmp_path_factory)
    trained = read_metrics(reference)
    checkpoint = trained["best_checkpoint"]
    evaluated = _evaluate(checkpoint, fashiondet_small_root, tmp_path_factory.mktemp("eval"))
    assert evaluated["checkpoint"] == checkpoint
    _assert_same_test_metrics(evaluated, trained)


def _targets(value: object) -> list[str]:
    """Every `_target_` string anywhere in nested dicts and lists."""
    if isinstance(value, dict):
        return [str(v) for k, v in value.items() if k == "_target_"] + [
            s for v in value.values() for s in _targets(v)
        ]
    if isinstance(value, list):
        return [s for v in value for s in _targets(v)]
    return []


def _earlier_format(checkpoint: dict) -> dict:
    """The same checkpoint as the first releases wrote it: Hydra `_target_` configs for the detector
    and the optimiser, the normalisation also in the hyper-parameters and in the transform's state."""
    old = dict(checkpoint)
    hparams = dict(old["hyper_parameters"])
    detector = {k: v for k, v in hparams["detector"].items() if k != "version"}
    mean = old["state_dict"]["detector.backbone.body._extra_state"]["image_mean"]
    std = old["state_dict"]["detector.backbone.body._extra_state"]["image_std"]
    detector["backbone"] = {**detector["backbone"], "image_mean": mean, "image_std": std}
    hparams["detector"] = {"_target_": "detection.models.build_detector", **detector}
    optimizer = {k: v for k, v in hparams["optimizer"].items() if k != "name"}
    hparams["optimizer"] = {"_target_": "torch.optim.AdamW", "_partial_": True, **optimizer}
    old["hyper_parameters"] = hparams
    old["state_dict"] = {
        **old["state_dict"],
        "detector.transform._extra_state": {"image_mean": mean, "image_std": std},
    }
    return old


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_checkpoint_of_the_earlier_format_evaluates_the_same(
    fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reference = reference_run(fashiondet_small_root, tmp_path_factory)
    trained = read_metrics(reference)
    current = torch.load(trained["best_checkpoint"], map_location="cpu", weights_only=True)
    assert _targets(current["hyper_parameters"]) == []  # plain specs only
    assert current["hyper_parameters"]["detector"]["version"] == 1
    assert current["hyper_parameters"]["detector"]["backbone"]["weights"] is None

    tmp_path = tmp_path_factory.mktemp("earlier_format")
    earlier = tmp_path / "earlier.ckpt"
    torch.save(_earlier_format(current), earlier)
    assert _targets(torch.load(earlier, weights_only=True)["hyper_parameters"]) == [
        "detection.models.build_detector",
        "torch.optim.AdamW",
    ]
    # in this process: test_eval_repeats_the_training_test runs the script
    _assert_same_test_metrics(_evaluate(earlier, fashiondet_small_root, tmp_path, in_process=True), trained)


@pytest.fixture(scope="module")
def predicted(fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(input folder, predict run directory): four test canvases and a wider image of another size,
    one image per batch (detections then do not depend on what else a batch holds)."""
    reference = reference_run(fashiondet_small_root, tmp_path_factory)
    tmp_path = tmp_path_factory.mktemp("predict")
    inputs = tmp_path / "images"
    inputs.mkdir()
    for source in sorted((fashiondet_small_root / "test").iterdir())[:4]:
        shutil.copy(source, inputs / f"{source.stem}.png")
    Image.open(next((fashiondet_small_root / "val").iterdir())).convert("RGB").resize((150, 100)).save(
        inputs / "wide.png"
    )
    run_script(
        "predict",
        [
            f"ckpt_path={reference}",  # a run directory: its checkpoints/last.ckpt
            f"input_dir={inputs}",
            "score_thresh=0.0",
            *_script_overrides(fashiondet_small_root, tmp_path / "logs"),
            "data.eval_batch_size=1",
        ],
        tmp_path,
        timeout=300,
    )
    return inputs, single_run_dir(tmp_path / "logs", "predict")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_predict_writes_boxes_json_and_drawn_images(predicted: tuple[Path, Path]) -> None:
    inputs, run_dir = predicted
    records = json.loads((run_dir / "predictions.json").read_text())
    assert sorted(Path(r["image"]).name for r in records) == sorted(p.name for p in inputs.iterdir())
    for record in records:
        source = Image.open(record["image"])
        width, height = source.size
        assert record["detections"], record["image"]
        for det in record["detections"]:
            x0, y0, x1, y1 = det["box_xyxy"]
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height  # in the input's own pixels
            assert 0.0 <= det["score"] <= 1.0
            assert FASHION_MNIST_CLASSES[det["label"]] == det["class_name"]
        drawn = Image.open(run_dir / "predictions" / f"{Path(record['image']).stem}.png").convert("RGB")
        assert drawn.size == source.size
        assert drawn.tobytes() != source.convert("RGB").tobytes()  # boxes were drawn


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_predict_under_ddp_writes_what_one_process_writes(
    fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory, predicted: tuple[Path, Path]
) -> None:
    """Two ranks split the five images (three and two): rank 0 gathers both shares and writes them
    once, in the folder's order."""
    inputs, single = predicted
    reference = reference_run(fashiondet_small_root, tmp_path_factory)
    tmp_path = tmp_path_factory.mktemp("predict_ddp")
    run_script(
        "predict",
        [
            f"ckpt_path={reference}",
            f"input_dir={inputs}",
            "score_thresh=0.0",
            *_script_overrides(fashiondet_small_root, tmp_path / "logs"),
            "data.eval_batch_size=1",
            "trainer=ddp_cpu",
        ],
        tmp_path,
        timeout=300,
    )
    run_dir = single_run_dir(tmp_path / "logs", "predict")
    expected = json.loads((single / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in expected] == sorted(p.name for p in inputs.iterdir())
    assert json.loads((run_dir / "predictions.json").read_text()) == expected
    assert sorted(p.name for p in (run_dir / "predictions").iterdir()) == sorted(
        f"{p.stem}.png" for p in inputs.iterdir()
    )


_LOAD_AND_PREDICT = """
import json, sys
import torch
from torchvision.io import decode_image
from hydra.core.hydra_config import HydraConfig
from detection.training import DetectionTask

task = DetectionTask.load_from_checkpoint(sys.argv[1], map_location="cpu")
assert not HydraConfig.initialized()
task.eval()
image = decode_image(sys.argv[2], mode="RGB").float() / 255
with torch.no_grad():
    (out,) = task([image])
print(json.dumps({
    "class_names": task.class_names,
    "boxes": out["boxes"].tolist(), "scores": out["scores"].tolist(), "labels": out["labels"].tolist(),
}))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_checkpoint_loads_and_predicts_without_hydra(
    fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory, predicted: tuple[Path, Path]
) -> None:
    reference = reference_run(fashiondet_small_root, tmp_path_factory)
    inputs, run_dir = predicted
    # a canvas, not wide.png: padded to its batch's size in predict, alone here, it would see other borders
    image = sorted(inputs.glob("*.png"))[0]
    assert image.name != "wide.png"
    tmp_path = tmp_path_factory.mktemp("load")
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_PREDICT, str(reference / "checkpoints" / "last.ckpt"), str(image)],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["class_names"] == list(FASHION_MNIST_CLASSES)
    assert len(out["boxes"]) == len(out["scores"]) == len(out["labels"]) > 0
    # the same detections as scripts/predict.py made from the same checkpoint and image
    (record,) = [
        r for r in json.loads((run_dir / "predictions.json").read_text()) if r["image"] == str(image)
    ]
    assert [d["label"] for d in record["detections"]] == out["labels"]
    # predictions.json rounds scores to 1e-4 and boxes to 1e-2 px; the two paths may differ in the
    # last float bits, which can tip a rounding either way
    assert [d["score"] for d in record["detections"]] == pytest.approx(out["scores"], abs=6e-5)
    boxes = [v for d in record["detections"] for v in d["box_xyxy"]]
    assert boxes == pytest.approx([v for box in out["boxes"] for v in box], abs=6e-3)
