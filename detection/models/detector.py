"""`build_detector`: any backbone + any neck + any registered head, and the versioned spec that
rebuilds one.

A *detector spec* is a plain dict of `build_detector` arguments plus ``"version"``
(`SPEC_VERSION`). It holds only data (no import paths), so a checkpoint that stores it rebuilds
the detector with `build_from_spec` alone, and renaming a function breaks no old checkpoint.
`upgrade_spec` reads every earlier form: version 0 is the Hydra config of the first releases,
``{"_target_": "detection.models.build_detector", ...}``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from detection.models.backbones import Backbone, build_backbone
from detection.models.heads import head_entry
from detection.models.necks import DetectorBackbone, build_neck

SPEC_VERSION = 1
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
    """Build detector `head` on `backbone` + neck.

    Args:
        head: a registered head (`detection.models.heads.head_names()`).
        num_classes: C; labels are [0, C) in targets and detections (no background index).
        backbone: `build_backbone` keyword arguments (name, weights, out_levels, freeze_at, norm,
            ...) or a built `Backbone`.
        neck: ``name`` (`detection.models.necks.NECKS`; "fpn" when absent) and that neck's
            arguments (FPN: out_channels, extra_levels, p6p7_from, norm); for the head's usual neck,
            missing entries take the head's usual pairing (its registration's ``neck``).
        min_size, max_size: the input transform resizes the short side to min_size, the long side
            to at most max_size.
        head_kwargs: the head's knobs (`head_knobs(head)`), e.g. num_convs, score_thresh.

    The result follows the head contract (`detection.models.heads.Detector`): ``forward(images,
    targets)`` returns a dict of losses in train mode and ``[{"boxes", "scores", "labels"}]`` in
    input-image pixels in eval mode. It has ``.backbone.body`` (the `Backbone`) and
    ``.backbone.neck``, and declares its parts (``backbone_parameters()``, ``head_parameters()``).
    """
    entry = head_entry(head)
    unknown = sorted(set(head_kwargs) - set(entry.knobs()))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for head {head!r}; it accepts {entry.knobs()}")
    body = backbone if isinstance(backbone, Backbone) else build_backbone(**dict(backbone))
    neck_kwargs = dict(neck or {})
    usual = dict(entry.neck)
    usual_name = usual.pop("name", "fpn")
    name = neck_kwargs.pop("name", None) or usual_name
    if name == usual_name:  # the head's usual pairing fills what the config leaves out
        neck_kwargs = {**usual, **neck_kwargs}
    features = DetectorBackbone(
        body, build_neck(body, name, **neck_kwargs), entry.body_maps(body, head_kwargs)
    )
    model = entry.build(
        features, int(num_classes), min_size=int(min_size), max_size=int(max_size), **head_kwargs
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
