"""Lightning callbacks of the template."""

from detection.callbacks.dashboards import DetectionDashboards
from detection.callbacks.prediction_images import PredictionImageLogger
from detection.callbacks.rng_state import RngStateCallback

__all__ = ["DetectionDashboards", "PredictionImageLogger", "RngStateCallback"]
