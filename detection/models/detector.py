"""`build_detector`: any backbone + FPN + any head, and the versioned spec that rebuilds one.

A *detector spec* is a plain dict of `build_detector` arguments plus ``"version"``
(`SPEC_VERSION`). It holds only data (no import paths), so a checkpoint that stores it rebuilds
the detector with `build_from_spec` alone, and renaming a function breaks no old checkpoint.
`upgrade_spec` reads every earlier form: version 0 is the Hydra config of the first releases,
``{"_target_": "detection.models.build_detector", ...}``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from detection.models.backbones import Backbone, build_backbone
from detection.models.heads import HEAD_BUILDERS, NECK_DEFAULTS, head_knobs
from detection.models.necks import DetectorBackbone, build_fpn

SPEC_VERSION = 1
HEADS = tuple(HEAD_BUILDERS)
_LEGACY_TARGETS = ("detection.models.build_detector",)


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

    The result follows torchvision's contract: ``forward(images, targets)`` returns a dict of
    losses in train mode and ``[{"boxes", "scores", "labels"}]`` in input-image pixels in eval
    mode. It has ``.backbone.body`` (the `Backbone`), ``.backbone.fpn`` (the `FPN`) and declares
    its parts (``backbone_parameters()``, ``head_parameters()``).
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


def upgrade_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` in the current form (a copy): ``version`` set, earlier forms converted."""
    spec = copy.deepcopy(dict(spec))
    target = spec.pop("_target_", None)
    if target is not None:
        if target not in _LEGACY_TARGETS:
            raise ValueError(f"detector spec names _target_ {target!r}; expected one of {_LEGACY_TARGETS}")
        spec.setdefault("version", 0)
    version = int(spec.setdefault("version", SPEC_VERSION))
    if version > SPEC_VERSION:
        raise ValueError(
            f"detector spec version {version} is newer than this code's ({SPEC_VERSION}); update the package"
        )
    if "head" not in spec or "num_classes" not in spec or "backbone" not in spec:
        raise ValueError(f"a detector spec needs head, num_classes and backbone; got keys {sorted(spec)}")
    spec["version"] = SPEC_VERSION  # versions 0 and 1 hold the same arguments
    return spec


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """The detector a spec describes (any version `upgrade_spec` reads)."""
    arguments = upgrade_spec(spec)
    arguments.pop("version")
    return build_detector(**arguments)


def architecture_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec without the backbone's starting weights: what rebuilds the module whose weights a
    checkpoint then fills (no download, no pretraining file that may be gone)."""
    out = upgrade_spec(spec)
    if isinstance(out.get("backbone"), dict):
        out["backbone"]["weights"] = None
    return out
