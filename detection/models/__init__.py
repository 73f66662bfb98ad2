"""Detection models in plain PyTorch (no Lightning, no Hydra).

`build_detector(head, num_classes, backbone, neck, ...)` puts any classification backbone
(`build_backbone`) under any head in `HEADS`, joined by an FPN (`build_fpn`). The detector follows
torchvision's contract: ``forward(images, targets)`` returns a dict of losses in train mode and
``[{"boxes", "scores", "labels"}]`` in input-image pixels in eval mode; images are lists of float
[3, H, W] tensors in [0, 1] and labels are [0, num_classes) everywhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from detection.models.backbones import BACKBONES, Backbone, backbone_choices, build_backbone
from detection.models.classifier import Classifier, imagenet_classifier
from detection.models.heads import HEAD_BUILDERS, NECK_DEFAULTS
from detection.models.necks import FPN, DetectorBackbone, build_fpn

HEADS = tuple(HEAD_BUILDERS)


def head_knobs(head: str) -> list[str]:
    """The keyword arguments head `head` accepts through `build_detector`."""
    params = inspect.signature(HEAD_BUILDERS[head]).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_detector(
    head: str,
    num_classes: int,
    backbone: Mapping[str, Any] | Backbone,
    neck: Mapping[str, Any] | None = None,
    min_size: int = 128,
    max_size: int = 128,
    **head_kwargs: Any,
) -> nn.Module:
    """Build detector `head` on `backbone` + FPN.

    Args:
        head: one of `HEADS`.
        num_classes: C; labels are [0, C) in targets and detections (no background index).
        backbone: `build_backbone` keyword arguments (name, weights, out_levels, freeze_at, norm,
            ...) or a built `Backbone`.
        neck: `build_fpn` keyword arguments (out_channels, extra_levels, p6p7_from, norm); missing
            entries take the head's usual pairing (`NECK_DEFAULTS`).
        min_size, max_size: the input transform resizes the short side to min_size, the long side
            to at most max_size.
        head_kwargs: the head's knobs (`head_knobs(head)`), e.g. num_convs, score_thresh.

    The result has ``.backbone.body`` (the `Backbone`) and ``.backbone.fpn`` (the `FPN`).
    """
    if head not in HEAD_BUILDERS:
        raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
    unknown = sorted(set(head_kwargs) - set(head_knobs(head)))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for head {head!r}; it accepts {head_knobs(head)}")
    body = backbone if isinstance(backbone, Backbone) else build_backbone(**dict(backbone))
    neck_kwargs = {**NECK_DEFAULTS[head], **dict(neck or {})}
    fpn_options = set(inspect.signature(build_fpn).parameters) - {"backbone"}
    unknown_neck = sorted(set(neck_kwargs) - fpn_options)
    if unknown_neck:
        raise ValueError(f"unknown neck option(s) {unknown_neck}; it accepts {sorted(fpn_options)}")
    fpn = build_fpn(body, **neck_kwargs)
    model = HEAD_BUILDERS[head](
        DetectorBackbone(body, fpn),
        int(num_classes),
        min_size=int(min_size),
        max_size=int(max_size),
        **head_kwargs,
    )
    model.num_classes = int(num_classes)
    return model


__all__ = [
    "BACKBONES",
    "FPN",
    "HEADS",
    "Backbone",
    "Classifier",
    "DetectorBackbone",
    "backbone_choices",
    "build_backbone",
    "build_detector",
    "build_fpn",
    "head_knobs",
    "imagenet_classifier",
]
