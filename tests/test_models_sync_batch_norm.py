"""Synchronised BatchNorm keeps the network: `norm=syncbn` and the trainer's `BatchNormSync` plugin
(`trainer.sync_batchnorm=true`) give backbones whose eval outputs are the unconverted ones', timm's
fused activations included, and the plugin's revert puts the original layers back. Training with
them on the CPU under DDP: tests/test_train_ddp.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from detection.models.backbones import build_backbone
from detection.models.norms import convert_norms
from detection.models.sync_batch_norm import SYNC_NORMS, SyncBatchNormAct
from detection.runtime.layer_sync import BatchNormSync


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _fused(module: nn.Module) -> int:
    from timm.layers import BatchNormAct2d, SyncBatchNormAct

    return sum(isinstance(m, (BatchNormAct2d, SyncBatchNormAct)) for m in module.modules())


def _layer_types(module: nn.Module) -> list[str]:
    # by name: torchvision's feature extractor is an FX GraphModule, whose class each copy makes anew
    return [type(m).__qualname__ for m in module.modules()]


def _outputs(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(module.eval()(x).values())


def _assert_same_outputs(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)


# torchvision (plain BatchNorm2d), timm with fused BatchNorm + activation, EfficientNet-Lite0 (fused)
@pytest.mark.parametrize(
    ("name", "fused"), [("resnet18", 0), ("timm:mobilenetv3_small_050", 33), ("efficientnet_lite0", 48)]
)
def test_sync_conversion_keeps_the_backbone(name: str, fused: int) -> None:
    torch.manual_seed(0)
    plain = build_backbone(name, weights=None, out_levels=(3, 4, 5), norm="bn")
    for bn in _batch_norms(plain):  # statistics and affine parts far from identity
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.5)
    assert _fused(plain) == fused
    x = torch.randn(2, 3, 64, 64)
    expected = _outputs(plain, x)
    layer_types = _layer_types(plain)

    # model.backbone.norm=syncbn
    synced = convert_norms(copy.deepcopy(plain), "syncbn")
    assert all(isinstance(m, SYNC_NORMS) for m in _batch_norms(synced))
    assert sum(isinstance(m, SyncBatchNormAct) for m in synced.modules()) == fused
    _assert_same_outputs(_outputs(synced, x), expected)

    # trainer.sync_batchnorm=true: the plugin Lightning applies before fit and reverts after it
    plugin = BatchNormSync()
    applied = plugin.apply(copy.deepcopy(plain))
    assert all(isinstance(m, SYNC_NORMS) for m in _batch_norms(applied))
    assert sum(isinstance(m, SyncBatchNormAct) for m in applied.modules()) == fused
    _assert_same_outputs(_outputs(applied, x), expected)
    reverted = plugin.revert(applied)
    assert _layer_types(reverted) == layer_types
    _assert_same_outputs(_outputs(reverted, x), expected)

    # both: layers synchronised when built stay synchronised after fit
    again = BatchNormSync()
    kept = again.revert(again.apply(synced))
    assert _layer_types(kept) == _layer_types(synced)
    _assert_same_outputs(_outputs(kept, x), expected)


def test_disabled_plugin_leaves_the_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert type(BatchNormSync(enabled=False).apply(model)[1]) is nn.BatchNorm2d
