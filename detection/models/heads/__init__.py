"""Detection heads: each builds a torchvision-style detector from a `DetectorBackbone` and knobs."""

from detection.models.heads.faster_rcnn import RCNN, build_faster_rcnn
from detection.models.heads.fcos import build_fcos
from detection.models.heads.light_head_rcnn import build_light_head_rcnn
from detection.models.heads.retinanet import build_retinanet

HEAD_BUILDERS = {
    "fcos": build_fcos,
    "retinanet": build_retinanet,
    "faster_rcnn": build_faster_rcnn,
    "light_head_rcnn": build_light_head_rcnn,
}

# The neck each head is usually paired with; a config's neck entries override these.
NECK_DEFAULTS = {
    "fcos": {"extra_levels": "p6p7", "p6p7_from": "p5"},
    "retinanet": {"extra_levels": "p6p7", "p6p7_from": "c5"},
    "faster_rcnn": {"extra_levels": "maxpool"},
    "light_head_rcnn": {"extra_levels": "maxpool"},
}

__all__ = [
    "HEAD_BUILDERS",
    "NECK_DEFAULTS",
    "RCNN",
    "build_faster_rcnn",
    "build_fcos",
    "build_light_head_rcnn",
    "build_retinanet",
]
