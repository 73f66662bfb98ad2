"""Detection models in plain PyTorch (no Lightning, no Hydra).

`build_detector(head, num_classes, backbone, neck, ...)` puts any classification backbone
(`build_backbone`) under any registered head (`head_names()`, `register_head`), joined by a neck
(`build_neck`: an FPN, or none); `build_from_spec` does the same from a versioned plain-dict spec.
Images are lists of float [3, H, W] tensors in [0, 1] and labels are [0, num_classes) everywhere.
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
    SPEC_VERSION,
    architecture_spec,
    build_detector,
    build_from_spec,
    upgrade_spec,
)
from detection.models.heads import Detector, head_knobs, head_names, register_head
from detection.models.necks import FPN, NECKS, DetectorBackbone, NoNeck, build_fpn, build_neck

__all__ = [
    "BACKBONES",
    "FPN",
    "NECKS",
    "SPEC_VERSION",
    "Backbone",
    "Classifier",
    "Detector",
    "DetectorBackbone",
    "FeatureSpec",
    "NoNeck",
    "Normalization",
    "architecture_spec",
    "backbone_choices",
    "build_backbone",
    "build_detector",
    "build_fpn",
    "build_from_spec",
    "build_neck",
    "head_knobs",
    "head_names",
    "imagenet_classifier",
    "register_head",
    "upgrade_spec",
]
