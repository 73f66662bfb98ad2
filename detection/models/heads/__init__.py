"""Detection heads: each builds a torchvision-style detector from a `DetectorBackbone` and knobs."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from detection.models.heads.faster_rcnn import build_faster_rcnn
from detection.models.heads.fcos import build_fcos
from detection.models.heads.light_head_rcnn import build_light_head_rcnn
from detection.models.heads.rcnn import RCNN, build_rcnn
from detection.models.heads.retinanet import build_retinanet

HEAD_BUILDERS: dict[str, Callable[..., object]] = {
    "fcos": build_fcos,
    "retinanet": build_retinanet,
    "faster_rcnn": build_faster_rcnn,
    "light_head_rcnn": build_light_head_rcnn,
}
# Builders that take `**rcnn_options` pass them on to build_rcnn.
_OPTIONS_PASSED_TO = {"faster_rcnn": build_rcnn, "light_head_rcnn": build_rcnn}

# The neck each head is usually paired with; a config's neck entries override these.
NECK_DEFAULTS = {
    "fcos": {"extra_levels": "p6p7", "p6p7_from": "p5"},
    "retinanet": {"extra_levels": "p6p7", "p6p7_from": "c5"},
    "faster_rcnn": {"extra_levels": "maxpool"},
    "light_head_rcnn": {"extra_levels": "maxpool"},
}


def _keyword_only(function: Callable[..., object]) -> list[str]:
    params = inspect.signature(function).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def head_knobs(head: str) -> list[str]:
    """The keyword arguments head `head` accepts through `build_detector`."""
    knobs = _keyword_only(HEAD_BUILDERS[head])
    if head in _OPTIONS_PASSED_TO:
        knobs += [k for k in _keyword_only(_OPTIONS_PASSED_TO[head]) if k not in knobs]
    return knobs


__all__ = [
    "HEAD_BUILDERS",
    "NECK_DEFAULTS",
    "RCNN",
    "build_faster_rcnn",
    "build_fcos",
    "build_light_head_rcnn",
    "build_rcnn",
    "build_retinanet",
    "head_knobs",
]
