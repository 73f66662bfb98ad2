"""Every registered head keeps the head contract (`detection.models.heads.Detector`).

The tests are parametrised over the registry (`head_names()`), so a head added later is checked
here without anyone editing this file. Per head:
- its configs compose (``model=<head>``, ``experiment=fashiondet_<head>``) and its recipe trains a
  step through the pipeline in mixed precision, with the anchor-coverage report attached (a
  figure where the head has fixed anchors, a line saying it has none otherwise);
- it learns: with its recipe it overfits four FashionDet canvases to mAP 0.5 within 60 steps (a
  head whose classifier were cut off from its loss, or whose assignment matched nothing, would
  not); its detections are in the stated format; a checkpoint of it rebuilds the same detector;
  it exports to ONNX and TorchScript with output parity;
- it replaces its classifier for another number of classes and trains on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra.utils
import pytest
import torch
from helpers import CONF_DIR, isolated_environ, read_metrics, tiny, train_in_process
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torchmetrics.detection import MeanAveragePrecision
from torchvision import tv_tensors

from detection.models import architecture_spec, build_detector, build_from_spec, head_names
from detection.models.heads.classes import replace_classifier
from detection.runtime import launch  # noqa: F401  (registers the config resolvers)
from detection.training.anchors import resolve_anchor_sizes

HEADS = head_names()
IMAGES = 4
STEPS, EVERY, REQUIRED_MAP = 60, 15, 0.5  # learning: mAP checked every EVERY steps up to STEPS
ATOL = 1e-3  # export parity: pixels and scores


def _compose(head: str, *overrides: str) -> object:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"experiment=fashiondet_{head}", *overrides])


def recipe(head: str, data_root: Path) -> tuple[dict, dict, list[torch.Tensor], list[dict]]:
    """The detector spec of experiment=fashiondet_<head> (anchors resolved on `data_root`), its
    optimiser, and the first training canvases with their targets (no augmentation)."""
    cfg = _compose(
        head,
        f"data.root={data_root}",
        "data.generate.preset=small",
        "data.print_summary=false",
        f"paths.root_dir={data_root.parent}",
        "paths.output_dir=unused",
    )
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    spec = OmegaConf.to_container(cfg.model.detector, resolve=True)
    sizes = resolve_anchor_sizes(spec, datamodule)
    if sizes is not None:
        spec["anchor_sizes"] = sizes
    train = datamodule.datasets["train"]
    images, targets = [], []
    for index in range(IMAGES):
        image, target = datamodule.eval_transforms(
            tv_tensors.Image(train.load_image(index)), train.target(index)
        )
        images.append(image.as_subclass(torch.Tensor))
        targets.append({"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]})
    return spec, OmegaConf.to_container(cfg.model.optimizer), images, targets


def _map(model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict]) -> float:
    model.eval()
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    with torch.no_grad():
        metric.update(model(images), targets)
    model.train()
    return metric.compute()["map"].item()


def _assert_detection_format(detections: list[dict], images: list[torch.Tensor], num_classes: int) -> None:
    assert len(detections) == len(images)
    for det, image in zip(detections, images, strict=True):
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        assert boxes.dtype == scores.dtype == torch.float32, (boxes.dtype, scores.dtype)
        assert boxes.shape[1:] == (4,) and len(boxes) == len(scores) == len(labels)
        assert labels.dtype == torch.int64
        if len(labels):
            assert int(labels.min()) >= 0 and int(labels.max()) < num_classes
            assert bool((boxes[:, 2:] >= boxes[:, :2]).all()), "boxes are xyxy"
            assert float(boxes[:, 0::2].max()) <= image.shape[2] + 1e-3  # input-image pixels
            assert float(boxes[:, 1::2].max()) <= image.shape[1] + 1e-3
            assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0


@pytest.mark.parametrize("head", HEADS)
def test_configs_exist_and_name_the_head(head: str) -> None:
    assert (CONF_DIR / "model" / f"{head}.yaml").is_file(), f"conf/model/{head}.yaml is missing"
    assert (CONF_DIR / "experiment" / f"fashiondet_{head}.yaml").is_file()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        model = compose("train", overrides=[f"model={head}"]).model
    assert model.detector.head == head
    assert _compose(head).model.detector.head == head


@pytest.mark.slow  # the quick tier's per-head step is test_models_detectors'
@pytest.mark.parametrize("head", HEADS)
def test_recipe_trains_a_step_in_mixed_precision_with_the_coverage_report(
    head: str, fashiondet_small_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # in mixed precision, as on a GPU, with every default callback (dashboards and prediction
    # images turn detections into numpy and pictures) and the coverage report of every run
    caplog.set_level(logging.INFO, logger="detection.training.anchors")
    with isolated_environ(tmp_path):
        run_dir, value = train_in_process(
            [
                f"experiment=fashiondet_{head}",
                *tiny(fashiondet_small_root, tmp_path / "logs"),
                "trainer.fast_dev_run=true",
                "trainer.precision=bf16-mixed",
                "logger=csv",
            ]
        )
    assert run_dir.parent.parent.name == f"fashiondet_{head}"  # task_name of the experiment
    metrics = read_metrics(run_dir)
    assert metrics["global_step"] == 1
    for name in ("train/loss", "val/loss", "val/mAP", "test/mAP", "test/mAP_50", "test/AP/Sandal"):
        assert math.isfinite(metrics[name]), name
    assert value == metrics["val/mAP"]  # what a sweeper gets back
    assert sorted((run_dir / "plots").glob("*_dashboard.json"))  # drawn under autocast
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("anchor coverage")]
    assert len(lines) == 1, lines
    has_anchors = build_detector(head, 2, {"name": "resnet18", "weights": None}).anchor_coverage(
        [torch.tensor([[8.0, 8.0, 40.0, 40.0]])], [(128, 128)]
    )
    if has_anchors is None:
        assert "without fixed anchors" in lines[0]
    else:
        assert "% of " in lines[0] and "training boxes" in lines[0]


@pytest.mark.slow  # 15-25 s a head: `make test PYTEST_ARGS="-k <head>"` runs it for one head
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.timeout(400)
def test_learns_round_trips_a_checkpoint_and_exports_with_parity(
    head: str, fashiondet_small_root: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    spec, options, images, targets = recipe(head, fashiondet_small_root)
    model = build_from_spec(spec)
    optimizer = getattr(torch.optim, options.pop("name"))(
        [p for p in model.parameters() if p.requires_grad], **options
    )
    first = achieved = None
    model.train()
    for step in range(1, STEPS + 1):
        losses = model(images, targets)
        loss = sum(losses.values())
        assert math.isfinite(loss.item()), f"{head}: loss {losses} at step {step}"
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % EVERY == 0:
            achieved = _map(model, images, targets)
            if achieved >= REQUIRED_MAP:
                break
    print(f"{head}: loss {first:.3f} -> {loss.item():.3f}, mAP {achieved:.3f} after {step} steps")  # -rP
    assert achieved >= REQUIRED_MAP, f"{head}: mAP {achieved:.3f} on its {IMAGES} training images"

    model.eval()
    with torch.no_grad():
        detections = model(images)
    _assert_detection_format(detections, images, spec["num_classes"])
    assert sum(len(d["boxes"]) for d in detections) > 0

    # a checkpoint (the architecture spec + the weights) rebuilds the same detector
    torch.save({"spec": spec, "state_dict": model.state_dict()}, tmp_path / "detector.pt")
    saved = torch.load(tmp_path / "detector.pt", map_location="cpu", weights_only=True)
    rebuilt = build_from_spec(architecture_spec(saved["spec"]))
    rebuilt.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        again = rebuilt.eval()(images)
    for a, b in zip(detections, again, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels")), head

    # ONNX and TorchScript give PyTorch's detections (the export hook prepares the copy)
    pytest.importorskip("onnxruntime")
    from detection.research.export import EXPORTERS, exportable_copy
    from detection.research.export_check import compare

    exportable = exportable_copy(model)
    expected = [tuple(d[k].numpy() for k in ("boxes", "scores", "labels")) for d in detections]
    for kind, exporter in EXPORTERS.items():
        with torch.no_grad():
            _, run = exporter(exportable, images[0], tmp_path / head)
            results = [compare(ref, run(image), ATOL) for ref, image in zip(expected, images, strict=True)]
        assert all(r["ok"] for r in results), (kind, results)
        assert sum(r["matched"] for r in results) == sum(len(d["boxes"]) for d in detections), kind


@pytest.mark.parametrize("head", HEADS)
def test_replaces_its_classifier_and_trains_on(head: str) -> None:
    torch.manual_seed(0)
    backbone = {"name": "efficientnet_lite0", "weights": None}
    detector = build_detector(head, 10, backbone, {"out_channels": 16, "extra_levels": "none"})

    def tensors() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in detector.state_dict().items() if isinstance(v, torch.Tensor)}

    before = tensors()
    replace_classifier(detector, 3)  # the head's hook, through the one entry point
    assert detector.num_classes == 3
    after = tensors()
    changed = {k for k in before if k not in after or before[k].shape != after[k].shape}
    changed |= {k for k in after if k not in before}
    kept = [k for k in before if k in after and k not in changed]
    assert changed, f"{head}: no layer depends on the number of classes"
    assert all(torch.equal(before[k], after[k]) for k in kept), f"{head}: other weights changed"
    detector.train()
    target = {"boxes": torch.tensor([[4.0, 4.0, 60.0, 60.0]]), "labels": torch.tensor([2])}
    losses = detector([torch.rand(3, 128, 128)], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    detector.eval()
    with torch.no_grad():
        out = detector([torch.rand(3, 128, 128)])
    _assert_detection_format(out, [torch.rand(3, 128, 128)], 3)
