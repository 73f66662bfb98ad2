"""Weight EMA: validation, test and checkpoints use an exponential moving average of the weights.

Lightning's `WeightAveraging` keeps the average (a `torch.optim.swa_utils.AveragedModel`), swaps it
in for every validation, copies it into the model when training ends, and saves it as the
checkpoint's ``state_dict`` with the live weights beside it (``current_model_state``), so a resumed
run continues both exactly and `eval.py` / `load_from_checkpoint` get the averaged detector.

Two changes to Lightning's `EMAWeightAveraging`:
- the decay warms up, ``decay * (1 - exp(-updates / warmup_steps))``: with a fixed 0.999 the
  average of a 1500-step run would still hold a third of its first, untrained weights;
- a checkpoint loaded to *test or validate* keeps its averaged ``state_dict``. Lightning's hook
  loads the live weights whenever an average exists, which, after `fit`, is the same callback
  object that `trainer.test(ckpt_path="best")` calls: the test would score the live weights.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor


class WarmedUpEMA:
    """The AveragedModel update ``ema <- d * ema + (1 - d) * live``, d = decay * (1 - exp(-n / tau)).

    A ``multi_avg_fn``: one foreach lerp over all tensors of a device and dtype (as
    `torch.optim.swa_utils.get_ema_multi_avg_fn`, with the decay warmed up), not a call per tensor.
    The decay is computed on the tensors' device from the update count ``n``, so that an update
    never waits for the GPU. Integer buffers (BatchNorm's batch counters) take the live value.
    A class, not a closure, so that the callback (and its config) stay picklable.
    """

    def __init__(self, decay: float, warmup_steps: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if warmup_steps < 0:
            raise ValueError(f"EMA warmup_steps must be >= 0, got {warmup_steps}")
        self.decay = float(decay)
        self.warmup_steps = float(warmup_steps)

    def factor(self, num_averaged: int | Tensor) -> float | Tensor:
        """The decay after `num_averaged` updates (for a tensor: a float32 tensor on its device)."""
        if isinstance(num_averaged, Tensor):
            warmup = 1.0 - torch.exp(-num_averaged.to(torch.float32) / max(self.warmup_steps, 1e-30))
            return self.decay * (warmup if self.warmup_steps > 0 else torch.ones_like(warmup))
        if self.warmup_steps == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-num_averaged / self.warmup_steps))

    @torch.no_grad()
    def __call__(self, averaged: list[Tensor], live: list[Tensor], num_averaged: Tensor | int) -> None:
        if not averaged:
            return
        if not (averaged[0].is_floating_point() or averaged[0].is_complex()):
            torch._foreach_copy_(averaged, live)
            return
        n = num_averaged if isinstance(num_averaged, Tensor) else torch.tensor(num_averaged)
        weight = 1.0 - self.factor(n.to(averaged[0].device))
        torch._foreach_lerp_(averaged, live, weight.to(averaged[0].dtype))


class EMA(WeightAveraging):
    """EMA of all weights and buffers, updated every `update_every_n_steps` optimiser steps.

    Args:
        decay: the decay once warmed up; the average spans about 1 / (1 - decay) updates.
        warmup_steps: updates over which the decay rises from 0 (see `WarmedUpEMA`); 0 for none.
        update_every_n_steps: update after every n-th optimiser step.
        update_starting_at_step: no update before this optimiser step (0-based); None from the first.
    """

    def __init__(
        self,
        decay: float = 0.998,
        warmup_steps: float = 250,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
    ) -> None:
        if update_every_n_steps < 1:
            raise ValueError(f"EMA update_every_n_steps must be >= 1, got {update_every_n_steps}")
        super().__init__(use_buffers=True, multi_avg_fn=WarmedUpEMA(decay, warmup_steps))
        self.update_every_n_steps = int(update_every_n_steps)
        self.update_starting_at_step = update_starting_at_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:
            return False
        started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
        return started and step_idx % self.update_every_n_steps == 0

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # test/validate/predict: the checkpoint's state_dict, the average, is what to score
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
