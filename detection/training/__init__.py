"""Lightning: the tasks, optimiser groups and schedules, metrics, and every callback of the template."""

from detection.training.classification_task import ClassificationTask
from detection.training.detection_task import DetectionTask

__all__ = ["ClassificationTask", "DetectionTask"]
