"""LightningModules: they receive a model config and own the training logic around it."""

from detection.tasks.classification import ClassificationTask
from detection.tasks.detection import DetectionTask

__all__ = ["ClassificationTask", "DetectionTask"]
