"""COCO-format detection data: the dataset, and the validation that reads and checks the JSON."""

from detection.data.coco.dataset import IMAGE_EXTENSIONS, CocoDetection, read_image
from detection.data.coco.validation import CocoFormatError, CocoIndex, CocoStats, parse_coco

__all__ = [
    "IMAGE_EXTENSIONS",
    "CocoDetection",
    "CocoFormatError",
    "CocoIndex",
    "CocoStats",
    "parse_coco",
    "read_image",
]
