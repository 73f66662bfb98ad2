"""`Backbone`: a feature extractor that declares its levels (`FeatureSpec`) and its input
normalisation (`Normalization`), and freezes by stage.

Stages and ``freeze_at``: stage 0 is the stem (everything before the stride-4 stage, i.e. up to the
last stride-2 map, or a stride-4 stem such as ConvNeXt's), stage k (1..4) ends at the stride
2**(k+1) level. ``freeze_at=N`` freezes stages 0..N-1: 0 freezes nothing, 1 the stem, 2 the stem and
the stride-4 stage, ..., 5 the whole network. Frozen parameters get ``requires_grad=False`` and
frozen BatchNorms stay in eval mode whatever ``train()`` says, so their statistics do not move.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from detection.models.norms import is_norm

__all__ = ["LEVELS", "NUM_STAGES", "Backbone", "FeatureSpec", "Normalization", "stage_of_parameter"]

LEVELS = (2, 3, 4, 5)  # level L has stride 2**L
NUM_STAGES = 5  # stem + four stages (strides 4, 8, 16, 32)


@dataclass(frozen=True)
class FeatureSpec:
    """One output level of a backbone or neck: its name (``c4``, ``p4``), channels and stride."""

    name: str
    channels: int
    stride: int

    def __post_init__(self) -> None:
        if self.channels <= 0 or self.stride <= 0 or self.stride & (self.stride - 1):
            raise ValueError(f"{self}: channels must be > 0 and the stride a power of two")

    @property
    def level(self) -> int:
        return self.stride.bit_length() - 1


def check_specs(specs: Sequence[FeatureSpec]) -> list[FeatureSpec]:
    """The specs as a list, refused unless non-empty with strictly increasing strides."""
    specs = list(specs)
    if not specs or any(a.stride >= b.stride for a, b in zip(specs, specs[1:])):
        raise ValueError(f"feature levels must be non-empty with increasing strides, got {specs}")
    return specs


@dataclass
class Normalization:
    """The input statistics a backbone was trained with, for images in [0, 1] (3 floats each).

    The only record of them: it is saved with the backbone's state dict (extra state), so a
    detector rebuilt from a checkpoint without pretrained weights normalises as in training, and
    the detector's input transform reads this same object.
    """

    mean: list[float]
    std: list[float]

    def __post_init__(self) -> None:
        self.mean = [float(v) for v in self.mean]
        self.std = [float(v) for v in self.std]
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"normalisation needs 3 means and 3 positive stds, got {self.mean}, {self.std}")


def stage_of_parameter(stage_of: dict[str, int], parameter: str) -> int | None:
    """Stage of `parameter` (a dotted name) from the module/parameter paths in `stage_of`."""
    path = parameter
    while path:
        if path in stage_of:
            return stage_of[path]
        path = path.rpartition(".")[0]
    return None


class Backbone(nn.Module):
    """A feature extractor that declares its levels. Build it with `build_backbone`.

    ``forward(x)`` takes a *normalised* batch [B, 3, H, W] and returns an ordered dict
    ``{"c3": map, "c4": map, ...}``, one entry per `feature_specs` item. The wrapped network sits at
    ``.extractor``, so state-dict keys are ``extractor.<the network's own key>``.
    """

    def __init__(
        self,
        extractor: nn.Module,
        *,
        name: str,
        feature_specs: Sequence[FeatureSpec],
        output_keys: Sequence[str | int],
        stage_of: dict[str, int],
        normalization: Normalization,
        norm: str,
        freeze_at: int = 0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = bool(channels_last)
        # NHWC convolutions train several times faster on CPU (oneDNN) and with AMP on GPU; the
        # layout is kept by .to(device) and by load_state_dict, which copies into these tensors.
        self.extractor = extractor.to(memory_format=torch.channels_last) if channels_last else extractor
        self.name = name
        self.feature_specs = check_specs(feature_specs)
        self.normalization = normalization
        self.norm = norm
        self._output_keys = list(output_keys)
        self._stage_of = dict(stage_of)
        self.freeze_at = 0
        self.freeze(freeze_at)

    # Views of feature_specs, as the heads and the FPN read them.
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.feature_specs]

    @property
    def channels(self) -> list[int]:
        return [s.channels for s in self.feature_specs]

    @property
    def strides(self) -> list[int]:
        return [s.stride for s in self.feature_specs]

    @property
    def levels(self) -> list[int]:
        return [s.level for s in self.feature_specs]

    @property
    def image_mean(self) -> list[float]:
        return self.normalization.mean

    @property
    def image_std(self) -> list[float]:
        return self.normalization.std

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Change the statistics in place (the transform that reads them sees the change)."""
        checked = Normalization(list(mean), list(std))
        self.normalization.mean, self.normalization.std = checked.mean, checked.std

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.extractor(x)
        return OrderedDict((name, out[key]) for name, key in zip(self.names, self._output_keys, strict=True))

    def stage_of(self, parameter_or_module: str) -> int | None:
        """Stage (0 stem .. 4) of an extractor parameter or module name; None if unattributed."""
        return stage_of_parameter(self._stage_of, parameter_or_module)

    def stage_parameters(self) -> Iterator[tuple[int | None, str, nn.Parameter]]:
        """(stage, name, parameter) for every extractor parameter, in registration order."""
        for name, param in self.extractor.named_parameters():
            yield self.stage_of(name), f"extractor.{name}", param

    def freeze(self, freeze_at: int) -> None:
        """Freeze stages 0..freeze_at-1 and unfreeze the rest (0 unfreezes everything)."""
        if not 0 <= int(freeze_at) <= NUM_STAGES:
            raise ValueError(
                f"freeze_at must be in 0..{NUM_STAGES} (0 nothing, 1 stem, 2 stem + first stage, ..., "
                f"{NUM_STAGES} all), got {freeze_at}"
            )
        if freeze_at and not self._stage_of:
            raise ValueError(f"cannot tell the stages of backbone {self.name!r}, so freeze_at must be 0")
        self.freeze_at = int(freeze_at)
        for stage, _, param in self.stage_parameters():
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

    # The normalisation travels with the weights (see `Normalization`).
    def get_extra_state(self) -> dict[str, Any]:
        return {"name": self.name, "image_mean": list(self.image_mean), "image_std": list(self.image_std)}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict) and "image_mean" in state and "image_std" in state:
            self.set_normalization(state["image_mean"], state["image_std"])

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, names={self.names}, channels={self.channels}, strides={self.strides}, "
            f"norm={self.norm!r}, freeze_at={self.freeze_at}, channels_last={self.channels_last}"
        )
