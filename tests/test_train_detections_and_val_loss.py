"""What a run keeps and logs for later comparisons: every test run writes its detections and the
targets they were scored against (COCO files that re-score to the run's test metrics, in training and
in `scripts/eval.py`); validation logs the training losses on the validation images (`val/loss`) for
every head without changing weights, BatchNorm statistics or the random stream; and
`callbacks=[default,early_stopping]` ends a run whose val/mAP stopped improving."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import QUIET, hydra_job, isolated_environ, read_metrics, small_data, tiny, train_in_process

from detection.models import build_detector, head_names
from detection.models.norms import is_norm
from detection.training.callbacks.detections_json import DETECTIONS_FILE, GROUND_TRUTH_FILE
from detection.training.detection_task import training_losses

# COCOeval's summary, in its order, under our metric names
COCO_STATS = ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large", "mAR_1", "mAR_10", "mAR_100")


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path) -> Iterator[None]:
    with isolated_environ(tmp_path):
        yield


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The machine's cores are shared; one thread keeps the small model-level forwards from fighting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- detections of a test run
def _rescore(run_dir: Path, torchmetrics_thresholds: bool = False) -> dict[str, float]:
    """The run's two COCO files scored by faster_coco_eval alone (not through torchmetrics).

    `torchmetrics_thresholds`: the IoU and recall thresholds as torchmetrics passes them (float32
    values: 0.550000011920929, ...) instead of COCO's; a box or a recall level right at a threshold
    can move a figure by ~1e-4 between the two.
    """
    import numpy as np
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(run_dir / GROUND_TRUTH_FILE))
        detections = ground_truth.loadRes(str(run_dir / DETECTIONS_FILE))
        evaluation = COCOeval_faster(ground_truth, detections, iouType="bbox")
        if torchmetrics_thresholds:
            params = evaluation.params
            params.iouThrs = np.array(torch.linspace(0.5, 0.95, 10).tolist(), dtype=np.float64)
            params.recThrs = np.array(torch.linspace(0.0, 1.0, 101).tolist(), dtype=np.float64)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {f"test/{name}": float(value) for name, value in zip(COCO_STATS, evaluation.stats, strict=False)}


def test_test_run_keeps_detections_that_rescore_to_its_metrics(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "logs"
    run_dir, _ = train_in_process(
        [
            *tiny(fashiondet_small_root, log_dir),
            "trainer.max_epochs=1",
            "trainer.limit_test_batches=null",  # the whole test split: 24 canvases in 3 batches
            "data.eval_batch_size=8",
            # the main job's detector, from its ImageNet weights, after 32 canvases: its metrics are not 0
            "model.backbone.weights=imagenet",
            "trainer.limit_train_batches=4",
            "data.batch_size=8",
            "model.scheduler.warmup_steps=0",
            *QUIET,
        ]
    )
    metrics = read_metrics(run_dir)
    # validation logged the training losses on its images, in metrics.json as train/loss_<part> are
    val_parts = sorted(k.removeprefix("val/loss_") for k in metrics if k.startswith("val/loss_"))
    assert val_parts == sorted(k.removeprefix("train/loss_") for k in metrics if k.startswith("train/loss_"))
    assert math.isfinite(metrics["val/loss"]) and metrics["val/loss"] > 0
    ground_truth = json.loads((run_dir / GROUND_TRUTH_FILE).read_text())
    detections = json.loads((run_dir / DETECTIONS_FILE).read_text())

    # the targets as the test loop scored them: every test canvas once, every box, in canvas pixels
    test_split = json.loads((fashiondet_small_root / "annotations" / "instances_test.json").read_text())
    by_id = {image["id"]: image for image in test_split["images"]}
    assert sorted(image["id"] for image in ground_truth["images"]) == sorted(by_id)
    for image in ground_truth["images"]:
        original = by_id[image["id"]]
        assert (image["file_name"], image["width"], image["height"]) == (
            original["file_name"],
            original["width"],
            original["height"],
        )
    assert len(ground_truth["annotations"]) == len(test_split["annotations"])
    names = [c["name"] for c in sorted(test_split["categories"], key=lambda c: c["id"])]
    assert ground_truth["categories"] == [{"id": i, "name": name} for i, name in enumerate(names)]
    for annotation in ground_truth["annotations"]:
        x, y, w, h = annotation["bbox"]
        assert w > 0 and h > 0 and annotation["area"] == pytest.approx(w * h)
        assert 0 <= annotation["category_id"] < len(names) and annotation["iscrowd"] == 0

    # every detection the detector returned, no threshold of ours: its 100 best boxes on each canvas
    assert len(detections) == 100 * len(by_id)
    assert {d["image_id"] for d in detections} == set(by_id)
    assert all(0 <= d["category_id"] < len(names) and 0.0 <= d["score"] <= 1.0 for d in detections)

    # the files alone give the run's test metrics back: all of them with torchmetrics' thresholds,
    # test/mAP with COCO's own
    assert metrics["test/mAR_100"] > 0.01 and metrics["test/mAP_50"] > 0  # not a comparison of zeros
    for name, value in _rescore(run_dir, torchmetrics_thresholds=True).items():
        assert value == pytest.approx(metrics[name], rel=1e-5, abs=1e-7), name
    assert _rescore(run_dir)["test/mAP"] == pytest.approx(metrics["test/mAP"], abs=1e-4)

    # scripts/eval.py on the same checkpoint writes the same files beside its metrics.json
    from detection import pipelines
    from detection.runtime.launch import job

    overrides = [
        f"ckpt_path={metrics['best_checkpoint']}",
        *small_data(fashiondet_small_root, log_dir),
        "data.eval_batch_size=8",
        "extras.print_config=false",
    ]
    with hydra_job(overrides, config_name="eval") as cfg:
        job(pipelines.evaluate)(cfg)
        eval_dir = Path(cfg.paths.output_dir)
    assert json.loads((eval_dir / DETECTIONS_FILE).read_text()) == detections
    assert json.loads((eval_dir / GROUND_TRUTH_FILE).read_text()) == ground_truth
    assert read_metrics(eval_dir)["test/mAP"] == pytest.approx(metrics["test/mAP"], abs=1e-6)


# ---------------------------------------------------------------------------- validation loss
SIZE = 64


def _detector(head: str) -> torch.nn.Module:
    # BatchNorm trained and the stem frozen, as the recipes: in training mode the stem's norms stay in
    # eval, so the modes to restore are mixed
    torch.manual_seed(0)
    backbone = {"name": "efficientnet_lite0", "weights": None, "norm": "bn", "freeze_at": 1}
    return build_detector(head, 3, backbone, {"out_channels": 16}, min_size=SIZE, max_size=SIZE)


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, SIZE, SIZE, generator=g), torch.rand(3, SIZE - 16, SIZE, generator=g)]
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 46.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[10.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # every parameter and buffer (running statistics, batch counts); not the extra state (a dict)
    return {name: value.clone() for name, value in model.state_dict().items() if torch.is_tensor(value)}


def _modes(model: torch.nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


@pytest.mark.parametrize("head", head_names())
def test_val_loss_changes_no_statistic_mode_or_random_stream(head: str) -> None:
    model = _detector(head)
    images, targets = _batch()
    for mode in (False, True):  # as validation calls it (eval), and from training mode
        model.train(mode)
        modes, state = _modes(model), _state(model)
        torch.manual_seed(1)
        rng = torch.get_rng_state()
        losses = training_losses(model, images, targets)
        assert torch.equal(torch.get_rng_state(), rng), "the random stream of training moved"
        assert _modes(model) == modes
        after = _state(model)
        changed = [name for name in state if not torch.equal(state[name], after[name])]
        assert changed == [], f"changed by the validation loss: {changed[:5]}"
        assert losses and all(v.dtype == torch.float32 and math.isfinite(v.item()) for v in losses.values())

        # the same numbers as a training-mode forward with the features and norms in eval mode, from
        # the same random state (the R-CNN samplers draw): the figure is the training loss
        model.train()
        model.backbone.eval()
        for module in model.modules():
            if is_norm(module):
                module.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            expected = model(images, targets)
        assert {k: v.item() for k, v in losses.items()} == {k: v.item() for k, v in expected.items()}

    # what the function prevents does happen to a plain training-mode forward: the test can fail
    model.train()
    rng = torch.get_rng_state()
    with torch.no_grad():
        model(images, targets)
    after = _state(model)
    assert any("running_mean" in name and not torch.equal(state[name], after[name]) for name in state)
    assert not torch.equal(torch.get_rng_state(), rng)


def test_val_loss_falls_as_a_detector_overfits_its_validation_images(fashiondet_small_root: Path) -> None:
    """Four validation canvases trained on (train = val data): the validation loss, computed as
    `DetectionTask` does (features and BatchNorm in eval mode), falls as the detector learns them."""
    from detection.data import DetectionDataModule

    data = DetectionDataModule(root=fashiondet_small_root, print_summary=False)
    data.setup("validate")
    images, targets = [], []
    for index in range(4):
        image, target = data.datasets["val"][index]
        images.append(image.as_subclass(torch.Tensor))
        targets.append({"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]})
    torch.manual_seed(0)
    backbone = {"name": "efficientnet_lite0", "weights": None, "norm": "bn", "freeze_at": 1}
    model = build_detector("fcos", data.num_classes, backbone, {"out_channels": 16}, num_convs=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.eval()
    first = sum(training_losses(model, images, targets).values()).item()
    model.train()
    for _ in range(10):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    last = sum(training_losses(model, images, targets).values()).item()
    assert last < 0.8 * first, f"val/loss {first:.3f} -> {last:.3f}"  # measured: 2.82 -> 1.94


@pytest.mark.parametrize("head", head_names())
def test_every_head_logs_val_loss_under_bf16_autocast(head: str, fashiondet_small_root: Path) -> None:
    """Lightning's validation of a `DetectionTask` under bfloat16 autocast (the CPU's mixed precision):
    val/loss and one val/loss_<part> per part of the head's training loss, finite, adding up. (The
    pipeline run of the detections test shows them in metrics.json.)"""
    import lightning as L

    from detection.data import DetectionDataModule
    from detection.training import DetectionTask

    torch.manual_seed(0)
    data = DetectionDataModule(root=fashiondet_small_root, batch_size=4, print_summary=False)
    spec = {
        "head": head,
        "num_classes": 10,
        "backbone": {"name": "efficientnet_lite0", "weights": None, "norm": "bn", "freeze_at": 1},
        "neck": {"out_channels": 16},
    }
    task = DetectionTask(detector=spec, optimizer={"name": "SGD", "lr": 0.0})
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(task, datamodule=data, verbose=False)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/loss")}
    parts = {k.removeprefix("val/loss_"): v for k, v in logged.items() if k != "val/loss"}
    task.detector.train()
    images, targets = next(iter(data.val_dataloader()))
    names = task.detector(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    assert sorted(parts) == sorted(name.removeprefix("loss_") for name in names)  # as train/loss_<part>
    assert all(math.isfinite(v) for v in logged.values()) and logged["val/loss"] > 0, logged
    assert sum(parts.values()) == pytest.approx(logged["val/loss"], rel=1e-5)


# ---------------------------------------------------------------------------- early stopping
def test_early_stopping_ends_a_run_whose_map_stopped_improving(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    # lr 0 and frozen BatchNorm: the weights and statistics never change, so neither does val/mAP.
    # Without the validation loss (model.task.val_loss=false): early stopping needs only val/mAP.
    patience = 2
    run_dir, _ = train_in_process(
        [
            *tiny(fashiondet_small_root, tmp_path / "logs"),
            "callbacks=[default,early_stopping]",
            f"callbacks.early_stopping.patience={patience}",
            "model.optimizer.lr=0",
            "model.backbone.norm=frozen_bn",
            "trainer.max_epochs=6",
            "++model.task.val_loss=false",
            "test=false",
            *QUIET,
        ]
    )
    metrics = read_metrics(run_dir)
    assert not [name for name in metrics if name.startswith("val/loss")]  # the switch is off
    # the first validation sets the best, then `patience` validations without a gain
    assert metrics["epochs"] == patience + 1
    assert metrics["global_step"] == 2 * (patience + 1)  # two batches an epoch
