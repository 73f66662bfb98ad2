"""`trainer.sync_batchnorm=true` without losing layers: the trainer configs' LayerSync plugin.

Lightning's own plugin (`TorchSyncBatchNorm`) converts with `torch.nn.SyncBatchNorm`, which drops the
activation of timm's fused BatchNorm + activation layers (every norm of EfficientNet-Lite), trains on
GPUs only, and after `fit` turns the layers into plain BatchNorm, activation still missing, for the
test that follows. `BatchNormSync` converts with `detection.models.sync_batch_norm` instead and, after
`fit`, puts the original layers back, holding the trained parameters and statistics.
"""

from __future__ import annotations

from lightning.pytorch.plugins import TorchSyncBatchNorm
from torch import nn

from detection.models.sync_batch_norm import SYNC_NORMS, convert_sync_batch_norm, share_norm_state


class BatchNormSync(TorchSyncBatchNorm):
    """Synchronised BatchNorm during `fit` under DDP (Lightning calls `apply` and `revert`).

    A subclass of Lightning's plugin, so that it replaces it when the Trainer also gets
    ``sync_batchnorm=True``. `enabled` follows that flag in the configs (``${trainer.sync_batchnorm}``):
    the plugin is always in the trainer's list and does nothing when it is off. Layers that are
    synchronised already (``model.backbone.norm=syncbn``) stay as they are, after `fit` too.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)
        self._originals: dict[str, nn.Module] = {}

    def apply(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        self._originals = {
            name: module
            for name, module in model.named_modules()
            if name and isinstance(module, nn.modules.batchnorm._BatchNorm)
            if not isinstance(module, SYNC_NORMS)
        }
        return convert_sync_batch_norm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        originals, self._originals = self._originals, {}
        for name, original in originals.items():
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            sync = getattr(parent, child_name, None)
            if not isinstance(sync, SYNC_NORMS):
                continue  # replaced by someone else since: leave it
            share_norm_state(sync, original)  # the trained parameters and statistics
            setattr(parent, child_name, original)
        return model


__all__ = ["BatchNormSync"]
