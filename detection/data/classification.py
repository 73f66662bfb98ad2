"""ClassificationDataModule: Fashion-MNIST or FashionCrops for backbone pretraining.

Batches are (images float32 [B,3,S,S] in [0,1], labels int64 [B]). Fashion-MNIST's 28x28
greyscale items are resized to `image_size` and repeated over 3 channels, so any RGB backbone takes
them. FashionCrops are colour crops of the items of a detection set's boxes (`detection.data.crops`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from detection.data.crops import crop_boxes, split_images
from detection.data.datamodule import DetectionDataModule
from detection.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from detection.data.loading import EpochRandomSampler, ResumableDataLoader, eval_sampler, loader_options

__all__ = ["SOURCES", "ClassificationDataModule", "CropDataset", "FashionMNISTDataset"]

SOURCES = ("fashion_mnist", "fashion_crops")
log = logging.getLogger(__name__)


class FashionMNISTDataset(Dataset):
    """Items `indices` of a Fashion-MNIST split as (float [3,S,S] in [0,1], int64 label).

    ``max_shift`` > 0: each item moves by up to that many pixels in x and y (uniform; the uncovered
    border is black, the items' background). The items are resized once, at construction (uint8,
    antialiased bilinear, as torchvision resizes uint8 images): resizing each item again every epoch
    cost about 5 % of a 32 px training step.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        image_size: int = 64,
        hflip_prob: float = 0.0,
        max_shift: int = 0,
    ) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0 pixels, got {max_shift}")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.image_size = int(image_size)
        self.hflip_prob = float(hflip_prob)
        self.max_shift = int(max_shift)
        self.labels = torch.as_tensor(np.asarray(labels)[self.indices], dtype=torch.int64)
        images = _resize_items(np.asarray(images)[self.indices], self.image_size)
        # kept padded with the items' black background, so a shift is a slice
        self.images = F.pad(images, [self.max_shift] * 4) if self.max_shift else images

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.max_shift:
            top, left = torch.randint(0, 2 * self.max_shift + 1, (2,)).tolist()
            image = image[:, top : top + self.image_size, left : left + self.image_size]
        image = (image.float() / 255.0).expand(3, -1, -1)
        if self.hflip_prob > 0 and float(torch.rand(())) < self.hflip_prob:
            image = image.flip(-1)
        return image.contiguous(), self.labels[index]


