"""COCO-format detection data set: a COCO JSON file validated by `parse_coco` -> `DetectionDataset`.

Any COCO detection set (an image folder and a JSON file) works: category ids map to contiguous
labels sorted by id (names kept), crowd boxes are left out, images without boxes stay as
negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from detection.data.coco.validation import CocoFormatError, CocoStats, parse_coco
from detection.data.dataset import IMAGE_EXTENSIONS, DetectionDataset, read_image

__all__ = ["CocoDetection", "CocoFormatError", "CocoStats", "read_image", "IMAGE_EXTENSIONS"]


class CocoDetection(DetectionDataset):
    """A COCO detection split (see `DetectionDataset` for the items).

    Args:
        image_dir: folder that the records' file_name are relative to.
        ann_file: the COCO JSON file.
        transforms: a torchvision.transforms.v2 callable taking and returning (image, target).
        invalid_boxes: "error" (default) or "drop" (count them as refused).
        check_files: check at construction that every image file exists (cheap: one listing per folder).
        cache_images: decode every image once into memory (uint8), for small data sets.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: Callable[..., Any] | None = None,
        *,
        invalid_boxes: str = "error",
        check_files: bool = True,
        cache_images: bool = False,
    ) -> None:
        super().__init__(
            image_dir,
            parse_coco(ann_file, invalid_boxes=invalid_boxes),
            transforms,
            check_files=check_files,
            cache_images=cache_images,
            error=CocoFormatError,
        )
