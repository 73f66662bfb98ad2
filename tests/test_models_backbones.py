"""Backbones: declared levels, freezing, norm policies, generic torchvision/timm names, FPN levels."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detection.models import build_backbone, build_detector, build_fpn
from detection.models.backbones import NUM_STAGES
from detection.models.norms import FrozenBatchNormAct2d


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "name", ["resnet18", "efficientnet_lite0", "timm:resnet18", "mobilenet_v3_large", "regnet_x_400mf"]
)
def test_declared_levels_match_the_maps_at_every_level(name: str) -> None:
    # regnet_x_400mf is in no list: any torchvision classification name works.
    body = build_backbone(name, weights=None, out_levels=(2, 3, 4, 5)).eval()
    assert body.strides == [4, 8, 16, 32] and body.names == ["c2", "c3", "c4", "c5"]
    with torch.no_grad():
        maps = body(torch.rand(1, 3, 96, 128))
    for (key, m), name_, channels, stride in zip(
        maps.items(), body.names, body.channels, body.strides, strict=True
    ):
        assert key == name_
        assert tuple(m.shape) == (1, channels, 96 // stride, 128 // stride)


def test_out_levels_subset_prunes_the_network() -> None:
    full = build_backbone("efficientnet_lite0", weights=None)
    short = build_backbone("efficientnet_lite0", weights=None, out_levels=(3, 4))
    assert short.names == ["c3", "c4"]
    assert sum(p.numel() for p in short.parameters()) < sum(p.numel() for p in full.parameters())
    tv = build_backbone("resnet18", weights=None, out_levels=(3,))
    assert not any(n.startswith("extractor.layer4") for n, _ in tv.named_parameters())
    with pytest.raises(ValueError, match="out_levels"):
        build_backbone("resnet18", weights=None, out_levels=(6,))


def _bn_stats(body: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.running_mean.clone()
        for n, m in body.extractor.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "convnext_tiny"])
def test_frozen_stages_get_no_gradient_and_keep_bn_statistics(name: str) -> None:
    freeze_at = 2  # stem + the stride-4 stage
    model = build_detector(
        "fcos",
        2,
        {"name": name, "weights": None, "freeze_at": freeze_at, "norm": "bn"},
        {"out_channels": 16},
        min_size=64,
        max_size=64,
        num_convs=1,
    )
    body = model.backbone.body
    stats = _bn_stats(body)
    model.train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    sum(model(images, targets).values()).backward()

    frozen, trained = 0, 0
    for pname, param in body.extractor.named_parameters():
        stage = body.stage_of(pname)
        assert stage is not None, pname
        if stage < freeze_at:
            frozen += 1
            assert not param.requires_grad and param.grad is None, pname
        else:
            trained += 1
            assert param.requires_grad, pname
    assert frozen and trained
    moved = []
    for mname, before in stats.items():
        after = dict(body.extractor.named_modules())[mname].running_mean
        if body.stage_of(mname) < freeze_at:
            assert torch.equal(before, after), f"{mname} statistics moved in a frozen stage"
        else:
            moved.append(not torch.equal(before, after))
    if stats:  # convnext has no BatchNorm
        assert any(moved)


def test_freeze_range_and_unfreeze() -> None:
    body = build_backbone("resnet18", weights=None, norm="bn", freeze_at=NUM_STAGES)
    assert not any(p.requires_grad for p in body.parameters())
    body.freeze(0)
    assert all(p.requires_grad for p in body.parameters())
    body.freeze(1)
    frozen = {n for n, p in body.extractor.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1.weight", "bn1.weight", "bn1.bias"}
    body.train()
    assert not body.extractor.bn1.training and body.extractor.layer1.get_submodule("0.bn1").training
    with pytest.raises(ValueError, match="freeze_at"):
        body.freeze(6)


def test_norm_policies() -> None:
    from detection.models.sync_batch_norm import SyncBatchNorm

    frozen = build_backbone("resnet18", weights=None, norm="frozen_bn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    gn = build_backbone("resnet18", weights=None, norm="gn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in gn.modules())
    sync = build_backbone("resnet18", weights=None, norm="syncbn")
    assert any(isinstance(m, SyncBatchNorm) for m in sync.modules())  # works under DDP on the CPU too
    plain = build_backbone("resnet18", weights=None, norm="bn")
    assert any(type(m) is nn.BatchNorm2d for m in plain.modules())
    with pytest.raises(ValueError, match="frozen_bn"):
        build_backbone("resnet18", weights=None, norm="layer")


def test_timm_fused_norms_keep_their_activation() -> None:
    from timm.layers import GroupNormAct

    x = torch.rand(1, 3, 64, 64)
    bn = build_backbone("efficientnet_lite0", weights="imagenet", norm="bn").eval()
    frozen = build_backbone("efficientnet_lite0", weights="imagenet", norm="frozen_bn").eval()
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in frozen.modules())
    with torch.no_grad():
        assert torch.allclose(bn(x)["c5"], frozen(x)["c5"], atol=1e-4)
        # under autocast the frozen layers keep the activations in low precision
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = frozen.extractor.conv_stem(x)
            assert frozen.extractor.bn1(low).dtype == torch.bfloat16
    gn = build_backbone("efficientnet_lite0", weights=None, norm="gn")
    norms = [m for m in gn.modules() if isinstance(m, GroupNormAct)]
    assert norms and all(not isinstance(m.act, nn.Identity) for m in norms[:1])


@pytest.mark.parametrize(
    ("extra", "p6p7_from", "names"),
    [
        ("none", "p5", ["p3", "p4", "p5"]),
        ("p6p7", "p5", ["p3", "p4", "p5", "p6", "p7"]),
        ("p6p7", "c5", ["p3", "p4", "p5", "p6", "p7"]),
        ("maxpool", "p5", ["p3", "p4", "p5", "p6"]),
    ],
)
def test_fpn_extra_levels(extra: str, p6p7_from: str, names: list[str]) -> None:
    body = build_backbone("resnet18", weights=None).eval()
    fpn = build_fpn(body, out_channels=24, extra_levels=extra, p6p7_from=p6p7_from)
    assert fpn.names == names and fpn.strides == [2 ** int(n[1:]) for n in names]
    with torch.no_grad():
        out = fpn(body(torch.rand(1, 3, 128, 128)))
    assert list(out) == names
    for m, stride in zip(out.values(), fpn.strides, strict=True):
        assert m.shape[1] == 24 and m.shape[-1] == -(-128 // stride)
    if extra == "p6p7":
        assert fpn.extra_blocks.p6.in_channels == (512 if p6p7_from == "c5" else 24)


def test_heads_are_sized_from_the_declared_strides() -> None:
    body = {"name": "resnet18", "weights": None, "out_levels": [2, 3, 4]}
    fcos = build_detector("fcos", 2, body, {"extra_levels": "none"})
    assert fcos.anchor_generator.sizes == ((4.0,), (8.0,), (16.0,))
    retina = build_detector(
        "retinanet", 2, body, {"extra_levels": "none"}, anchor_scale=4, aspect_ratios=[1.0]
    )
    assert [round(s[0]) for s in retina.anchor_generator.sizes] == [16, 32, 64]
    assert len(retina.anchor_generator.sizes[0]) == 3
    frcnn = build_detector("faster_rcnn", 2, body, {"extra_levels": "maxpool"})
    assert frcnn.rpn.anchor_generator.sizes == ((16.0,), (32.0,), (64.0,), (128.0,))
    assert frcnn.roi_heads.box_roi_pool.featmap_names == ["p2", "p3", "p4"]


def test_head_knobs_change_the_head() -> None:
    body = {"name": "resnet18", "weights": None}
    fcos = build_detector("fcos", 2, body, {"out_channels": 48}, num_convs=1, head_norm="none")
    tower = fcos.head.classification_head.conv
    assert sum(isinstance(m, nn.Conv2d) for m in tower) == 1
    assert not any(isinstance(m, nn.GroupNorm) for m in tower)
    fcos_gn = build_detector("fcos", 2, body, {"out_channels": 48}, num_convs=2)
    assert [m.num_groups for m in fcos_gn.head.regression_head.conv if isinstance(m, nn.GroupNorm)] == [
        24,
        24,
    ]
    retina = build_detector("retinanet", 2, body, num_convs=2, head_norm="gn", box_loss="giou")
    assert len(retina.head.classification_head.conv) == 2
    assert any(isinstance(m, nn.GroupNorm) for m in retina.head.regression_head.conv.modules())
    light = build_detector("light_head_rcnn", 2, body, variant="L", representation_size=256)
    pool = light.roi_heads.box_roi_pool
    assert pool.thin.col[0].out_channels == 256 and pool.thin.col[1].out_channels == 490
    assert pool.thin.col[0].kernel_size == (15, 1) and pool.thin.row[0].kernel_size == (1, 15)
    assert pool.feature_name == "c4" and light.roi_heads.box_head.fc.in_features == 490


def test_light_head_pools_ten_by_seven_by_seven_per_roi() -> None:
    model = build_detector("light_head_rcnn", 2, {"name": "resnet18", "weights": None}).eval()
    images, _ = model.transform([torch.rand(3, 128, 128)])
    with torch.no_grad():
        features = model.backbone(images.tensors)
        proposals = [torch.tensor([[0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 90.0, 120.0]])]
        pooled = model.roi_heads.box_roi_pool(features, proposals, images.image_sizes)
    assert tuple(pooled.shape) == (2, 10, 7, 7)
    assert "c4" in features and "c4" not in model.rpn.feature_names
    fpn_variant = build_detector(
        "light_head_rcnn", 2, {"name": "resnet18", "weights": None}, thin_map_from="fpn"
    )
    assert fpn_variant.roi_heads.box_roi_pool.feature_name == "p4"
    with pytest.raises(ValueError, match="thin_map_stride"):
        build_detector("light_head_rcnn", 2, {"name": "resnet18", "weights": None, "out_levels": [3, 5]})