def _resize_items(images: np.ndarray, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 [N,H,W] -> uint8 [N,1,size,size]."""
    items = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))[:, None]
    if size == items.shape[-1]:
        return items
    return torch.cat(
        [
            F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            for part in items.split(chunk)
        ]
    )


class CropDataset(Dataset):
    """Pre-cut uint8 crops [N,3,S,S] with labels [N], as (float [3,S,S] in [0,1], int64 label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, hflip_prob: float = 0.0) -> None:
        self.images = images
        self.labels = labels
        self.hflip_prob = float(hflip_prob)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float() / 255.0
        if self.hflip_prob > 0 and float(torch.rand(())) < self.hflip_prob:
            image = image.flip(-1)
        return image, self.labels[index]


class ClassificationDataModule(L.LightningDataModule):
    """Fashion-MNIST (`source="fashion_mnist"`): train/val from its 60,000 training items (a
    seeded split), test = its test set. FashionCrops (`source="fashion_crops"`): crops of the boxes
    of the detection set `crops` describes, train/val from its training images (whole images held
    out), test from its val images; its test split is never read.

    Args:
        source: "fashion_mnist" or "fashion_crops".
        crops: for FashionCrops, the `DetectionDataModule` arguments of the detection set (root,
            format, generate, ...), plus ``margin`` (context around a box, a fraction of its side)
            and ``val_fraction`` (training images held out for validation).
        data_dir: where to look for the torchvision layout (<data_dir>/FashionMNIST/raw) and to
            download to; the Debian package and $FASHION_MNIST_DIR are searched first.
        download: download through torchvision when not found (needs the internet).
        image_size: side of the square images handed to the model.
        val_size: training items held out for validation (chosen by `split_seed`).
        train_size, test_size: use only the first N training / test items (None: all), for fast runs.
        hflip_prob: probability of a horizontal flip of a training image.
        max_shift: Fashion-MNIST only: a training image moves by up to this many pixels in x and y.
        num_classes: must be 10 (present so that configs can state it for the model to follow).
    """

    def __init__(
        self,
        data_dir: str | Path | None = "data",
        download: bool = False,
        image_size: int = 64,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | str | None = 0,
        pin_memory: bool | str | None = False,
        persistent_workers: bool | str | None = False,
        val_size: int = 5000,
        train_size: int | None = None,
        test_size: int | None = None,
        hflip_prob: float = 0.5,
        max_shift: int = 0,
        split_seed: int = 0,
        num_classes: int = len(FASHION_MNIST_CLASSES),
        source: str = "fashion_mnist",
        crops: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        if source not in SOURCES:
            raise ValueError(f"unknown data.source {source!r}; choose one of {SOURCES}")
        if source == "fashion_crops" and not crops:
            raise ValueError(
                "data.source=fashion_crops needs data.crops: the detection set to crop (root, ...)"
            )
        if source == "fashion_crops" and max_shift:
            raise ValueError("data.max_shift applies to Fashion-MNIST only; FashionCrops take hflip_prob")
        if not 0 < val_size < 60_000:
            raise ValueError(f"val_size must be between 1 and 59999, got {val_size}")
        if num_classes != len(FASHION_MNIST_CLASSES):
            raise ValueError(
                f"Fashion-MNIST has {len(FASHION_MNIST_CLASSES)} classes; data.num_classes={num_classes}"
            )
        self.class_names = list(FASHION_MNIST_CLASSES)
        self.num_classes = len(self.class_names)
        self.datasets: dict[str, Dataset] = {}
        self._detection: DetectionDataModule | None = None
        if source == "fashion_crops":
            options = {k: v for k, v in dict(crops or {}).items() if k not in ("margin", "val_fraction")}
            options.update(cache_images=False, print_summary=False)
            self._detection = DetectionDataModule(**options)

    def _data_dir(self) -> str | None:
        if self.hparams.data_dir is None:
            return None
        from hydra.utils import to_absolute_path

        return to_absolute_path(str(self.hparams.data_dir))

    def prepare_data(self) -> None:
        if self._detection is not None:
            self._detection.prepare_data()
            return
        for split in ("train", "test"):
            load_fashion_mnist(split, data_dir=self._data_dir(), download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self._detection is not None:
            self._setup_crops()
            return
        hp = self.hparams
        images, labels = load_fashion_mnist("train", data_dir=self._data_dir(), download=hp.download)
        order = np.random.default_rng(hp.split_seed).permutation(len(images))
        val_idx, train_idx = order[: hp.val_size], order[hp.val_size :]
        if hp.train_size is not None:
            train_idx = train_idx[: hp.train_size]
        test_images, test_labels = load_fashion_mnist("test", data_dir=self._data_dir(), download=hp.download)
        test_idx = np.arange(
            len(test_images) if hp.test_size is None else min(hp.test_size, len(test_images))
        )
        self.datasets = {
            "train": FashionMNISTDataset(
                images, labels, train_idx, hp.image_size, hp.hflip_prob, hp.max_shift
            ),
            "val": FashionMNISTDataset(images, labels, val_idx, hp.image_size),
            "test": FashionMNISTDataset(test_images, test_labels, test_idx, hp.image_size),
        }

    def _setup_crops(self) -> None:
        hp = self.hparams
        options = dict(hp.crops)
        detection = self._detection
        detection.check_splits(["train", "val"])
        self.class_names = list(detection.class_names or [])
        self.num_classes = len(self.class_names)
        if self.num_classes != hp.num_classes:
            raise ValueError(
                f"{detection.datasets['train'].ann_file}: the detection set has {self.num_classes} classes "
                f"({self.class_names}) but data.num_classes={hp.num_classes}"
            )
        margin = float(options.get("margin", 0.1))
        train_set, val_set = detection.datasets["train"], detection.datasets["val"]
        train_idx, val_idx = split_images(
            len(train_set), float(options.get("val_fraction", 0.1)), hp.split_seed
        )
        if hp.train_size is not None:
            train_idx = train_idx[: hp.train_size]
        test_idx = np.arange(len(val_set) if hp.test_size is None else min(hp.test_size, len(val_set)))
        parts = {
            "train": crop_boxes(train_set, train_idx, hp.image_size, margin),
            "val": crop_boxes(train_set, val_idx, hp.image_size, margin),
            "test": crop_boxes(val_set, test_idx, hp.image_size, margin),
        }
        self.datasets = {
            split: CropDataset(images, labels, hp.hflip_prob if split == "train" else 0.0)
            for split, (images, labels) in parts.items()
        }
        log.info(
            "FashionCrops from %s: %s crops (train/val/test)",
            detection.root,
            "/".join(str(len(d)) for d in self.datasets.values()),
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        hp = self.hparams
        dataset = self.datasets[split]
        # training: a loader that resumes mid-epoch without repeating or skipping batches (resumable.py)
        loader_class = ResumableDataLoader if train else DataLoader
        return loader_class(
            dataset,
            batch_size=hp.batch_size if train else (hp.eval_batch_size or hp.batch_size),
            sampler=EpochRandomSampler(dataset) if train else eval_sampler(dataset),
            **loader_options(hp.num_workers, hp.pin_memory, hp.persistent_workers, self.trainer),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
