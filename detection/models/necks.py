"""Necks (FPN, or none) and the detector's feature module (backbone body + neck).

A neck is chosen by name (`NECKS`, the ``model/neck`` config group) and built by `build_neck`
from the backbone's declared levels. Each declares its outputs as ``.feature_specs`` (with
``.names`` / ``.strides`` views) and ``.out_channels``: one width when every level has it, else
None (a head that needs one width then says so when it is built).

- ``"none"`` (`NoNeck`): the backbone maps as they are (``c3``, ``c4``, ...), for a head that
  takes each level at its own width.
- ``"fpn"`` (`FPN`):

`FPN` is torchvision's `FeaturePyramidNetwork` that names its outputs by level (``p3``, ``p4``, ...,
stride 2**level) and declares them as ``.feature_specs`` (with ``.names`` / ``.strides`` /
``.out_channels`` views), so heads size anchors
and RoI pooling from what it says. Extra levels above the backbone's last one:
- ``"none"``;
- ``"p6p7"``: two stride-2 3x3 convs (torchvision `LastLevelP6P7`), fed by the last FPN output
  (``p6p7_from="p5"``, as FCOS does) or by the last backbone map (``"c5"``, as RetinaNet does);
- ``"maxpool"``: one stride-2 subsampling of the last FPN output (`LastLevelMaxPool`, Faster R-CNN).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import (
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from detection.models.backbones import Backbone, FeatureSpec
from detection.models.norms import group_norm_groups

EXTRA_LEVELS = ("none", "p6p7", "maxpool")
FPN_NORMS = ("none", "gn")


class FPN(FeaturePyramidNetwork):
    """FPN over levels `in_levels` with `out_channels` everywhere; outputs ``p<level>`` maps."""

    def __init__(
        self,
        in_levels: Sequence[int],
        in_channels: Sequence[int],
        out_channels: int = 256,
        extra_levels: str | None = "none",
        p6p7_from: str = "p5",
        norm: str | None = "none",
    ) -> None:
        extra_levels = extra_levels or "none"  # YAML null reads as None
        norm = norm or "none"
        if extra_levels not in EXTRA_LEVELS:
            raise ValueError(f"unknown extra_levels {extra_levels!r}; choose one of {EXTRA_LEVELS}")
        if p6p7_from not in ("p5", "c5"):
            raise ValueError(
                f"p6p7_from must be 'p5' (last FPN output) or 'c5' (last backbone map), got {p6p7_from!r}"
            )
        if norm not in FPN_NORMS:
            raise ValueError(f"unknown FPN norm {norm!r}; choose one of {FPN_NORMS}")
        extra: nn.Module | None = None
        n_extra = 0
        if extra_levels == "p6p7":
            from_backbone = p6p7_from == "c5"
            extra = LastLevelP6P7(in_channels[-1] if from_backbone else out_channels, out_channels)
            # torchvision decides P5-vs-C5 from equal widths; say it explicitly instead.
            extra.use_P5 = not from_backbone
            n_extra = 2
        elif extra_levels == "maxpool":
            extra = LastLevelMaxPool()
            n_extra = 1
        norm_layer = (lambda c: nn.GroupNorm(group_norm_groups(c), c)) if norm == "gn" else None
        super().__init__(list(in_channels), out_channels, extra_blocks=extra, norm_layer=norm_layer)
        last = int(in_levels[-1])
        self.levels = [int(level) for level in in_levels] + [last + i for i in range(1, n_extra + 1)]
        self.feature_specs = [FeatureSpec(f"p{level}", int(out_channels), 2**level) for level in self.levels]
        self.names = [s.name for s in self.feature_specs]
        self.strides = [s.stride for s in self.feature_specs]
        self.out_channels = int(out_channels)
        self.extra_levels = extra_levels

    def forward(self, x: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
        out = super().forward(x)
        return OrderedDict(zip(self.names, out.values(), strict=True))


class NoNeck(nn.Module):
    """The backbone's maps passed on unchanged, under the backbone's names and widths."""

    def __init__(self, feature_specs: Sequence[FeatureSpec]) -> None:
        super().__init__()
        self.feature_specs = list(feature_specs)
        self.names = [s.name for s in self.feature_specs]
        self.strides = [s.stride for s in self.feature_specs]
        widths = {s.channels for s in self.feature_specs}
        self.out_channels = widths.pop() if len(widths) == 1 else None

    def forward(self, x: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
        return OrderedDict((name, x[name]) for name in self.names)


def build_fpn(
    backbone: Backbone,
    out_channels: int = 256,
    extra_levels: str | None = "none",
    p6p7_from: str = "p5",
    norm: str | None = "none",
) -> FPN:
    """An FPN sized from `backbone`'s declared levels and channels."""
    return FPN(backbone.levels, backbone.channels, int(out_channels), extra_levels, p6p7_from, norm)


def build_no_neck(backbone: Backbone) -> NoNeck:
    """No neck: the head reads the backbone's levels directly."""
    return NoNeck(backbone.feature_specs)


NECKS = {"fpn": build_fpn, "none": build_no_neck}


def neck_options(name: str) -> list[str]:
    """The arguments neck `name` takes besides the backbone."""
    if name not in NECKS:
        raise ValueError(f"unknown neck {name!r}; choose one of {tuple(NECKS)}")
    return [p for p in inspect.signature(NECKS[name]).parameters if p != "backbone"]


def build_neck(backbone: Backbone, name: str = "fpn", **options: Any) -> nn.Module:
    """Neck `name` (`NECKS`) over `backbone`'s levels; `options` are its builder's arguments."""
    unknown = sorted(set(options) - set(neck_options(name)))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for neck {name!r}; it accepts {neck_options(name)}")
    return NECKS[name](backbone, **options)


class DetectorBackbone(nn.Module):
    """``body`` (the classification backbone) then ``neck``; what torchvision detectors call backbone.

    Returns the neck's maps, plus the body maps named in `body_outputs` (those a head declares it
    reads, e.g. ``c3`` for Light-Head R-CNN's thin feature map). ``feature_specs`` / ``names`` /
    ``strides`` describe the neck's maps; ``out_channels`` is their one width, which torchvision's
    heads require (a neck whose levels differ raises on reading it, naming the widths).
    """

    def __init__(self, body: Backbone, neck: nn.Module, body_outputs: Sequence[str] = ()) -> None:
        super().__init__()
        unknown = [n for n in body_outputs if n not in body.names]
        if unknown:
            raise ValueError(f"backbone has no level(s) {unknown}; it returns {body.names}")
        self.body = body
        self.neck = neck
        self.body_outputs = list(body_outputs)
        self.feature_specs = list(neck.feature_specs)
        self.names = list(neck.names)
        self.strides = list(neck.strides)
        # checkpoints written before the neck was a choice name it "fpn"
        self.register_load_state_dict_pre_hook(_rename_fpn_keys)

    @property
    def out_channels(self) -> int:
        if self.neck.out_channels is None:
            widths = {s.name: s.channels for s in self.feature_specs}
            raise ValueError(
                f"this head needs one width on every level, but the neck's levels have {widths}; "
                "use a neck that maps them to one width (model/neck=fpn)"
            )
        return int(self.neck.out_channels)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)
        out = self.neck(features)
        for name in self.body_outputs:
            out[name] = features[name]
        return out


def _rename_fpn_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    old = f"{prefix}fpn."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[f"{prefix}neck.{key[len(old) :]}"] = state_dict.pop(key)
