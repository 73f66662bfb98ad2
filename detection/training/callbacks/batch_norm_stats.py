"""Under DDP every rank updates its BatchNorm running statistics with its own batches. This callback
averages them over the ranks, so that every rank validates with the same statistics and checkpoints
hold statistics of all the data, not rank 0's share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor, nn


class BatchNormStatsSync(L.Callback):
    """Average every BatchNorm's ``running_mean`` and ``running_var`` over the ranks after each
    training step and before each validation (the weight average's too, e.g. the EMA callback's).

    The running statistics are exponential averages of batch statistics, linear in them: the mean over
    ranks of each rank's running average equals the running average of the ranks' mean batch
    statistics, whenever it is taken. Averaging every step makes checkpoints written between
    validations (every N steps, on SIGTERM) hold them too; it is one all-reduce of a few thousand
    numbers per step. Nothing is exchanged during evaluation, where ranks see different batches. Does
    nothing in a single process.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        average_batch_norm_stats([pl_module])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        averages = [
            callback._average_model
            for callback in trainer.callbacks
            if isinstance(callback, WeightAveraging) and callback._average_model is not None
        ]
        average_batch_norm_stats([pl_module, *averages])


def average_batch_norm_stats(modules: Iterable[nn.Module]) -> None:
    """Replace the running statistics of every BatchNorm in `modules` by their mean over the ranks
    of the default process group (one all-reduce per device and dtype); nothing without one."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    buffers: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    seen: set[int] = set()
    for module in modules:
        for layer in module.modules():
            if not isinstance(layer, nn.modules.batchnorm._BatchNorm) or layer.running_mean is None:
                continue
            for buffer in (layer.running_mean, layer.running_var):
                if id(buffer) not in seen:
                    seen.add(id(buffer))
                    buffers.setdefault((buffer.device, buffer.dtype), []).append(buffer)
    world = dist.get_world_size()
    with torch.no_grad():
        for group in buffers.values():
            flat = torch.cat([b.reshape(-1) for b in group])
            dist.all_reduce(flat)
            flat /= world
            for buffer, value in zip(group, flat.split([b.numel() for b in group])):
                buffer.copy_(value.view_as(buffer))
