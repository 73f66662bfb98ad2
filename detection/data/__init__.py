"""Data: Fashion-MNIST, the FashionDet benchmark generator, COCO-format data sets and data modules.

Knows nothing of models or tasks.
"""

from detection.data.canvas import FASHIONDET_PRESETS, make_fashiondet
from detection.data.classification import ClassificationDataModule
from detection.data.coco import CocoDetection, read_image
from detection.data.datamodule import DetectionDataModule, collate_detection
from detection.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNISTNotFoundError, load_fashion_mnist
from detection.data.transforms import build_eval_transforms, build_train_transforms
from detection.data.validation import CocoFormatError, CocoStats

__all__ = [
    "FASHIONDET_PRESETS",
    "FASHION_MNIST_CLASSES",
    "ClassificationDataModule",
    "CocoDetection",
    "CocoFormatError",
    "CocoStats",
    "DetectionDataModule",
    "FashionMNISTNotFoundError",
    "build_eval_transforms",
    "build_train_transforms",
    "collate_detection",
    "load_fashion_mnist",
    "make_fashiondet",
    "read_image",
]
