"""A callback for the DDP tests (named in overrides as `batch_norm_probe.BatchNormProbe`): what each
rank's BatchNorm layers hold, written to files, since the ranks are other processes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn


def norm_layer_types(module: nn.Module) -> list[str]:
    return [type(m).__name__ for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def probe_input() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


class BatchNormProbe(L.Callback):
    """Into `dirpath`, per rank r: `rank<r>_train_start.pt` (the backbone's BatchNorm layer types, its
    state and its eval outputs on `probe_input()`, once fit has set the model up),
    `rank<r>_val_step<N>.pt` (every running mean and variance of the model that validates, at its
    first batch), `rank<r>_test_start.pt` (the backbone's BatchNorm layer types after fit)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def _save(self, trainer: L.Trainer, name: str, data: dict[str, Any]) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(data, self.dirpath / f"rank{trainer.global_rank}_{name}.pt")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        backbone = copy.deepcopy(pl_module.backbone).eval()
        with torch.no_grad():
            outputs = [t.contiguous() for t in backbone(probe_input()).values()]
        state = {k: v.contiguous() if torch.is_tensor(v) else v for k, v in backbone.state_dict().items()}
        self._save(
            trainer,
            "train_start",
            {"layers": norm_layer_types(pl_module.backbone), "state": state, "outputs": outputs},
        )

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            stats = {
                name: value.clone()
                for name, value in pl_module.state_dict().items()
                if name.endswith(("running_mean", "running_var"))
            }
            self._save(trainer, f"val_step{trainer.global_step}", stats)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, "test_start", {"layers": norm_layer_types(pl_module.backbone)})
