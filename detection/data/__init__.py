"""Data: detection sets in COCO, Pascal VOC and YOLO layouts, the FashionDet generator, Fashion-MNIST,
transforms, loaders, data modules, the converter between layouts and the pictures to look at first.

Knows nothing of models or tasks.
"""

from detection.data.classification import ClassificationDataModule
from detection.data.coco import CocoDetection, read_image
from detection.data.coco.validation import CocoFormatError, CocoStats
from detection.data.datamodule import DetectionDataModule
from detection.data.dataset import DetectionDataset
from detection.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNISTNotFoundError, load_fashion_mnist
from detection.data.fashiondet import FASHIONDET_PRESETS, make_fashiondet
from detection.data.loading import collate_detection
from detection.data.readers import FORMATS, make_reader
from detection.data.records import DataFormatError, DetectionIndex, DetectionStats
from detection.data.transforms import build_eval_transforms, build_train_transforms
from detection.data.voc import VocFormatError
from detection.data.yolo import YoloFormatError

__all__ = [
    "FASHIONDET_PRESETS",
    "FASHION_MNIST_CLASSES",
    "FORMATS",
    "ClassificationDataModule",
    "CocoDetection",
    "CocoFormatError",
    "CocoStats",
    "DataFormatError",
    "DetectionDataModule",
    "DetectionDataset",
    "DetectionIndex",
    "DetectionStats",
    "FashionMNISTNotFoundError",
    "VocFormatError",
    "YoloFormatError",
    "build_eval_transforms",
    "build_train_transforms",
    "collate_detection",
    "load_fashion_mnist",
    "make_fashiondet",
    "make_reader",
    "read_image",
]
