"""Scheduled unfreeze: the head trains alone for the first epochs, then the backbone joins it.

A Lightning `BaseFinetuning` callback: before training it freezes the backbone's stages below
`frozen_stages`; at the start of epoch `unfreeze_at_epoch` it unfreezes them (down to the
backbone's own ``freeze_at``, which stays frozen) and adds their parameters to the optimiser as
new groups, built by the task's own `parameter_groups` (so weight decay, ``backbone_lr_mult`` and
layer-wise decay apply) and named ``..._unfrozen``. Their learning rate is ``lr_mult`` times what
the task's schedule gives the backbone, ramped up linearly over `warmup_steps` optimiser steps.

Resuming mid-schedule is exact: `BaseFinetuning` stores the optimiser's groups with the
checkpoint and restores them before the optimiser state is loaded; this callback stores the step
of the unfreeze and gives the restored groups their schedule again.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from detection.models.backbones import NUM_STAGES


def _ramped(schedule: Callable[[int], float], start_step: int, warmup_steps: int, step: int) -> float:
    """`schedule(step)`, scaled from 0 at `start_step` to 1 after `warmup_steps` more steps."""
    if warmup_steps <= 0:
        return schedule(step)
    return schedule(step) * min(max((step - start_step + 1) / warmup_steps, 0.0), 1.0)


class BackboneUnfreeze(BaseFinetuning):
    """Freeze backbone stages 0..frozen_stages-1 until epoch `unfreeze_at_epoch` (0-based).

    The task must have a ``backbone`` (a `detection.models.backbones.Backbone`) and
    ``parameter_groups(params, name_suffix)``, as `DetectionTask` and `ClassificationTask` do.

    Args:
        unfreeze_at_epoch: the first epoch in which the backbone trains.
        frozen_stages: stages frozen before that (5: the whole backbone; 2: stem and first stage).
        lr_mult: the unfrozen groups' lr relative to the backbone's lr in the task's schedule.
        warmup_steps: optimiser steps of the linear ramp of that lr from 0.
    """

    def __init__(
        self,
        unfreeze_at_epoch: int = 1,
        frozen_stages: int = NUM_STAGES,
        lr_mult: float = 1.0,
        warmup_steps: int = 100,
    ) -> None:
        super().__init__()
        if unfreeze_at_epoch < 1:
            raise ValueError(
                f"unfreeze_at_epoch must be >= 1 (epoch 0 trains the head alone), got {unfreeze_at_epoch}"
            )
        if not 1 <= frozen_stages <= NUM_STAGES:
            raise ValueError(f"frozen_stages must be in 1..{NUM_STAGES}, got {frozen_stages}")
        if lr_mult <= 0:
            raise ValueError(f"lr_mult must be > 0, got {lr_mult}")
        self.unfreeze_at_epoch = int(unfreeze_at_epoch)
        self.frozen_stages = int(frozen_stages)
        self.lr_mult = float(lr_mult)
        self.warmup_steps = int(warmup_steps)
        self._freeze_at: int | None = None  # the backbone's own freeze_at, kept after the unfreeze
        self._unfrozen = False
        self.unfrozen_at_step: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise RuntimeError(
                "callbacks.backbone_unfreeze does not work under DDP: DistributedDataParallel only "
                "all-reduces parameters that required gradients when it wrapped the model, so the "
                "ranks' backbones would drift apart after the unfreeze. Use model.backbone.freeze_at "
                "for a fixed freeze, or train on one device."
            )
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        backbone = pl_module.backbone
        if self._freeze_at is None:
            self._freeze_at = backbone.freeze_at
        if self.frozen_stages <= self._freeze_at:
            raise ValueError(
                f"frozen_stages={self.frozen_stages} freezes nothing beyond the backbone's own "
                f"freeze_at={self._freeze_at}: raise frozen_stages or lower model.backbone.freeze_at"
            )
        backbone.freeze(self.frozen_stages)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch < self.unfreeze_at_epoch or self._unfrozen:
            return
        backbone = pl_module.backbone
        backbone.freeze(self._freeze_at or 0)
        self._unfrozen = True
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [p for p in backbone.parameters() if p.requires_grad and id(p) not in in_optimizer]
        if not new:  # resumed after the unfreeze: on_fit_start restored the groups
            return
        self.unfrozen_at_step = pl_module.trainer.global_step
        first_new = len(optimizer.param_groups)
        for group in pl_module.parameter_groups(params=new, name_suffix="_unfrozen"):
            group["lr"] *= self.lr_mult
            group["initial_lr"] = group["lr"]
            optimizer.add_param_group(group)
        self._schedule(pl_module.trainer, optimizer, first_new)

    def _schedule(self, trainer: L.Trainer, optimizer: Optimizer, first_new: int) -> None:
        """Give groups `first_new`.. the task's per-step schedule, ramped from the unfreeze step."""
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if scheduler.optimizer is not optimizer:
                continue
            if not isinstance(scheduler, LambdaLR):
                raise TypeError(
                    f"BackboneUnfreeze needs the task's LambdaLR schedule, got {type(scheduler).__name__}"
                )
            schedule = scheduler.lr_lambdas[0]
            for index in range(first_new, len(optimizer.param_groups)):
                group = optimizer.param_groups[index]
                lr_lambda = partial(_ramped, schedule, int(self.unfrozen_at_step or 0), self.warmup_steps)
                if index < len(scheduler.lr_lambdas):
                    scheduler.lr_lambdas[index] = lr_lambda
                else:
                    scheduler.lr_lambdas.append(lr_lambda)
                    scheduler.base_lrs.append(group["initial_lr"])
                group["lr"] = group["initial_lr"] * lr_lambda(scheduler.last_epoch)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        restarting = self._restarting
        sizes = [len(optimizer.param_groups) for optimizer in trainer.optimizers]
        super().on_fit_start(trainer, pl_module)  # a resume: the stored groups, unfrozen ones included
        if restarting:
            for optimizer, size in zip(trainer.optimizers, sizes):
                if len(optimizer.param_groups) > size:
                    self._schedule(trainer, optimizer, size)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "unfrozen_at_step": self.unfrozen_at_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.unfrozen_at_step = state_dict.get("unfrozen_at_step")
