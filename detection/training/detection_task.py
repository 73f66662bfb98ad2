"""DetectionTask: a LightningModule around any detector of `detection.models`."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from detection.data.records import class_difference
from detection.models import architecture_spec, build_from_spec
from detection.models.backbones import Backbone
from detection.models.heads.classes import replace_classifier
from detection.models.norms import is_norm
from detection.training.metrics import gather_map_states, map_metrics
from detection.training.optim import build_optimizer_and_scheduler, optimizer_spec, parameter_groups

log = logging.getLogger(__name__)
# faster_coco_eval prints its whole summary at INFO on every compute(); our metrics table says it once.
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

Batch = tuple[list[Tensor], list[dict[str, Any]]]
# What earlier versions saved in the state dict and this one keeps elsewhere (the backbone).
_LEGACY_STATE_KEYS = ("detector.transform._extra_state",)


class DetectionTask(L.LightningModule):
    """Train, validate, test and predict with a detector built from its spec.

    `detector` is a detector spec (a plain dict of `build_detector` arguments with a ``version``;
    see `detection.models.detector`), built here with `build_from_spec`. The checkpoint records
    the spec without the backbone's starting weights (the state dict holds every weight), so
    `DetectionTask.load_from_checkpoint(path)` rebuilds the detector alone, offline. `optimizer`
    is ``{"name": <torch.optim class>, "lr": ..., ...}``. A built module may be passed as
    `detector_module` (then `detector` is only recorded). `reset_classes`: data with another
    number of classes than the detector's gets a new classification layer instead of an error.

    Speed: `channels_last` puts every convolution of the detector (backbone, FPN, head) in NHWC
    layout (same results; faster with AMP on GPUs and with oneDNN on CPUs); `compile` compiles the
    detector's backbone and FPN with `torch.compile` in `configure_model` (`nn.Module.compile`, in
    place: the state dict keeps its keys, so checkpoints load without compiling).

    A non-finite loss: with ``nonfinite_loss="skip"`` every step is checked before the optimiser
    steps (one host sync per step, one verdict gathered from all DDP ranks so that they skip
    together). With ``"raise"`` the check stays on the device: the first bad step and its loss
    parts are recorded there, and read (one verdict from all ranks) when the losses are logged
    (every ``trainer.log_every_n_steps`` steps), at each epoch end and before every checkpoint is
    written, so that no checkpoint holds weights trained on a non-finite loss.

    `val_loss`: validation also logs ``val/loss`` and ``val/loss_<part>``, the training losses on the
    validation images (`training_losses`: one more forward per batch, in training mode, changing no
    weight, statistic or random stream), averaged over the images of all ranks.
    """

    def __init__(
        self,
        detector: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        backbone_lr_mult: float = 1.0,
        norm_bias_weight_decay: float = 0.0,
        layer_decay: float = 1.0,
        class_names: Sequence[str] | None = None,
        map_backend: str = "faster_coco_eval",
        nonfinite_loss: str = "raise",
        reset_classes: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        val_loss: bool = True,
        detector_module: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        built = detector_module if detector_module is not None else build_from_spec(detector)
        detector = architecture_spec(detector)
        optimizer = optimizer_spec(optimizer)
        scheduler = dict(scheduler) if scheduler else None
        class_names = list(class_names) if class_names is not None else None
        # logger=False: the pipeline logs the whole run config (nested); these would duplicate parts of it
        self.save_hyperparameters(ignore=["detector_module"], logger=False)
        if channels_last:  # kept by .to(device) and load_state_dict, which copy into these tensors
            built = built.to(memory_format=torch.channels_last)
        self.detector = built
        # the first non-finite step on the device: ([global step, epoch] or [-1, -1], loss parts, names)
        self._nonfinite: tuple[Tensor, Tensor, list[str]] | None = None
        self.val_map = self._new_metric()
        self.test_map = self._new_metric()
        self.skipped_steps = 0

    def _new_metric(self) -> MeanAveragePrecision:
        # sync_on_compute=False: under DDP, gather_map_states collects the ranks' images instead
        return MeanAveragePrecision(
            box_format="xyxy",
            iou_type="bbox",
            class_metrics=True,
            backend=self.hparams.map_backend,
            sync_on_compute=False,
        )

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        if names:
            self._match_classes(list(names), getattr(datamodule, "class_sources", None) or {})
            # Saved with the checkpoint so that eval/predict name classes without the data.
            self.hparams.class_names = list(names)

    def _match_classes(self, names: list[str], sources: Mapping[str, str]) -> None:
        """The data's classes against the detector's: other names warn; another count is an error,
        or with reset_classes a new classification layer for the data's classes."""
        count, known = int(self.hparams.detector["num_classes"]), list(self.hparams.class_names or [])
        difference = f": {class_difference(names, known, sources, 'in the checkpoint')}" if known else ""
        if len(names) == count:
            if known and known != names:
                log.warning("Class names of the data differ from the checkpoint's%s", difference)
            return
        if not self.hparams.reset_classes:
            raise ValueError(
                f"The detector predicts {count} classes ({known or 'names unknown'}) but the data has "
                f"{len(names)} ({names}){difference}. Use data with the detector's classes, or fine-tune "
                "with model.task.reset_classes=true (with init_from=<checkpoint>) for a new classifier"
            )
        replace_classifier(self.detector, len(names))
        log.warning("New classification layer: %d classes (%s) instead of %d", len(names), names, count)
        self.hparams.detector = {**self.hparams.detector, "num_classes": len(names)}
        self.hparams.reset_classes = False  # done: a checkpoint of this task holds the new layer

    @property
    def class_names(self) -> list[str]:
        if self.hparams.class_names:
            return list(self.hparams.class_names)
        return [str(i) for i in range(int(self.hparams.detector.get("num_classes", 0)))]

    def configure_model(self) -> None:
        """`compile`: the backbone and FPN compiled in place, once (fit, then test, call this again)."""
        module = self.detector.backbone
        if self.hparams.compile and getattr(module, "_compiled_call_impl", None) is None:
            module.compile()

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.detector(images)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        images, targets = batch
        losses: dict[str, Tensor] = self.detector(images, [_boxes_and_labels(t) for t in targets])
        loss = sum(losses.values())
        if self.hparams.nonfinite_loss == "skip":
            if not self._all_finite(loss):
                self.skipped_steps += 1
                message = self._nonfinite_message(losses)
                log.warning("%s: step skipped (%d so far)", message, self.skipped_steps)
                return None
        else:
            self._record_nonfinite(loss, losses)
        batch_size = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in losses.items():
            self.log(f"train/loss_{_short(name)}", value, batch_size=batch_size)
        return loss

    def _all_finite(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every rank (a host sync; under DDP one verdict for all: a
        rank that skips alone leaves the others waiting forever in the gradient all-reduce)."""
        finite = torch.isfinite(loss.detach()).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            finite = self.all_gather(finite).min()
        return bool(finite)

    def _nonfinite_message(
        self, losses: Mapping[str, Tensor | float], step: int | None = None, epoch: int | None = None
    ) -> str:
        parts = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
        world_size = self.trainer.world_size if self._trainer is not None else 1
        where = f" on rank {self.global_rank}" if world_size > 1 else ""
        step = self.global_step if step is None else step
        epoch = self.current_epoch if epoch is None else epoch
        return f"Non-finite loss at global step {step} (epoch {epoch}){where}: {parts}"

    def _record_nonfinite(self, loss: Tensor, losses: Mapping[str, Tensor]) -> None:
        """Keep the first non-finite step and its loss parts on the device: no host sync."""
        parts = torch.stack([v.detach().float() for v in losses.values()])
        if self._nonfinite is None or self._nonfinite[0].device != parts.device:
            where = torch.full((2,), -1, device=parts.device, dtype=torch.long)
            self._nonfinite = (where, parts, list(losses))
        where, saved, _ = self._nonfinite
        first = (where[0] < 0) & ~torch.isfinite(loss.detach())
        where[0] = torch.where(first, self.global_step, where[0])  # python scalars: no copy to the device
        where[1] = torch.where(first, self.current_epoch, where[1])
        saved.copy_(torch.where(first, parts, saved))
        if self._trainer is not None and (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            self.check_nonfinite()

    def check_nonfinite(self) -> None:
        """Raise FloatingPointError if any rank recorded a non-finite loss (one host sync; every
        rank calls it at the same step, so under DDP all raise together)."""
        if self._nonfinite is None:
            return
        where, parts, names = self._nonfinite
        ranks = self.all_gather(where) if self._trainer is not None and self.trainer.world_size > 1 else where
        ranks = ranks.reshape(-1, 2).tolist()
        bad = [(step, epoch) for step, epoch in ranks if step >= 0]
        if not bad:
            return
        step, epoch = where.tolist()
        if step >= 0:
            message = self._nonfinite_message(dict(zip(names, parts.tolist())), step=step, epoch=epoch)
        else:
            step, epoch = min(bad)
            message = f"Non-finite loss at global step {step} (epoch {epoch}) on another rank"
        raise FloatingPointError(
            message + ". The last good checkpoint is kept; lower model.optimizer.lr, raise the "
            "warmup, or set model.task.nonfinite_loss=skip to skip such steps."
        )

    def on_train_epoch_end(self) -> None:
        self.check_nonfinite()

    def on_train_end(self) -> None:
        self.check_nonfinite()

    # ---------------------------------------------------------------- evaluation
    def validation_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Tensor]]:
        preds = self._eval_step(batch, self.val_map)
        if self.hparams.val_loss:
            self._log_val_loss(batch)
        return preds

    def _log_val_loss(self, batch: Batch) -> None:
        images, targets = batch
        losses = training_losses(self.detector, images, [_boxes_and_labels(t) for t in targets])
        # sync_dist: Lightning sums value x batch_size and the batch sizes over the ranks, so the
        # figure is the mean over every validation image, as in one process
        batch_size = len(images)
        self.log("val/loss", sum(losses.values()), batch_size=batch_size, sync_dist=True)
        for name, value in losses.items():
            self.log(f"val/loss_{_short(name)}", value, batch_size=batch_size, sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Tensor]]:
        return self._eval_step(batch, self.test_map)

    def _eval_step(self, batch: Batch, metric: MeanAveragePrecision) -> list[dict[str, Tensor]]:
        images, targets = batch
        preds = self.detector(images)
        metric.update(
            [{k: p[k].detach() for k in ("boxes", "scores", "labels")} for p in preds],
            [_boxes_and_labels(t) for t in targets],
        )
        return preds

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def _log_map(self, metric: MeanAveragePrecision, prefix: str) -> None:
        # Each image counts once: the data module's eval samplers never pad, and gather_map_states
        # collects ranks holding different numbers of images (torchmetrics' own sync cannot).
        gather_map_states(metric)
        values = map_metrics(metric.compute(), self.class_names, prefix)
        metric.reset()
        self.log(f"{prefix}/mAP", values.pop(f"{prefix}/mAP"), prog_bar=True)
        self.log_dict(values)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        images, metas = batch
        preds = self.detector(images)
        return [{**meta, **{k: v.detach().cpu() for k, v in p.items()}} for p, meta in zip(preds, metas)]

    # ---------------------------------------------------------------- optimisation
    @property
    def backbone(self) -> Backbone:
        """The detector's feature extractor (what `BackboneUnfreeze` freezes and unfreezes)."""
        return self.detector.backbone.body

    def parameter_groups(
        self, params: Collection[nn.Parameter] | None = None, name_suffix: str = ""
    ) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (`detection.training.optim.parameter_groups`) of the
        trainable detector parameters, or of `params` only."""
        options = self.hparams.optimizer
        return parameter_groups(
            self.detector,
            lr=float(options["lr"]),
            weight_decay=float(options.get("weight_decay", 0.0)),
            backbone_lr_mult=self.hparams.backbone_lr_mult,
            norm_bias_weight_decay=self.hparams.norm_bias_weight_decay,
            layer_decay=self.hparams.layer_decay,
            params=params,
            name_suffix=name_suffix,
        )

    def configure_optimizers(self) -> dict[str, Any]:
        return build_optimizer_and_scheduler(
            self.parameter_groups(),
            optimizer=self.hparams.optimizer,
            scheduler=self.hparams.scheduler,
            total_steps=self.trainer.estimated_stepping_batches,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_nonfinite()  # before the file is written: no checkpoint of wrecked weights

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("class_names")
        names = self.hparams.class_names
        if saved and names and len(saved) != len(names):  # resuming onto data with other classes
            raise ValueError(
                f"The checkpoint's detector predicts {len(saved)} classes ({saved}) but the data has "
                f"{len(names)} ({names}); resuming needs the classes it was trained on"
            )
        state = checkpoint.get("state_dict", {})
        for key in _LEGACY_STATE_KEYS:
            state.pop(key, None)


def training_losses(
    detector: nn.Module, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """The detector's training losses (float32) on a batch, leaving nothing that training sees changed.

    torchvision-style detectors return losses only in training mode, so the detector runs once in
    it, without gradients, except for the parts whose training mode would change the model or the
    figure: the backbone and FPN (``detector.backbone``) stay in eval mode (the features validation
    scores, no dropout or stochastic depth), and so does every BatchNorm anywhere (`is_norm`; its
    running statistics are not updated). The random draws of training mode (the transform's size
    choice, the R-CNN proposal and RoI samplers) come from a forked generator (the CPU's and the
    images' CUDA device's), so a run with validation losses trains exactly as one without.
    Afterwards every module is back in the mode it had.
    """
    modes = [(module, module.training) for module in detector.modules()]
    devices = sorted({_cuda_index(image.device) for image in images if image.device.type == "cuda"})
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            detector.train()
            features = getattr(detector, "backbone", None)
            if isinstance(features, nn.Module):
                features.eval()
            for module in detector.modules():
                if is_norm(module):
                    module.eval()
            losses = detector(list(images), [dict(t) for t in targets])
    finally:
        # the flags themselves, not train()/eval(): a module's own train() (the Backbone's keeps
        # frozen stages' norms in eval) must not decide what the previous mode was
        for module, training in modes:
            module.training = training
    return {name: value.float() for name, value in losses.items()}


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _boxes_and_labels(target: Mapping[str, Any]) -> dict[str, Tensor]:
    return {"boxes": target["boxes"], "labels": target["labels"]}


def _short(name: str) -> str:
    return name[5:] if name.startswith("loss_") else name
