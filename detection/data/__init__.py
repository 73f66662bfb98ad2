"""Data: detection sets in COCO, Pascal VOC and YOLO layouts, the FashionDet generator, Fashion-MNIST,
transforms, loaders, data modules, the converter between layouts and the pictures to look at first.

Knows nothing of models or tasks.
"""

from detection.data.classification import ClassificationDataModule
from detection.data.datamodule import DetectionDataModule
from detection.data.dataset import DetectionDataset, read_image
from detection.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNISTNotFoundError, load_fashion_mnist
from detection.data.fashiondet import FASHIONDET_PRESETS, make_fashiondet
from detection.data.formats import (
    FORMATS,
    CocoFormatError,
    SplitReader,
    VocFormatError,
    YoloFormatError,
    make_reader,
    register_format,
)
from detection.data.formats.coco import CocoStats
from detection.data.loading import collate_detection
from detection.data.records import DataFormatError, DetectionIndex, DetectionStats, class_difference
from detection.data.transforms import build_eval_transforms, build_train_transforms

__all__ = [
    "FASHIONDET_PRESETS",
    "FASHION_MNIST_CLASSES",
    "FORMATS",
    "ClassificationDataModule",
    "CocoFormatError",
    "CocoStats",
    "DataFormatError",
    "DetectionDataModule",
    "DetectionDataset",
    "DetectionIndex",
    "DetectionStats",
    "FashionMNISTNotFoundError",
    "SplitReader",
    "VocFormatError",
    "YoloFormatError",
    "build_eval_transforms",
    "build_train_transforms",
    "class_difference",
    "collate_detection",
    "load_fashion_mnist",
    "make_fashiondet",
    "make_reader",
    "read_image",
    "register_format",
]
