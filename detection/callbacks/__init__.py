"""Lightning callbacks of the template."""

from detection.callbacks.prediction_images import PredictionImageLogger
from detection.callbacks.rng_state import RngStateCallback

__all__ = ["PredictionImageLogger", "RngStateCallback"]
