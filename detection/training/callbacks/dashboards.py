"""Per-class AP, precision-recall curves, a confusion matrix and the AP lost per error type after
each validation.

Logged to W&B (images of the figures, a bar chart and a table) when a `WandbLogger` is attached,
and always written as PNG files (plus the numbers as JSON) to ``<run dir>/plots/`` for people
without W&B. IoU 0.5 for both the curves and the matrix (see `detection.training.diagnostics`).
The error breakdown (`detection.training.errors`, TIDE-style: the AP50 that classification,
localisation, both, duplicate, background and missed errors each cost) goes into the JSON under
"errors" and to W&B as a bar chart and one curve per type (``val/dashboard/dAP/<type>``); its IoU
thresholds are TIDE's (0.5 and 0.1) whatever `iou_thresh`.

Cost: predictions and targets of the validation set are kept on the CPU (boxes only), matched
with numpy, and three figures are drawn with the Agg canvas: about a second per validation on
the FashionDet validation set; the error breakdown adds about 0.1 s per 100 images. Under DDP
every rank's predictions are gathered to rank 0 (`torch.distributed.gather_object`), so the
plots cover every image once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from detection.training import diagnostics, figures
from detection.training.errors import ERROR_TYPES, error_breakdown_arrays
from detection.training.metrics import class_metric_key, gather_to_rank_zero

log = logging.getLogger(__name__)


class DetectionDashboards(L.Callback):
    """Args:
    output_dir: folder of the PNG/JSON files (None: ``<trainer.default_root_dir>/plots``).
    iou_thresh: IoU for a match, in the curves and in the matrix.
    score_thresh: detections below it are left out of the confusion matrix (not of the curves).
    every_n_validations: draw every n-th validation only (1: all).
    log_wandb: also log to the attached W&B loggers.
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        iou_thresh: float = 0.5,
        score_thresh: float = 0.3,
        every_n_validations: int = 1,
        log_wandb: bool = True,
    ) -> None:
        if not 0.0 < iou_thresh <= 1.0:
            raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.iou_thresh = float(iou_thresh)
        self.score_thresh = float(score_thresh)
        self.every_n_validations = int(every_n_validations)
        self.log_wandb = log_wandb
        self._validations = 0
        self._active = False
        self._preds: list[dict[str, np.ndarray]] = []
        self._targets: list[dict[str, np.ndarray]] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._preds, self._targets = [], []
        self._active = not trainer.sanity_checking and self._validations % self.every_n_validations == 0
        if not trainer.sanity_checking:
            self._validations += 1

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or not outputs:
            return
        _, targets = batch
        for pred, target in zip(outputs, targets, strict=True):
            self._preds.append({k: diagnostics.to_numpy(pred[k]) for k in ("boxes", "scores", "labels")})
            self._targets.append({k: diagnostics.to_numpy(target[k]) for k in ("boxes", "labels")})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        preds, targets = gather_to_rank_zero(self._preds), gather_to_rank_zero(self._targets)
        self._preds, self._targets = [], []
        if not trainer.is_global_zero or not targets:
            return
        names = list(getattr(pl_module, "class_names", []) or [])
        num_classes = len(names) or 1 + max(
            [int(t["labels"].max()) for t in targets if len(t["labels"])]
            + [int(p["labels"].max()) for p in preds if len(p["labels"])]
            + [0]
        )
        names = names or [str(i) for i in range(num_classes)]
        self.write(trainer, preds, targets, names)

    def write(
        self,
        trainer: L.Trainer,
        preds: list[dict[str, np.ndarray]],
        targets: list[dict[str, np.ndarray]],
        names: list[str],
    ) -> dict[str, Path]:
        """Compute, draw, save and log; returns the written files by kind."""
        curves = diagnostics.pr_curves(preds, targets, len(names), self.iou_thresh)
        matrix = diagnostics.confusion_matrix(preds, targets, len(names), self.iou_thresh, self.score_thresh)
        iou = f"IoU {self.iou_thresh:g}"
        step, epoch = trainer.global_step, trainer.current_epoch
        where = f"epoch {epoch}, step {step}, {len(targets)} images"
        ap50 = [c.ap for c in curves]
        bars = {f"AP@{self.iou_thresh:g}": ap50}
        coco = [trainer.callback_metrics.get(class_metric_key("val", n)) for n in names]
        if all(v is not None for v in coco):
            bars["AP@[.5:.95] (val/AP)"] = [float(v) for v in coco]
        drawn = {
            "per_class_ap": figures.per_class_ap_figure(bars, names, f"Per-class AP ({where})"),
            "pr_curves": figures.pr_curves_figure(curves, names, f"Precision-recall at {iou} ({where})"),
            "confusion_matrix": figures.confusion_figure(
                matrix, names, f"Confusion at {iou}, score >= {self.score_thresh:g} ({where})"
            ),
        }
        out = self.output_dir or Path(trainer.default_root_dir) / "plots"
        stem = f"val_epoch{epoch:03d}_step{step:06d}"
        files = {kind: figures.save(figure, out / f"{stem}_{kind}.png") for kind, figure in drawn.items()}
        errors = {k: (None if v != v else v) for k, v in error_breakdown_arrays(preds, targets).items()}
        numbers = {
            "epoch": epoch,
            "step": step,
            "images": len(targets),
            "iou_thresh": self.iou_thresh,
            "score_thresh": self.score_thresh,
            "classes": names,
            "ap": {n: (None if a != a else a) for n, a in zip(names, ap50)},
            "num_gt": {n: c.num_gt for n, c in zip(names, curves)},
            "confusion_matrix": matrix.tolist(),
            "errors": errors,  # AP50 and the dAP of each error type
        }
        files["numbers"] = out / f"{stem}_dashboard.json"
        files["numbers"].write_text(json.dumps(numbers, indent=1))
        if self.log_wandb:
            self._log_wandb(trainer, files, names, ap50, errors, step)
        return files

    def _log_wandb(
        self,
        trainer: L.Trainer,
        files: dict[str, Path],
        names: list[str],
        ap50: list[float],
        errors: dict[str, float | None],
        step: int,
    ) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        table = wandb.Table(
            columns=["class", "AP50"], data=[[n, 0.0 if a != a else float(a)] for n, a in zip(names, ap50)]
        )
        lost = wandb.Table(columns=["error", "dAP"], data=[[t, errors[t] or 0.0] for t in ERROR_TYPES])
        payload = {
            "val/dashboard/per_class_ap50": wandb.plot.bar(table, "class", "AP50", title="Per-class AP@0.5"),
            "val/dashboard/errors": wandb.plot.bar(lost, "error", "dAP", title="AP50 lost per error type"),
            "val/dashboard/per_class_ap": wandb.Image(str(files["per_class_ap"])),
            "val/dashboard/pr_curves": wandb.Image(str(files["pr_curves"])),
            "val/dashboard/confusion_matrix": wandb.Image(str(files["confusion_matrix"])),
            **{f"val/dashboard/dAP/{t}": errors[t] for t in ERROR_TYPES if errors[t] is not None},
            "trainer/global_step": step,
        }
        for logger in loggers:
            logger.experiment.log(payload)
