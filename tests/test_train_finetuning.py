"""Fine-tuning controls: weight EMA, the scheduled backbone unfreeze and layer-wise lr decay.

Real runs on the small FashionDet set: a probe reads the gradients and the optimiser's groups at
every step; stopped-and-resumed runs are compared with uninterrupted ones tensor by tensor.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    PRETRAIN_SMALL,
    QUIET,
    isolated_environ,
    load_checkpoint,
    read_metrics,
    tiny,
    train_in_process,
)
from test_train_resume import _assert_same

from detection.data import ClassificationDataModule
from detection.models import build_detector
from detection.training import ClassificationTask
from detection.training.callbacks.ema import WarmedUpEMA
from detection.training.optim import parameter_groups

LR = 2e-3  # model.optimizer.lr of the detection configs


def _unfreeze_run(data_root: Path, log_dir: Path, epochs: int) -> list[str]:
    return [
        *tiny(data_root, log_dir),
        *QUIET,
        "task_name=unfreeze",
        "seed=3",
        "model.backbone.norm=bn",  # trainable norms: the unfreeze adds a no-decay group too
        "model.backbone.freeze_at=0",  # the whole backbone waits for the unfreeze, the stem too
        f"trainer.max_epochs={epochs}",
        "test=false",
        "model.scheduler.name=constant",
        "model.scheduler.warmup_steps=0",
        "callbacks=[model_checkpoint,rng_state,backbone_unfreeze]",
        "callbacks.backbone_unfreeze.unfreeze_at_epoch=1",
        "callbacks.backbone_unfreeze.lr_mult=0.5",
        "callbacks.backbone_unfreeze.warmup_steps=2",
    ]


def test_backbone_gets_no_gradient_before_the_unfreeze_and_its_own_lr_after(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    probe = tmp_path / "probe.json"
    overrides = [
        *_unfreeze_run(fashiondet_small_root, tmp_path / "logs", epochs=2),
        "+callbacks.probe._target_=helpers.OptimizerProbe",
        f"+callbacks.probe.path={probe}",
    ]
    with isolated_environ(tmp_path):
        train_in_process(overrides)
    records = json.loads(probe.read_text())
    assert [(r["epoch"], r["step"]) for r in records] == [(0, 0), (0, 1), (1, 2), (1, 3)]
    for r in records[:2]:  # epoch 0: the head alone
        assert r["backbone_with_grad"] == 0 and r["backbone_in_optimizer"] == 0, r
        assert set(r["lr"]) == {"head", "head_no_decay"}
    for r in records[2:]:  # epoch 1: every backbone parameter learns, in the added groups
        assert r["backbone_with_grad"] == r["backbone_in_optimizer"] == r["backbone_params"] > 40, r
        assert set(r["lr"]) == {"head", "head_no_decay", "backbone_unfrozen", "backbone_no_decay_unfrozen"}
        assert r["lr"]["head"] == pytest.approx(LR)
    # lr_mult 0.5, ramped over 2 steps from the unfreeze (step 2): 1/2 then all of it
    assert records[2]["lr"]["backbone_unfrozen"] == pytest.approx(LR * 0.5 * 0.5)
    assert records[3]["lr"]["backbone_unfrozen"] == pytest.approx(LR * 0.5)
    assert records[3]["lr"]["backbone_no_decay_unfrozen"] == pytest.approx(LR * 0.5)


def _stopped_and_resumed(overrides: list[str], tmp_path: Path, stop_epoch: int) -> tuple[Path, Path]:
    """(uninterrupted run, run resumed from one stopped after epoch `stop_epoch`), in this process
    through scripts/train.py's job wrapper (a subprocess each would add only their start-up)."""
    stopped = [
        *overrides,
        "+callbacks.stop._target_=helpers.StopAfterEpoch",
        f"+callbacks.stop.epoch={stop_epoch}",
    ]
    resumed = [*overrides, f"ckpt_path={tmp_path / 'stopped' / 'checkpoints' / 'last.ckpt'}"]
    with isolated_environ(tmp_path):
        for name, run in (("whole", overrides), ("stopped", stopped), ("resumed", resumed)):
            train_in_process([*run, f"hydra.run.dir={tmp_path / name}"])
    return tmp_path / "whole", tmp_path / "resumed"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_unfreeze_and_ema_run_stopped_mid_schedule_and_resumed_equals_uninterrupted_run(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    """Both fine-tuning callbacks with state of their own in one run (one run pays for both): the
    unfreeze's added groups and warm-up, and the EMA's live and averaged weights."""
    overrides = [
        *_unfreeze_run(fashiondet_small_root, tmp_path / "logs", epochs=3),
        "callbacks=[model_checkpoint,rng_state,backbone_unfreeze,ema]",
        "callbacks.ema.decay=0.5",
        "callbacks.ema.warmup_steps=0",
    ]
    whole, resumed = _stopped_and_resumed(overrides, tmp_path, stop_epoch=1)
    expected = load_checkpoint(whole / "checkpoints" / "last.ckpt")
    got = load_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert got["global_step"] == expected["global_step"] == 6
    assert int(expected["averaging_state"]["n_averaged"]) == 6
    # four groups: the head's two and the two the unfreeze added
    assert len(expected["optimizer_states"][0]["param_groups"]) == 4
    for key in ("state_dict", "current_model_state", "averaging_state", "optimizer_states", "lr_schedulers"):
        _assert_same(expected[key], got[key], key)
    _assert_same(expected["callbacks"]["BackboneUnfreeze"], got["callbacks"]["BackboneUnfreeze"], "unfreeze")
    # the average is not the live weights: decay 0.5 over the four steps since the unfreeze moves
    # every backbone weight
    live, average = expected["current_model_state"], expected["state_dict"]
    trained = [
        k
        for k, v in live.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and "extractor" in k and "conv" in k
    ]
    assert trained and all(not torch.equal(live[k], average[k]) for k in trained[:20])


def test_ema_average_is_what_validation_test_and_the_checkpoint_use(tmp_path: Path) -> None:
    """Fashion-MNIST pretraining with EMA: test/loss in metrics.json is the loss of the averaged
    weights (the checkpoint's state_dict), not of the live ones (its current_model_state)."""
    overrides = [
        "experiment=pretrain_fashion_mnist",
        *PRETRAIN_SMALL,
        *QUIET,
        f"paths.log_dir={tmp_path / 'logs'}",
        "trainer.max_epochs=2",
        "callbacks=[model_checkpoint,rng_state,ema]",
        "callbacks.ema.decay=0.6",
        "callbacks.ema.warmup_steps=0",
        "trainer.precision=32-true",  # the loss below is recomputed in float32
    ]
    with isolated_environ(tmp_path):
        run_dir, _ = train_in_process(overrides)
    metrics = read_metrics(run_dir)
    checkpoint = load_checkpoint(Path(metrics["best_checkpoint"]))
    task = ClassificationTask.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu")
    datamodule_overrides = dict(o.split("=", 1) for o in PRETRAIN_SMALL if o.startswith("data."))
    data = ClassificationDataModule(
        data_dir=None,
        image_size=int(datamodule_overrides["data.image_size"]),
        test_size=int(datamodule_overrides["data.test_size"]),
        val_size=int(datamodule_overrides["data.val_size"]),
        train_size=int(datamodule_overrides["data.train_size"]),
    )
    data.setup()
    images, labels = next(iter(torch.utils.data.DataLoader(data.datasets["test"], batch_size=1000)))

    def test_loss(state: dict[str, torch.Tensor]) -> float:
        task.load_state_dict(state)
        task.eval()
        with torch.no_grad():
            return float(F.cross_entropy(task(images), labels))

    averaged, live = test_loss(checkpoint["state_dict"]), test_loss(checkpoint["current_model_state"])
    assert abs(averaged - live) > 1e-4
    assert metrics["test/loss"] == pytest.approx(averaged, abs=1e-4)


def test_warmed_up_ema_decay_rises_from_zero_to_the_decay() -> None:
    ema = WarmedUpEMA(decay=0.99, warmup_steps=100)
    assert ema.factor(0) == 0.0  # the first update copies the live weights
    assert ema.factor(100) == pytest.approx(0.99 * (1 - math.exp(-1)))
    assert ema.factor(10_000) == pytest.approx(0.99)
    averaged, counts = [torch.zeros(3), torch.zeros(2, 2)], [torch.zeros(2, dtype=torch.long)]
    ema(averaged, [torch.ones(3), torch.ones(2, 2)], torch.tensor(100))  # in place, all at once
    ema(counts, [torch.full((2,), 7)], torch.tensor(100))  # integer buffers take the live value
    for tensor in averaged:
        assert torch.allclose(tensor, torch.full_like(tensor, 1 - 0.99 * (1 - math.exp(-1))))
    assert counts[0].tolist() == [7, 7]
    assert float(ema.factor(torch.tensor(100))) == pytest.approx(0.99 * (1 - math.exp(-1)))
    with pytest.raises(ValueError, match="decay"):
        WarmedUpEMA(decay=1.0, warmup_steps=0)


def test_layer_decay_gives_each_backbone_stage_its_own_lr() -> None:
    model = build_detector(
        "fcos",
        3,
        {"name": "efficientnet_lite0", "weights": None, "norm": "bn"},
        neck={"out_channels": 16},
        num_convs=1,
    )
    groups = parameter_groups(model, lr=1.0, weight_decay=0.1, backbone_lr_mult=0.5, layer_decay=0.5)
    by_name = {g["name"]: g for g in groups}
    body = model.backbone.body
    stage_of = {id(p): stage for stage, _, p in body.stage_parameters()}
    for stage in range(5):
        for suffix in ("", "_no_decay"):
            group = by_name[f"backbone.s{stage}{suffix}"]
            assert group["lr"] == pytest.approx(0.5 * 0.5 ** (4 - stage))
            assert {stage_of[id(p)] if stage_of[id(p)] is not None else 4 for p in group["params"]} == {stage}
    assert by_name["head"]["lr"] == 1.0
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == sum(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="layer_decay"):
        parameter_groups(model, lr=1.0, weight_decay=0.1, layer_decay=1.5)


@pytest.mark.slow
def test_layer_decay_and_backbone_lr_mult_reach_the_optimizer_of_a_run(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    """The README's `model.task.layer_decay=0.7 model.task.backbone_lr_mult=0.5`, through the config
    into a run's optimiser: stage s of 4 at lr x 0.5 x 0.7^(4 - s); the frozen stem in no group."""
    probe = tmp_path / "probe.json"
    overrides = [
        *tiny(fashiondet_small_root, tmp_path / "logs"),
        *QUIET,
        "model.task.layer_decay=0.7",
        "model.task.backbone_lr_mult=0.5",
        "model.scheduler.name=constant",
        "model.scheduler.warmup_steps=0",
        "trainer.max_epochs=1",
        "test=false",
        "+callbacks.probe._target_=helpers.OptimizerProbe",
        f"+callbacks.probe.path={probe}",
    ]
    with isolated_environ(tmp_path):
        train_in_process(overrides)
    lrs = json.loads(probe.read_text())[-1]["lr"]
    stage_of = {name: re.fullmatch(r"backbone\.s(\d)(_no_decay)?", name) for name in lrs}
    stages = {int(found[1]) for found in stage_of.values() if found}
    assert stages == {1, 2, 3, 4}, lrs  # freeze_at=1: the stem (s0) learns nothing
    for name, found in stage_of.items():
        expected = LR * 0.5 * 0.7 ** (4 - int(found[1])) if found else LR
        assert lrs[name] == pytest.approx(expected), name


def test_channels_last_backbone_computes_the_same_features() -> None:
    from detection.models.backbones import build_backbone

    torch.manual_seed(0)
    plain = build_backbone("efficientnet_lite0", weights=None, norm="bn")
    nhwc = build_backbone("efficientnet_lite0", weights=None, norm="bn", channels_last=True)
    nhwc.load_state_dict(plain.state_dict())
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain.eval(), nhwc.eval()
    x = torch.rand(2, 3, 64, 64)
    for (name, a), (_, b) in zip(plain(x).items(), nhwc(x).items(), strict=True):
        assert torch.allclose(a, b, atol=1e-4), name
