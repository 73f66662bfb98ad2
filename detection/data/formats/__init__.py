"""Detection data formats side by side, each a module whose reader registers itself by name.

Every reader turns a split into the same `DetectionIndex` (`detection.data.records`), so nothing
after it asks which format it holds. Layouts (the defaults; `<split>_ann` and `<split>_images`
point elsewhere):
- coco: annotations/instances_<split>.json, images in <split>/ (`coco.py`)
- voc:  ImageSets/Main/<split>.txt (one image id a line), Annotations/<id>.xml, JPEGImages/ (`voc.py`)
- yolo: images/<split>/ and labels/<split>/ (or the folders data.yaml names), data.yaml (`yolo.py`)

A new format: a module with a `SplitReader` subclass under `@register_format("name")`, imported
below (or by the user's code before the data module is built).
"""

# The built-in formats register themselves when imported here.
from detection.data.formats.base import SplitPaths, SplitReader, read_class_list
from detection.data.formats.coco import CocoFormatError, CocoReader, parse_coco
from detection.data.formats.registry import FORMATS, make_reader, register_format
from detection.data.formats.voc import VocFormatError, VocReader
from detection.data.formats.yolo import YoloFormatError, YoloReader

__all__ = [
    "FORMATS",
    "CocoFormatError",
    "CocoReader",
    "SplitPaths",
    "SplitReader",
    "VocFormatError",
    "VocReader",
    "YoloFormatError",
    "YoloReader",
    "make_reader",
    "parse_coco",
    "read_class_list",
    "register_format",
]
