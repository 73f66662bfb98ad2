"""Data modules and transforms: batches as the contract says, deterministic eval, summary, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from detection.data import (
    FASHION_MNIST_CLASSES,
    ClassificationDataModule,
    DetectionDataModule,
    build_eval_transforms,
    build_train_transforms,
)
from detection.data.loading import GroupedBatchSampler, aspect_ratio_groups


def _check_batch(images: list, targets: list, size: int | None = None) -> None:
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets)
    for image, target in zip(images, targets):
        assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape[0] == 3
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        if size is not None:
            assert image.shape[-2:] == (size, size)
        boxes, labels = target["boxes"], target["labels"]
        assert type(boxes) is torch.Tensor and boxes.dtype == torch.float32 and boxes.shape[1] == 4
        assert labels.dtype == torch.int64 and labels.shape == (boxes.shape[0],)
        assert labels.numel() == 0 or (int(labels.min()) >= 0 and int(labels.max()) < 10)
        assert bool((boxes[:, 2:] > boxes[:, :2]).all())
        assert bool((boxes[:, 2] <= image.shape[-1]).all()) and bool((boxes[:, 3] <= image.shape[-2]).all())
        assert isinstance(target["image_id"], int)


def test_loaders_give_contract_batches(fashiondet_small_root: Path, capsys: pytest.CaptureFixture) -> None:
    dm = DetectionDataModule(
        root=fashiondet_small_root,
        num_classes=10,
        batch_size=5,
        eval_batch_size=7,
        train_transforms={"output_size": 128, "scale_range": [0.5, 1.5]},
    )
    dm.setup("fit")
    assert dm.class_names == list(FASHION_MNIST_CLASSES) and dm.num_classes == 10
    batches = list(dm.train_dataloader())
    assert len(batches) == 10  # 48 images / 5
    for images, targets in batches:
        _check_batch(images, targets, size=128)
    val = dm.val_dataloader()
    ids = [t["image_id"] for _, targets in val for t in targets]
    assert ids == dm.datasets["val"].image_ids  # not shuffled, every image once
    assert ids == [t["image_id"] for _, targets in dm.val_dataloader() for t in targets]
    images, targets = next(iter(val))
    _check_batch(images, targets, size=128)
    first = dm.datasets["val"][0]
    assert torch.equal(images[0], first[0].as_subclass(torch.Tensor))  # eval is deterministic
    printed = capsys.readouterr().out
    for word in ("images", "negatives", "crowd", "clipped", "refused", "Ankle boot", "train", "val", "test"):
        assert word in printed
    assert printed.count("Detection data") == 1
    dm.setup("test")
    assert capsys.readouterr().out == ""  # one summary only


def test_workers_pin_memory_and_cache(fashiondet_small_root: Path) -> None:
    dm = DetectionDataModule(
        root=fashiondet_small_root,
        batch_size=8,
        num_workers=1,
        pin_memory=True,
        persistent_workers=True,
        cache_images=True,
        print_summary=False,
    )
    dm.setup("test")
    loader = dm.test_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers
    assert loader.pin_memory == torch.cuda.is_available()
    seen = 0
    for images, targets in loader:
        _check_batch(images, targets, size=128)
        seen += len(images)
    assert seen == 24


def test_generates_on_first_use_and_checks_num_classes(tmp_path: Path) -> None:
    generate = {"preset": "small", "num_train": 3, "num_val": 2, "num_test": 2}
    dm = DetectionDataModule(root=tmp_path / "fd", num_classes=10, generate=generate, print_summary=False)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 3
    wrong = DetectionDataModule(root=tmp_path / "fd", num_classes=80, print_summary=False)
    with pytest.raises(ValueError, match="has 10 categories but data.num_classes=80"):
        wrong.setup("fit")


def test_missing_split_and_explicit_layout(fashiondet_small_root: Path, tmp_path: Path) -> None:
    dm = DetectionDataModule(root=tmp_path, print_summary=False)
    with pytest.raises(FileNotFoundError, match="data.train_ann"):
        dm.setup("fit")
    # another layout: explicit files per split
    shutil.copy(fashiondet_small_root / "annotations" / "instances_val.json", tmp_path / "my_val.json")
    dm = DetectionDataModule(
        root=tmp_path,
        val_ann="my_val.json",
        val_images=str(fashiondet_small_root / "val"),
        print_summary=False,
    )
    dm.setup("validate")
    assert len(dm.datasets["val"]) == 24 and "train" not in dm.datasets


def test_a_format_is_its_registered_reader(fashiondet_small_root: Path, tmp_path: Path) -> None:
    from detection.data import FORMATS, make_reader, register_format
    from detection.data.formats import CocoReader, registry

    assert tuple(FORMATS) == ("coco", "voc", "yolo")
    with pytest.raises(
        ValueError, match=r"unknown data.format 'flat'; choose one of \('coco', 'voc', 'yolo'\)"
    ):
        make_reader("flat", tmp_path)
    root = tmp_path / "flat"
    (root / "val").mkdir(parents=True)
    shutil.copy(fashiondet_small_root / "annotations" / "instances_val.json", root / "val.json")
    for image in (fashiondet_small_root / "val").iterdir():
        shutil.copy(image, root / "val" / image.name)
    try:

        @register_format("flat")  # COCO files as <split>.json beside <split>/: one module, nothing else
        class FlatCocoReader(CocoReader):
            def default_paths(self, split: str) -> tuple[str, str]:
                return f"{split}.json", split

        assert FORMATS["flat"] is FlatCocoReader and FlatCocoReader.format == "flat"
        module = DetectionDataModule(root=root, format="flat", print_summary=False)
        module.setup("validate")
        assert len(module.datasets["val"]) == 24 and module.num_classes == 10
        with pytest.raises(ValueError, match="'flat' is registered already by .*FlatCocoReader"):
            register_format("flat")(type("Other", (CocoReader,), {}))
    finally:
        registry._READERS.pop("flat", None)


def test_categories_must_agree_between_splits(fashiondet_small_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "fd"
    shutil.copytree(fashiondet_small_root, root)
    val = json.loads((root / "annotations" / "instances_val.json").read_text())
    val["categories"][0]["name"] = "Tee"
    (root / "annotations" / "instances_val.json").write_text(json.dumps(val))
    with pytest.raises(ValueError, match="All splits must list the same categories"):
        DetectionDataModule(root=root, print_summary=False).setup("fit")


def test_grouped_batches(fashiondet_small_root: Path) -> None:
    dm = DetectionDataModule(
        root=fashiondet_small_root, batch_size=5, group_aspect_ratio=3, print_summary=False
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = [t["image_id"] for _, targets in loader for t in targets]
    assert len(loader) == 10 and sorted(seen) == sorted(dm.datasets["train"].image_ids)
    groups = [0, 1, 0, 1, 1, 0, 2]
    batches = list(GroupedBatchSampler(range(7), groups, batch_size=2))
    assert batches[:2] == [[0, 2], [1, 3]] and len(batches) == 4 == len(
        GroupedBatchSampler(range(7), groups, 2)
    )
    assert aspect_ratio_groups([0.25, 1.0, 4.0], k=3) == [0, 4, 7]


def test_predict_dir(fashiondet_small_root: Path) -> None:
    dm = DetectionDataModule(
        predict_dir=str(fashiondet_small_root / "test"), batch_size=4, eval_transforms={"resize": 64}
    )
    dm.setup("predict")
    images, metas = next(iter(dm.predict_dataloader()))
    assert len(images) == 4 and images[0].shape == (3, 64, 64) and images[0].dtype == torch.float32
    assert metas[0]["path"].endswith("000001.png") and metas[0]["image_id"] == 0


def test_transforms_move_boxes_with_pixels() -> None:
    image = tv_tensors.Image(torch.zeros(3, 40, 60, dtype=torch.uint8))
    image[:, 10:20, 5:15] = 255
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            [[5.0, 10.0, 15.0, 20.0], [0.0, 0.0, 60.0, 1.0]], format="XYXY", canvas_size=(40, 60)
        ),
        "labels": torch.tensor([3, 4]),
        "image_id": 7,
    }
    flip = build_train_transforms(hflip_prob=1.0, scale_range=None, photometric_prob=0.0, min_box_size=2.0)
    out, t = flip(image, target)
    assert out.dtype == torch.float32 and float(out.max()) == 1.0
    assert t["boxes"].tolist() == [[45.0, 10.0, 55.0, 20.0]] and t["labels"].tolist() == [
        3
    ]  # thin box dropped
    assert t["image_id"] == 7
    assert float(out[:, 10:20, 45:55].min()) == 1.0
    torch.manual_seed(0)
    jitter = build_train_transforms(
        hflip_prob=0.0, photometric_prob=0.0, scale_range=[0.5, 2.0], output_size=32
    )
    for _ in range(10):
        out, t = jitter(image, target)
        assert out.shape == (3, 32, 32)
        for box in t["boxes"].round().int().tolist():  # the bright block is where its box says
            x0, y0, x1, y1 = box
            assert float(out[0, y0:y1, x0:x1].mean()) > 0.5
    eval_out, t = build_eval_transforms(resize=[20, 30])(image, target)
    assert eval_out.shape == (3, 20, 30) and t["boxes"][0].tolist() == [2.5, 5.0, 7.5, 10.0]
    big, _ = build_eval_transforms(max_size=30)(image, target)
    small, _ = build_eval_transforms(max_size=100)(image, target)
    assert big.shape == (3, 20, 30) and small.shape == (3, 40, 60)


def test_classification_datamodule() -> None:
    dm = ClassificationDataModule(image_size=32, batch_size=16, val_size=100, train_size=64, test_size=50)
    dm.setup("fit")
    assert dm.class_names == list(FASHION_MNIST_CLASSES) and dm.num_classes == 10
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (64, 100, 50)
    assert not set(dm.datasets["train"].indices) & set(dm.datasets["val"].indices)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0 and float(images.max()) > 0.5
    assert torch.equal(images[:, 0], images[:, 1])
    assert labels.dtype == torch.int64 and int(labels.min()) >= 0 and int(labels.max()) < 10
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 50
    with pytest.raises(ValueError, match="10 classes"):
        ClassificationDataModule(num_classes=12)
