"""The detection data set of every format: a validated `DetectionIndex` -> (image, target) on tv_tensors.

Images come out RGB uint8 [3,H,W] whatever the file holds (greyscale, RGBA, palette, 16-bit) and
upright (EXIF orientation applied), so boxes drawn on the displayed image stay on the object.
Images without boxes stay as negatives.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors

from detection.data.records import DataFormatError, DetectionIndex, DetectionStats

__all__ = ["IMAGE_EXTENSIONS", "DetectionDataset", "read_image", "upright_size"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode in _SIXTEEN_BIT:
        # 16-bit (or 32-bit integer) greyscale: map the full 16-bit range onto 0..255; PIL's own
        # convert would clip everything above 255 to white.
        grey = np.asarray(image).astype(np.float32)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(image).astype(np.float32)
        scale = 255.0 if np.nanmax(grey, initial=0.0) <= 1.0 else 1.0
        grey = np.clip(np.rint(np.nan_to_num(grey) * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids PIL's warning on palette transparency
    return np.asarray(image.convert("RGB"))


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file as an upright RGB uint8 tensor [3,H,W].

    Raises the underlying OSError / PIL error for unreadable files; callers add the record.
    """
    with Image.open(path) as image:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation not in (1, None):
            image = ImageOps.exif_transpose(image)
        array = _to_rgb_array(image)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # one copy: writable and channels-first


def upright_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as `read_image` returns it, from its header alone."""
    with Image.open(path) as image:
        width, height = image.size
        # orientations 5-8 turn the picture a quarter: the upright image has the sides swapped
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            return height, width
    return width, height


class DetectionDataset(Dataset):
    """A detection split of any format, from its validated `DetectionIndex`.

    __getitem__ -> (tv_tensors.Image uint8 [3,H,W], {"boxes": tv_tensors.BoundingBoxes XYXY float32,
    "labels": int64 [N], "image_id": int}), then `transforms(image, target)` when given.

    Args:
        image_dir: folder that the records' file_name are relative to.
        index: the split, as a format's reader made it (`detection.data.formats`, `SplitReader.read`).
        transforms: a torchvision.transforms.v2 callable taking and returning (image, target).
        check_files: check at construction that every image file exists (cheap: one listing per folder).
        cache_images: decode every image once into memory (uint8), for small data sets.
        error: the error type of the format, raised for a missing or unreadable image.
    """

    def __init__(
        self,
        image_dir: str | Path,
        index: DetectionIndex,
        transforms: Callable[..., Any] | None = None,
        *,
        check_files: bool = True,
        cache_images: bool = False,
        error: type[DataFormatError] = DataFormatError,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.index = index
        self.ann_file = index.ann_file
        self.transforms = transforms
        self.error = error
        if check_files:
            self._check_files()
        self._cache: list[torch.Tensor] | None = None
        if cache_images:
            self.cache_images()

    # ------------------------------------------------------------------ metadata
    @property
    def class_names(self) -> list[str]:
        return list(self.index.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.index.class_names)

    @property
    def category_ids(self) -> list[int]:
        """Category id of each label (label i -> category_ids[i]; COCO's ids, 1..C for VOC and YOLO)."""
        return list(self.index.category_ids)

    @property
    def image_ids(self) -> list[int]:
        return [record["id"] for record in self.index.images]

    @property
    def images(self) -> list[dict[str, Any]]:
        """Image records {"id", "file_name", "width", "height"} in data set order."""
        return self.index.images

    @property
    def stats(self) -> DetectionStats:
        return self.index.stats

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, from the records (no file is opened)."""
        return [record["width"] / record["height"] for record in self.index.images]

    def __len__(self) -> int:
        return len(self.index.images)

    # ------------------------------------------------------------------ files
    def _check_files(self) -> None:
        listings: dict[Path, set[str]] = {}
        missing = []
        for record in self.index.images:
            path = self.image_dir / record["file_name"]
            folder = path.parent
            if folder not in listings:
                listings[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
            if path.name not in listings[folder]:
                missing.append(record)
        if missing:
            listed = ", ".join(f"{r['file_name']!r} (image id {r['id']})" for r in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise self.error(
                f"{self.ann_file}: {len(missing)} of {len(self)} image file(s) are missing under "
                f"{self.image_dir}: "
                f"{listed}{more}. Fix: put the images there, point the split's image folder key "
                "(e.g. data.train_images) at the right folder, or remove these image records"
            )

    def load_image(self, index: int) -> torch.Tensor:
        """The image of item `index` as RGB uint8 [3,H,W], checked against its record's size."""
        if self._cache is not None:
            return self._cache[index]
        record = self.index.images[index]
        path = self.image_dir / record["file_name"]
        try:
            image = read_image(path)
        except FileNotFoundError:
            raise self.error(
                f"{path}: image file not found (image id {record['id']} in {self.ann_file}). "
                "Fix: restore the file or remove its record"
            ) from None
        except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
            raise self.error(
                f"{path}: cannot read image (image id {record['id']}, file_name {record['file_name']!r} in "
                f"{self.ann_file}): {type(exc).__name__}: {exc}. Fix: replace the file with a readable "
                "image or remove its record"
            ) from None
        height, width = image.shape[-2:]
        if (width, height) != (record["width"], record["height"]):
            hint = ""
            if (height, width) == (record["width"], record["height"]):
                hint = (
                    " The sizes are swapped: the file carries an EXIF rotation and the annotation gives "
                    "the size before it; boxes must be given on the upright image."
                )
            raise self.error(
                f"{path}: decodes to {width}x{height} (upright, after EXIF orientation) but its record "
                f"(image id {record['id']} in {self.ann_file}) says "
                f"{record['width']}x{record['height']}.{hint} "
                "Fix the record's width/height (and its boxes) or the file"
            )
        return image

    def cache_images(self) -> None:
        """Decode every image once and keep it in memory (uint8)."""
        if self._cache is None:
            self._cache = [self.load_image(i) for i in range(len(self))]

    # ------------------------------------------------------------------ items
    def target(self, index: int, canvas_size: Sequence[int] | None = None) -> dict[str, Any]:
        record = self.index.images[index]
        size = tuple(canvas_size) if canvas_size is not None else (record["height"], record["width"])
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(self.index.boxes[index].astype(np.float32)),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=size,
        )
        return {
            "boxes": boxes,
            "labels": torch.from_numpy(self.index.labels[index].copy()),
            "image_id": record["id"],
        }

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image = tv_tensors.Image(self.load_image(index))
        target = self.target(index, image.shape[-2:])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.ann_file}, images={len(self)}, classes={self.num_classes}, "
            f"boxes={self.stats.boxes})"
        )
