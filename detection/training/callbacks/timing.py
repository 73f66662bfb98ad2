"""Training-loop seconds apart from validation, written to timing.json for the benchmarks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch


class TrainTimer(L.Callback):
    """Write ``<output_dir>/timing.json``: training-loop seconds apart from validation.

    ``train_s`` counts from each training epoch's start to its last batch's end, data loading
    included, validation excluded (a validation inside the epoch is cut out). ``full_batches`` is
    the length of an unlimited epoch, so a run cut short by ``limit_train_batches`` still gives a
    per-epoch estimate: ``train_s / train_batches * full_batches``.
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.record: dict[str, Any] = {}
        self._last = 0.0
        self._val_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record = {"train_s": 0.0, "train_batches": 0, "train_images": 0, "val_s": 0.0, "epochs": []}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = time.perf_counter()
        self._epoch = {"train_s": 0.0, "batches": 0}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        self._epoch["train_s"] += now - self._last
        self._epoch["batches"] += 1
        self.record["train_images"] += len(batch[0])
        self._last = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self.record["val_s"] = self.record.get("val_s", 0.0) + now - self._val_start
        self._last = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["epochs"].append({k: round(v, 3) for k, v in self._epoch.items()})
        self.record["train_s"] += self._epoch["train_s"]
        self.record["train_batches"] += self._epoch["batches"]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.record:
            return
        try:
            full = len(trainer.train_dataloader)  # the loader itself: the unlimited epoch length
        except Exception:  # an iterable without len: no per-epoch estimate
            full = None
        record = dict(self.record)
        record["full_batches"] = full
        record["threads"] = torch.get_num_threads()
        batches = record["train_batches"]
        record["s_per_batch"] = record["train_s"] / batches if batches else None
        record["epoch_s_estimate"] = record["s_per_batch"] * full if batches and full else None
        out = self.output_dir or Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "timing.json").write_text(json.dumps(record, indent=2))
