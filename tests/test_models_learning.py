"""Every head learns: with its FashionDet recipe (experiment=fashiondet_<head>: model, anchors,
optimiser) it overfits a handful of training canvases, in plain PyTorch.

A head whose classification output were cut off from the loss, or whose anchors matched nothing,
keeps its starting loss and scores no mAP on the very images it trained on; these tests then fail.
The learning rate is held constant (the recipes' warmup spans more steps than a test runs).
"""

from __future__ import annotations

import math
from pathlib import Path

import hydra.utils
import pytest
import torch
from helpers import CONF_DIR
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torchmetrics.detection import MeanAveragePrecision
from torchvision import tv_tensors

from detection.models import HEADS, build_from_spec
from detection.runtime import launch  # noqa: F401  (registers the config resolvers)
from detection.training.anchors import resolve_anchor_sizes

IMAGES = 4
# head -> (steps, mAP@[.5:.95] the head must reach on its training images)
BUDGET = {"fcos": (30, 0.5), "retinanet": (60, 0.5), "faster_rcnn": (45, 0.5), "light_head_rcnn": (45, 0.5)}
# the part of each head's loss that classifies: it must fall to a fraction of its first value
CLASSIFICATION_LOSS = {
    "fcos": "classification",
    "retinanet": "classification",
    "faster_rcnn": "loss_classifier",
    "light_head_rcnn": "loss_classifier",
}


def recipe(head: str, data_root: Path) -> tuple[dict, list[torch.Tensor], list[dict]]:
    """The detector spec of experiment=fashiondet_<head> (anchors resolved on `data_root`) and the
    first training canvases with their targets."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment=fashiondet_{head}",
                f"data.root={data_root}",
                "data.generate.preset=small",
                "data.print_summary=false",
                f"paths.root_dir={data_root.parent}",
                "paths.output_dir=unused",
            ],
        )
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    spec = OmegaConf.to_container(cfg.model.detector, resolve=True)
    sizes = resolve_anchor_sizes(spec, datamodule)
    if sizes is not None:
        spec["anchor_sizes"] = sizes
    train = datamodule.datasets["train"]
    images, targets = [], []
    for index in range(IMAGES):  # without the training augmentation: the same images every step
        image, target = datamodule.eval_transforms(
            tv_tensors.Image(train.load_image(index)), train.target(index)
        )
        images.append(image.as_subclass(torch.Tensor))
        targets.append({"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]})
    return {"spec": spec, "optimizer": OmegaConf.to_container(cfg.model.optimizer)}, images, targets


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.timeout(300)
def test_head_overfits_a_few_training_images(head: str, fashiondet_small_root: Path) -> None:
    torch.manual_seed(0)
    config, images, targets = recipe(head, fashiondet_small_root)
    model = build_from_spec(config["spec"])
    options = dict(config["optimizer"])
    optimizer = getattr(torch.optim, options.pop("name"))(
        [p for p in model.parameters() if p.requires_grad], **options
    )
    steps, required_map = BUDGET[head]
    first = last = None
    model.train()
    for _ in range(steps):
        losses = model(images, targets)
        loss = sum(losses.values())
        assert math.isfinite(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        classification = losses[CLASSIFICATION_LOSS[head]].item()
        first = classification if first is None else first
        last = classification
    assert last < 0.5 * first, f"{head}: classification loss {first:.3f} -> {last:.3f}"

    model.eval()
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    with torch.no_grad():
        metric.update(model(images), targets)
    achieved = metric.compute()["map"].item()
    print(f"{head}: classification loss {first:.3f} -> {last:.3f}, mAP {achieved:.3f}")  # with -rP
    assert achieved >= required_map, (
        f"{head}: mAP {achieved:.3f} on its {IMAGES} training images after {steps} steps"
    )
