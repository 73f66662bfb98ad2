"""Detection models in plain PyTorch (no Lightning, no Hydra).

`build_detector(head, num_classes, backbone, neck, ...)` puts any classification backbone
(`build_backbone`) under any head in `HEADS`, joined by an FPN (`build_fpn`); `build_from_spec`
does the same from a versioned plain-dict spec. Images are lists of float [3, H, W] tensors in
[0, 1] and labels are [0, num_classes) everywhere.
"""

from detection.models.backbones import (
    BACKBONES,
    Backbone,
    FeatureSpec,
    Normalization,
    backbone_choices,
    build_backbone,
)
from detection.models.classifier import Classifier, imagenet_classifier
from detection.models.detector import (
    HEADS,
    SPEC_VERSION,
    architecture_spec,
    build_detector,
    build_from_spec,
    upgrade_spec,
)
from detection.models.heads import head_knobs
from detection.models.necks import FPN, DetectorBackbone, build_fpn

__all__ = [
    "BACKBONES",
    "FPN",
    "HEADS",
    "SPEC_VERSION",
    "Backbone",
    "Classifier",
    "DetectorBackbone",
    "FeatureSpec",
    "Normalization",
    "architecture_spec",
    "backbone_choices",
    "build_backbone",
    "build_detector",
    "build_fpn",
    "build_from_spec",
    "head_knobs",
    "imagenet_classifier",
    "upgrade_spec",
]
