"""FashionCrops: classification crops of FashionDet's items, for pretraining on the detection domain."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import QUIET, isolated_environ, read_metrics, train_in_process

from detection.data import ClassificationDataModule, DetectionDataModule
from detection.data.crops import crop_boxes, split_images
from detection.models import build_detector, head_names
from detection.models.backbones.weights import load_backbone_weights
from detection.training import ClassificationTask


def _crops(root: Path, val_fraction: float = 0.1, **kwargs: object) -> ClassificationDataModule:
    crops = {"root": str(root), "format": "coco", "val_fraction": val_fraction}
    module = ClassificationDataModule(data_dir=None, source="fashion_crops", crops=crops, **kwargs)
    module.setup()
    return module


def test_crops_come_from_training_and_val_canvases_only(fashiondet_small_root: Path) -> None:
    detection = DetectionDataModule(root=fashiondet_small_root, print_summary=False)
    detection.setup()
    boxes = {split: sum(len(b) for b in d.index.boxes) for split, d in detection.datasets.items()}
    crops = _crops(fashiondet_small_root, image_size=32)
    sizes = {split: len(d) for split, d in crops.datasets.items()}
    # every training box is a train or val crop, every val box a test crop; the test split gives none
    assert sizes["train"] + sizes["val"] == boxes["train"]
    assert sizes["test"] == boxes["val"]
    assert sizes["val"] > 0
    train_idx, val_idx = split_images(len(detection.datasets["train"]), 0.1, seed=0)
    assert set(train_idx).isdisjoint(val_idx)
    assert sorted([*train_idx, *val_idx]) == list(range(len(detection.datasets["train"])))
    image, label = crops.datasets["train"][0]
    assert (
        image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    )
    assert crops.class_names == detection.class_names and 0 <= int(label) < 10


def test_a_crop_is_the_item_with_its_margin(fashiondet_small_root: Path) -> None:
    detection = DetectionDataModule(root=fashiondet_small_root, print_summary=False)
    detection.setup()
    dataset = detection.datasets["train"]
    index = next(
        i
        for i, b in enumerate(dataset.index.boxes)
        if len(b) and (b[0, :2] > 12).all() and (b[0, 2:] < 116).all()  # away from the border
    )
    images, labels = crop_boxes(dataset, [index], image_size=24, margin=0.1)
    assert len(images) == len(dataset.index.boxes[index]) and labels[0] == dataset.index.labels[index][0]
    x0, y0, x1, y1 = dataset.index.boxes[index][0]
    side = max(x1 - x0, y1 - y0) * 1.2
    left, top = int(round((x0 + x1 - side) / 2)), int(round((y0 + y1 - side) / 2))
    window = dataset.load_image(index).float()[:, top : top + round(side), left : left + round(side)]
    expected = F.interpolate(
        window[None], size=(24, 24), mode="bilinear", antialias=True, align_corners=False
    )[0]
    assert torch.equal(images[0], expected.round().clamp(0, 255).to(torch.uint8))


def test_fashion_crops_without_a_detection_set_is_refused() -> None:
    with pytest.raises(ValueError, match="needs data.crops"):
        ClassificationDataModule(data_dir=None, source="fashion_crops")
    with pytest.raises(ValueError, match="unknown data.source"):
        ClassificationDataModule(data_dir=None, source="cifar")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pretraining_on_fashion_crops_learns_and_its_backbone_loads_into_every_head(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    overrides = [
        "experiment=pretrain_fashion_crops",
        *QUIET,
        f"paths.log_dir={tmp_path / 'logs'}",
        f"data.crops.root={fashiondet_small_root}",
        "data.crops.generate.preset=small",  # the fixture's preset: nothing is rewritten
        "data.crops.val_fraction=0.25",
        "data.batch_size=16",
        "trainer.max_epochs=16",
        "model.scheduler.warmup_steps=5",
        "trainer.enable_progress_bar=false",
    ]
    with isolated_environ(tmp_path):
        run_dir, _ = train_in_process(overrides)
    metrics = read_metrics(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    # about 120 training crops of 36 canvases (the full set's 12,475 reach 0.75 on its test crops,
    # docs/results.md): the classifier fits its training crops, and is above chance (10 %) on the
    # crops of canvases it never saw
    task = ClassificationTask.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    train = _crops(fashiondet_small_root, val_fraction=0.25, image_size=32).datasets["train"]
    with torch.no_grad():
        predicted = task(train.images.float() / 255.0).argmax(dim=1)
    assert float((predicted == train.labels).float().mean()) >= 0.8
    assert metrics["test/acc"] > 0.1, metrics
    for head in head_names():
        detector = build_detector(head, 10, {"name": "efficientnet_lite0", "weights": None})
        report = load_backbone_weights(detector.backbone.body, checkpoint)
        assert report.missing == [] and report.loaded > 0, (head, report.summary())
