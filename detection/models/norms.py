"""Normalisation policies for backbones and heads.

A pretrained classification network arrives with BatchNorm layers whose statistics were computed on
its pretraining data. Detection batches are small, so the usual choices are to freeze them
("frozen_bn"), keep training them ("bn"), synchronise them across processes ("syncbn") or swap them
for GroupNorm ("gn"), which does not depend on the batch at all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d as TorchvisionFrozenBatchNorm2d

NORMS = ("frozen_bn", "bn", "syncbn", "gn")
HEAD_NORMS = ("gn", "none")


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """The largest number of groups not above `max_groups` that divides `channels`."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def head_norm_layer(norm: str | None) -> Callable[[int], nn.Module]:
    """A `norm_layer(channels)` factory for detection heads: GroupNorm or nothing."""
    norm = norm or "none"  # YAML null reads as None
    if norm == "gn":
        return lambda channels: nn.GroupNorm(group_norm_groups(channels), channels)
    if norm == "none":
        return nn.Identity
    raise ValueError(f"unknown head norm {norm!r}; choose one of {HEAD_NORMS}")


def _is_timm_norm_act(module: nn.Module) -> bool:
    # timm fuses BN with its activation; replacing such a layer by a plain norm would drop the
    # activation, so these get timm's own fused replacements. Only check when timm is loaded: a
    # model can hold timm layers only if timm was imported to build it.
    if "timm" not in sys.modules:
        return False
    from timm.layers import BatchNormAct2d, SyncBatchNormAct

    return isinstance(module, (BatchNormAct2d, SyncBatchNormAct))


def _frozen_affine(frozen: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The scale and shift of a frozen BatchNorm, computed in float32, in `x`'s dtype.

    torchvision's and timm's frozen layers multiply by their float32 statistics, which turns every
    float16/bfloat16 activation under autocast back into float32: twice the memory, and a cast
    before the next convolution.
    """
    scale = frozen.weight * (frozen.running_var + frozen.eps).rsqrt()
    shift = frozen.bias - frozen.running_mean * scale
    return scale.to(x.dtype).reshape(1, -1, 1, 1), shift.to(x.dtype).reshape(1, -1, 1, 1)


class FrozenBatchNorm2d(TorchvisionFrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d that returns its input's dtype (`_frozen_affine`)."""

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = _frozen_affine(self, x)
        return x * scale + shift


class FrozenBatchNormAct2d(FrozenBatchNorm2d):
    """A frozen BatchNorm, then the dropout and activation of the timm BatchNormAct2d it replaces
    (timm's own frozen layer would return float32 under autocast)."""

    def __init__(self, num_features: int, eps: float, act: nn.Module, drop: nn.Module) -> None:
        super().__init__(num_features, eps=eps)
        self.act, self.drop = act, drop

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


def _frozen(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    if _is_timm_norm_act(bn):
        frozen: FrozenBatchNorm2d = FrozenBatchNormAct2d(bn.num_features, bn.eps, bn.act, bn.drop)
    else:
        frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    with torch.no_grad():
        if bn.affine:
            frozen.weight.copy_(bn.weight)
            frozen.bias.copy_(bn.bias)
        if bn.track_running_stats and bn.running_mean is not None:
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
    return frozen


def _group(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    channels = bn.num_features
    if _is_timm_norm_act(bn):
        from timm.layers import GroupNormAct

        gn: nn.GroupNorm = GroupNormAct(channels, group_norm_groups(channels), eps=bn.eps, apply_act=False)
        gn.act, gn.drop = bn.act, bn.drop
    else:
        gn = nn.GroupNorm(group_norm_groups(channels), channels, eps=bn.eps)
    if bn.affine:
        # Keep the learnt affine part; the batch statistics have no GroupNorm counterpart.
        with torch.no_grad():
            gn.weight.copy_(bn.weight)
            gn.bias.copy_(bn.bias)
    return gn


def _replace_batch_norms(module: nn.Module, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_features > 0:
        return make(module)
    for name, child in list(module.named_children()):
        new = _replace_batch_norms(child, make)
        if new is not child:
            setattr(module, name, new)
    return module


def _sync(module: nn.Module) -> nn.Module:
    from detection.models.sync_batch_norm import convert_sync_batch_norm

    return convert_sync_batch_norm(module)


def convert_norms(module: nn.Module, norm: str) -> nn.Module:
    """Apply a norm policy to every BatchNorm of `module` (in place where possible; use the result).

    frozen_bn: `FrozenBatchNorm2d` (`FrozenBatchNormAct2d` for timm's fused layers, keeping their
    activation; both return their input's dtype under autocast) with the running statistics and
    affine parameters copied; they become buffers, never trained.
    bn: unchanged. syncbn: `detection.models.sync_batch_norm.SyncBatchNorm` (timm's fused layers keep
    their activation; it synchronises on the CPU too). gn: `GroupNorm` with the largest group count <= 32
    dividing the channels, affine parameters copied. Networks without BatchNorm (ConvNeXt's
    LayerNorm) are left as they are.
    """
    if norm == "bn":
        return module
    if norm == "frozen_bn":
        return _replace_batch_norms(module, _frozen)
    if norm == "gn":
        return _replace_batch_norms(module, _group)
    if norm == "syncbn":
        return _sync(module)
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


def is_norm(module: nn.Module) -> bool:
    """True for the normalisation layers whose train/eval mode matters (batch statistics)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


__all__ = ["HEAD_NORMS", "NORMS", "convert_norms", "group_norm_groups", "head_norm_layer", "is_norm"]
