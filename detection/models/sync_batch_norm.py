"""Synchronised BatchNorm that keeps timm's fused activations and runs on GPUs and the CPU alike.

`torch.nn.SyncBatchNorm.convert_sync_batchnorm` turns timm's `BatchNormAct2d` (BatchNorm with its
activation fused, as in EfficientNet-Lite) into a plain `SyncBatchNorm`: the activation is lost. And
torch's layer trains on GPUs only (DDP refuses it in a CPU model), so `trainer=ddp_cpu` could not
run it. `convert_sync_batch_norm` here gives fused layers `SyncBatchNormAct` (a timm `BatchNormAct2d`:
activation and drop kept) and plain ones `SyncBatchNorm`, sharing the originals' parameters and
statistics. In training under a process group of more than one rank both normalise with the batch
statistics of all ranks: each channel's count and sum, then its squared deviations, are summed with
differentiable all-reduces, so each rank's inputs get the gradient of the whole batch. Otherwise
(eval, one process) they are plain BatchNorm. On GPUs the statistics go through torch's own
synchronised kernels (`torch.nn.SyncBatchNorm`'s); the CPU, which torch's layer refuses, gets the
all-reduces written here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from timm.layers import BatchNormAct2d
from timm.layers import SyncBatchNormAct as _TimmSyncBatchNormAct
from torch import Tensor, nn
from torch.nn.modules._functions import SyncBatchNorm as _TorchSyncBatchNormFunction


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input of 2 or more dimensions) synchronised over `process_group` (default: all)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        group = _sync_group(self)
        if group is None:
            return super().forward(input)
        self._check_input_dim(input)
        return _sync_batch_norm(self, input, group)


class SyncBatchNormAct(BatchNormAct2d):
    """timm's `BatchNormAct2d` (BatchNorm, then `drop` and `act`) with the BatchNorm synchronised."""

    process_group: dist.ProcessGroup | None = None

    def forward(self, x: Tensor) -> Tensor:
        group = _sync_group(self)
        if group is None:
            return super().forward(x)
        return self.act(self.drop(_sync_batch_norm(self, x, group)))


SYNC_NORMS = (SyncBatchNorm, SyncBatchNormAct)


def _sync_group(bn: nn.Module) -> dist.ProcessGroup | None:
    if not bn.training or not (dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of each rank's input is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


def _sync_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, group: dist.ProcessGroup) -> Tensor:
    if x.device.type != "cpu":
        return _torch_sync_batch_norm(bn, x, group)

    def all_reduce(tensor: Tensor) -> Tensor:
        return _AllReduceSum.apply(tensor, group)

    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = (1, channels) + (1,) * (x.dim() - 2)
    x32 = x.float()  # statistics in float32 whatever the autocast
    count = x32.new_full((1,), x.numel() // channels)
    totals = all_reduce(torch.cat([x32.sum(dims), count]))
    n = totals[-1]
    mean = totals[:-1] / n
    centred = x32 - mean.view(shape)
    var = all_reduce((centred * centred).sum(dims)) / n  # biased, as BatchNorm normalises
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - factor).add_(mean.detach().to(bn.running_mean.dtype), alpha=factor)
            unbiased = var.detach() * (n / (n - 1).clamp(min=1))
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(x.dtype)


def _torch_sync_batch_norm(
    bn: nn.modules.batchnorm._BatchNorm, x: Tensor, group: dist.ProcessGroup
) -> Tensor:
    """torch's own synchronised kernels (those of `torch.nn.SyncBatchNorm`), on the accelerators
    they exist for; the all-reduces above are for the CPU, where torch has none."""
    factor = bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if factor is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    running_mean = bn.running_mean if bn.track_running_stats else None
    running_var = bn.running_var if bn.track_running_stats else None
    world_size = dist.get_world_size(group)
    return _TorchSyncBatchNormFunction.apply(
        x, bn.weight, bn.bias, running_mean, running_var, bn.eps, factor or 0.0, group, world_size
    )


def share_norm_state(source: nn.Module, target: nn.Module) -> None:
    """`target` takes `source`'s affine parameters, running statistics (the same tensors, so an
    optimiser holding them still does) and train/eval mode."""
    if source.affine:
        target.weight, target.bias = source.weight, source.bias
    target.running_mean = source.running_mean
    target.running_var = source.running_var
    target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)


def convert_sync_batch_norm(module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Every BatchNorm of `module` as a `SyncBatchNorm` (timm's fused BatchNorm + activation as
    `SyncBatchNormAct`, the activation kept), sharing the original's parameters and buffers; layers
    already converted here stay as they are. In place where possible; use the result."""
    if isinstance(module, SYNC_NORMS) or not isinstance(module, nn.modules.batchnorm._BatchNorm):
        for name, child in list(module.named_children()):
            new = convert_sync_batch_norm(child, process_group)
            if new is not child:
                setattr(module, name, new)
        return module
    args = (module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    if isinstance(module, (BatchNormAct2d, _TimmSyncBatchNormAct)):
        sync: nn.modules.batchnorm._BatchNorm = SyncBatchNormAct(*args, apply_act=False)
        sync.act, sync.drop = module.act, module.drop
    else:
        sync = SyncBatchNorm(*args)
    sync.process_group = process_group
    share_norm_state(module, sync)
    if hasattr(module, "qconfig"):
        sync.qconfig = module.qconfig
    return sync


__all__ = ["SYNC_NORMS", "SyncBatchNorm", "SyncBatchNormAct", "convert_sync_batch_norm", "share_norm_state"]
