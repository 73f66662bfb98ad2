"""Data: COCO-format data sets, the FashionDet generator, Fashion-MNIST, transforms, loaders, data modules.

Knows nothing of models or tasks.
"""

from detection.data.classification import ClassificationDataModule
from detection.data.coco import CocoDetection, read_image
from detection.data.coco.validation import CocoFormatError, CocoStats
from detection.data.datamodule import DetectionDataModule
from detection.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNISTNotFoundError, load_fashion_mnist
from detection.data.fashiondet import FASHIONDET_PRESETS, make_fashiondet
from detection.data.loading import collate_detection
from detection.data.transforms import build_eval_transforms, build_train_transforms

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
