"""Lightning callbacks of the template (configs in conf/callbacks/)."""

from detection.training.callbacks.batch_norm_stats import BatchNormStatsSync
from detection.training.callbacks.dashboards import DetectionDashboards
from detection.training.callbacks.detections_json import KeepTestDetections
from detection.training.callbacks.ema import EMA
from detection.training.callbacks.finetuning import BackboneUnfreeze
from detection.training.callbacks.loader_state import LoaderStateCallback
from detection.training.callbacks.prediction_images import PredictionImageLogger
from detection.training.callbacks.preemption import PreemptionCheckpoint
from detection.training.callbacks.rng_state import RngStateCallback
from detection.training.callbacks.timing import TrainTimer

__all__ = [
    "EMA",
    "BackboneUnfreeze",
    "BatchNormStatsSync",
    "DetectionDashboards",
    "KeepTestDetections",
    "LoaderStateCallback",
    "PredictionImageLogger",
    "PreemptionCheckpoint",
    "RngStateCallback",
    "TrainTimer",
]
