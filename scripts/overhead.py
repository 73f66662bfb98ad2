"""Framework overhead: the same training steps in the Lightning task and in a plain PyTorch loop.

Both start from the same weights and run the same `--steps` batches (drawn once from FashionDet's
training loader and replayed, so data loading is out of the comparison), with the optimiser and
schedule that `DetectionTask.configure_optimizers` builds. Timed, each `--repeats` times,
alternating:

- plain: ``loss = sum(detector(images, targets).values()); zero_grad; backward; step; sched.step``;
- Lightning, steps: the same steps inside `Trainer.fit` (first batch start to last batch end, as a
  callback sees them: Lightning's per-step work included, its setup not);
- Lightning, fit(): the whole `Trainer.fit` call (setup and teardown included).

No logger, checkpoint, progress bar or validation: this is the cost of the loop itself. The
final weights of both are compared too (same computation => equal up to float noise).

    python scripts/overhead.py                      # FCOS + EfficientNet-Lite0, 10 steps of 8 images
    python scripts/overhead.py --head retinanet --steps 20 --batch-size 16 --threads 2
"""

from __future__ import annotations

import os

# Spinning OpenMP threads starve each other on a shared, oversubscribed CPU; see profile_backbone.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from detection.data import DetectionDataModule  # noqa: E402
from detection.research.tables import write_tables  # noqa: E402
from detection.training import (
    DetectionTask,  # noqa: E402
    figures,  # noqa: E402
)

COLUMNS = [
    ("loop", "loop", ""),
    ("seconds", "seconds (median)", ".2f"),
    ("ms_per_step", "ms / step", ".1f"),
    ("ratio", "ratio to plain", ".3f"),
]


class StepClock(L.Callback):
    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not hasattr(self, "start"):
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.end = time.perf_counter()


def make_task(
    head: str, backbone: str, weights: str | None, lr: float, class_names: list[str]
) -> DetectionTask:
    detector = {
        "_target_": "detection.models.build_detector",
        "head": head,
        "num_classes": len(class_names),
        "backbone": {"name": backbone, "weights": weights},
    }
    optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": lr, "weight_decay": 0.05}
    scheduler = {"name": "cosine", "warmup_steps": 2}
    return DetectionTask(detector, optimizer, scheduler, class_names=class_names)


def plain_loop(task: DetectionTask, batches: list, steps: int) -> float:
    detector = task.detector
    optimizers = task.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    detector.train()
    start = time.perf_counter()
    for images, targets in batches[:steps]:
        losses = detector(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


class _Stepping:
    """Stands in for the Trainer that configure_optimizers reads its step count from."""

    def __init__(self, steps: int) -> None:
        self.estimated_stepping_batches = steps


def lightning_loop(task: DetectionTask, batches: list, steps: int) -> tuple[float, float]:
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    start = time.perf_counter()
    # a list would be read as a collection of loaders: replay the batches through a DataLoader
    loader = DataLoader(batches[:steps], batch_size=None, collate_fn=_same)
    trainer.fit(task, train_dataloaders=loader)
    return clock.end - clock.start, time.perf_counter() - start


def _same(batch: Any) -> Any:
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", default="fcos")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--data-root", type=Path, default=Path("data/fashiondet"))
    parser.add_argument("--preset", default="default", help="FashionDet preset, written when missing")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    out = args.out or Path("logs") / "overhead" / time.strftime("%Y-%m-%d_%H-%M-%S")
    L.seed_everything(0, verbose=False)
    data = DetectionDataModule(
        root=args.data_root,
        generate={"preset": args.preset},
        batch_size=args.batch_size,
        print_summary=False,
    )
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [next(loader) for _ in range(args.steps)]
    task0 = make_task(args.head, args.backbone, args.weights, 1e-3, list(data.class_names))

    warm = copy.deepcopy(task0)  # one untimed step: first-touch allocations count for neither loop
    warm._trainer = _Stepping(args.steps)  # type: ignore[assignment]
    plain_loop(warm, batches, 1)
    plain_s, steps_s, fit_s = [], [], []
    finals = {}
    for _ in range(args.repeats):
        task = copy.deepcopy(task0)
        task._trainer = _Stepping(args.steps)  # type: ignore[assignment]
        torch.manual_seed(1)
        plain_s.append(plain_loop(task, batches, args.steps))
        finals["plain"] = task.detector.state_dict()
        task = copy.deepcopy(task0)
        task._trainer = None
        torch.manual_seed(1)
        s, f = lightning_loop(task, batches, args.steps)
        steps_s.append(s)
        fit_s.append(f)
        finals["lightning"] = task.detector.state_dict()
    diff = max(
        (finals["plain"][k].float() - finals["lightning"][k].float()).abs().max().item()
        for k in finals["plain"]
        if isinstance(finals["plain"][k], torch.Tensor) and finals["plain"][k].is_floating_point()
    )
    plain = statistics.median(plain_s)
    # Lightning's step clock starts at the first batch's start: it misses one step's data fetch
    rows = [
        {"loop": "plain PyTorch", "seconds": plain},
        {"loop": "Lightning (steps)", "seconds": statistics.median(steps_s)},
        {"loop": "Lightning (whole fit())", "seconds": statistics.median(fit_s)},
    ]
    for row in rows:
        row["ms_per_step"] = 1000 * row["seconds"] / args.steps
        row["ratio"] = row["seconds"] / plain
    setting = (
        f"{args.head} + {args.backbone} ({args.weights}), {args.steps} steps of {args.batch_size} FashionDet "
        f"images, {args.threads} thread(s), median of {args.repeats}"
    )
    note = f"{setting}. Largest difference of the final weights, plain vs Lightning: {diff:.2e}."
    csv_path, md_path = write_tables(rows, COLUMNS, out / "overhead", note)
    figure = figures.new_figure(6.0, 3.2)
    ax = figure.add_subplot()
    ax.barh([r["loop"] for r in rows], [r["ms_per_step"] for r in rows], color=figures.COLOURS[:3])
    ax.invert_yaxis()
    ax.set(xlabel="ms per training step", title=setting, xlim=(0, None))
    ax.title.set_fontsize(7)
    png = figures.save(figure, out / "overhead.png")
    print(md_path.read_text())
    print(f"Lightning / plain: {rows[1]['ratio']:.3f} (steps), {rows[2]['ratio']:.3f} (whole fit())")
    print(f"Wrote {csv_path}, {md_path}, {png}")


if __name__ == "__main__":
    main()
