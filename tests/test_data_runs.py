"""Runs meet the data first: classes come from it, every split a run uses is checked before the first
step, and a detector on data with other classes says so (or gets a new classification layer)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import QUIET, isolated_environ, read_metrics, single_run_dir, tiny, train_in_process

from detection.data import FASHION_MNIST_CLASSES, DetectionDataModule
from detection.training import DetectionTask


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path) -> Iterator[None]:
    with isolated_environ(tmp_path):
        yield


def _coco_run(root: Path, log_dir: Path, *extra: str) -> list[str]:
    """data=coco on a FashionDet copy, two batches, no generator and no data.num_classes."""
    shared = [o for o in tiny(root, log_dir) if not o.startswith("data.generate")]
    return ["data=coco", *shared, *QUIET, "data.num_workers=0", "trainer.max_epochs=1", *extra]


def _without_test(source: Path, root: Path) -> Path:
    shutil.copytree(source, root)
    (root / "annotations" / "instances_test.json").unlink()
    return root


def _checkpoints(log_dir: Path) -> list[Path]:
    return sorted(log_dir.rglob("*.ckpt"))


def test_wrong_num_classes_stops_before_training_with_both_numbers(
    fashiondet_small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        train_in_process(_coco_run(fashiondet_small_root, tmp_path / "logs", "data.num_classes=7"))
    assert info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "instances_train.json has 10 categories but data.num_classes=7" in last
    assert _checkpoints(tmp_path / "logs") == []


def test_missing_test_split_is_refused_before_training(
    fashiondet_small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = _without_test(fashiondet_small_root, tmp_path / "set")
    with pytest.raises(SystemExit):
        train_in_process(_coco_run(root, tmp_path / "logs", "test=true"))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError: The test split is needed by this run but its annotation file")
    assert str(root / "annotations" / "instances_test.json") in last and last.endswith(
        "test=false to train without testing"
    )
    assert _checkpoints(tmp_path / "logs") == []  # not one step trained


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_without_test_split_test_false_trains_and_exits_0(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    root = _without_test(fashiondet_small_root, tmp_path / "set")
    # through the script's job wrapper, which ends a failed run with SystemExit(1)
    train_in_process(_coco_run(root, tmp_path / "logs", "test=false", "task_name=no_test"))
    metrics = read_metrics(single_run_dir(tmp_path / "logs", "no_test"))
    assert metrics["global_step"] == 2 and "test/mAP" not in metrics
    assert _checkpoints(tmp_path / "logs")


# ------------------------------------------------------------------ a detector on data with other classes
def _relabelled(source: Path, root: Path, names: list[str]) -> Path:
    """FashionDet's boxes and images (linked) with the categories mapped onto `names`."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (root / split).symlink_to(source / split)
        data = json.loads((source / "annotations" / f"instances_{split}.json").read_text())
        for ann in data["annotations"]:
            ann["category_id"] = (ann["category_id"] - 1) % len(names) + 1
        data["categories"] = [{"id": i, "name": n} for i, n in enumerate(names, 1)]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _task(**kwargs: object) -> DetectionTask:
    spec = {
        "version": 1,
        "head": "fcos",
        "num_classes": 10,
        "backbone": {"name": "efficientnet_lite0", "weights": None},
        "neck": {"out_channels": 16, "extra_levels": "none"},
        "num_convs": 1,
    }
    return DetectionTask(
        detector=spec, optimizer={"name": "SGD", "lr": 0.0}, class_names=FASHION_MNIST_CLASSES, **kwargs
    )


def _trainer() -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_train_batches=1,
        limit_val_batches=0,
        limit_test_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _data(root: Path) -> DetectionDataModule:
    return DetectionDataModule(root=root, batch_size=2, print_summary=False)


def test_same_count_other_names_warns(
    fashiondet_small_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = [f"class{i}" for i in range(10)]
    with caplog.at_level(logging.WARNING):
        _trainer().test(_task(), datamodule=_data(_relabelled(fashiondet_small_root, tmp_path / "d", names)))
    # each differing class named, the data's with the file it is first in
    assert "Class names of the data differ from the checkpoint's" in caplog.text
    pattern = r"not in the checkpoint: 'class0' \(first in \S+annotations/instances_train\.json\)"
    assert re.search(pattern, caplog.text), caplog.text
    assert "in the checkpoint but not in the data: 'T-shirt/top'" in caplog.text


def test_other_count_is_an_error_or_a_new_classification_layer(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    data = _data(_relabelled(fashiondet_small_root, tmp_path / "d", ["top", "bottom", "shoe"]))
    with pytest.raises(
        ValueError,
        match=r"predicts 10 classes \(\['T-shirt/top'.* data has 3 \(\['top'.*'top' \(first in \S+\.json",
    ):
        _trainer().test(_task(), datamodule=data)
    task = _task(reset_classes=True)
    _trainer().fit(task, datamodule=data)  # fine-tunes with a new 3-class layer
    assert task.detector.head.classification_head.cls_logits.out_channels == 3
    assert task.hparams.detector["num_classes"] == 3 and task.class_names == ["top", "bottom", "shoe"]
    assert task.hparams.reset_classes is False  # a checkpoint of it is a 3-class detector


@pytest.mark.slow
def test_init_from_fine_tunes_a_checkpoint_on_data_with_other_classes(
    fashiondet_small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first, _ = train_in_process(_coco_run(fashiondet_small_root, tmp_path / "first", "test=false"))
    checkpoint = first / "checkpoints" / "last.ckpt"
    other = _relabelled(fashiondet_small_root, tmp_path / "d", ["top", "bottom", "shoe"])
    # lr 0: the fine-tuned weights are the checkpoint's, so the test sees where they came from
    fine_tune = _coco_run(other, tmp_path / "second", f"init_from={checkpoint}", "model.optimizer.lr=0.0")
    with pytest.raises(SystemExit):
        train_in_process(fine_tune)
    error = capsys.readouterr().err
    assert "predicts 10 classes" in error and "but the data has 3" in error and "reset_classes=true" in error
    run_dir, _ = train_in_process([*fine_tune, "model.task.reset_classes=true"])
    tuned = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    source = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert tuned["hyper_parameters"]["detector"]["num_classes"] == 3
    assert tuned["hyper_parameters"]["class_names"] == ["top", "bottom", "shoe"]
    assert tuned["global_step"] == 2  # a fresh run of its own, not a resume
    # the backbone's weights, not its BatchNorm running statistics: those follow the new data at lr 0
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    body = [
        k
        for k in source["state_dict"]
        if k.startswith("detector.backbone.body.extractor.") and not k.endswith(statistics)
    ]
    assert body and all(torch.equal(tuned["state_dict"][k], source["state_dict"][k]) for k in body)
