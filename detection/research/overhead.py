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
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from detection.data import DetectionDataModule
from detection.research.tables import write_tables
from detection.research.timing import clock
from detection.training import DetectionTask, figures

COLUMNS = [
    ("loop", "loop", ""),
    ("seconds", "seconds (median)", ".2f"),
    ("ms_per_step", "ms / step", ".1f"),
    ("ratio", "ratio to plain", ".3f"),
]
LOOPS = ("plain PyTorch", "Lightning (steps)", "Lightning (whole fit())")
Batch = tuple[Any, Any]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


class StepClock(L.Callback):
    """First training batch's start to last batch's end, as Lightning's callbacks see them."""

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not hasattr(self, "start"):
            self.start = clock()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.end = clock()


class _Stepping:
    """Stands in for the Trainer that configure_optimizers reads its step count from."""

    def __init__(self, steps: int) -> None:
        self.estimated_stepping_batches = steps


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


def replay_batches(args: argparse.Namespace) -> tuple[list[Batch], list[str]]:
    """The first `--steps` training batches of FashionDet (written when missing), and its classes."""
    data = DetectionDataModule(
        root=args.data_root,
        generate={"preset": args.preset},
        batch_size=args.batch_size,
        print_summary=False,
    )
    data.setup("fit")
    loader = iter(data.train_dataloader())
    return [next(loader) for _ in range(args.steps)], list(data.class_names)


def plain_loop(task: DetectionTask, batches: list[Batch], steps: int) -> float:
    """Seconds of `steps` plain PyTorch training steps of the task's detector."""
    task._trainer = _Stepping(steps)  # type: ignore[assignment]
    detector = task.detector
    optimizers = task.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    detector.train()
    start = clock()
    for images, targets in batches[:steps]:
        losses = detector(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return clock() - start


def lightning_loop(task: DetectionTask, batches: list[Batch], steps: int) -> tuple[float, float]:
    """Seconds of the same steps inside `Trainer.fit`, and of the whole `fit` call."""
    steps_clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[steps_clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    task._trainer = None
    start = clock()
    # a list would be read as a collection of loaders: replay the batches through a DataLoader
    loader = DataLoader(batches[:steps], batch_size=None, collate_fn=_same)
    trainer.fit(task, train_dataloaders=loader)
    return steps_clock.end - steps_clock.start, clock() - start


def _same(batch: Any) -> Any:
    return batch


def weight_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest absolute difference of the floating-point tensors of `a` and their namesakes in `b`."""
    return max(
        (a[k].float() - b[k].float()).abs().max().item()
        for k in a
        if isinstance(a[k], torch.Tensor) and a[k].is_floating_point()
    )


def compare_loops(
    task0: DetectionTask, batches: list[Batch], steps: int, repeats: int
) -> tuple[dict[str, float], float, float]:
    """Median seconds of each loop over `repeats` alternating runs, how far the final weights of
    plain and Lightning differ, and how far the plain steps moved them from the start."""
    plain_loop(copy.deepcopy(task0), batches, 1)  # untimed: first-touch allocations count for neither
    seconds: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    finals = {}
    for _ in range(repeats):
        task = copy.deepcopy(task0)
        torch.manual_seed(1)
        seconds[LOOPS[0]].append(plain_loop(task, batches, steps))
        finals["plain"] = task.detector.state_dict()
        task = copy.deepcopy(task0)
        torch.manual_seed(1)
        in_steps, whole = lightning_loop(task, batches, steps)
        seconds[LOOPS[1]].append(in_steps)
        seconds[LOOPS[2]].append(whole)
        finals["lightning"] = task.detector.state_dict()
    medians = {loop: statistics.median(values) for loop, values in seconds.items()}
    # parameters only: BatchNorm's running statistics move even without a gradient step
    moved = weight_difference(dict(task0.detector.named_parameters()), finals["plain"])
    return medians, weight_difference(finals["plain"], finals["lightning"]), moved


def plot(rows: list[dict[str, Any]], path: Path, setting: str) -> Path:
    figure = figures.new_figure(6.0, 3.2)
    ax = figure.add_subplot()
    ax.barh([r["loop"] for r in rows], [r["ms_per_step"] for r in rows], color=figures.COLOURS[:3])
    ax.invert_yaxis()
    ax.set(xlabel="ms per training step", title=setting, xlim=(0, None))
    ax.title.set_fontsize(7)
    return figures.save(figure, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    out = args.out or Path("logs") / "overhead" / time.strftime("%Y-%m-%d_%H-%M-%S")
    L.seed_everything(0, verbose=False)
    batches, class_names = replay_batches(args)
    task0 = make_task(args.head, args.backbone, args.weights, 1e-3, class_names)
    medians, diff, moved = compare_loops(task0, batches, args.steps, args.repeats)
    # Lightning's step clock starts at the first batch's start: it misses one step's data fetch
    plain = medians[LOOPS[0]]
    rows = [
        {"loop": loop, "seconds": s, "ms_per_step": 1000 * s / args.steps, "ratio": s / plain}
        for loop, s in medians.items()
    ]
    setting = (
        f"{args.head} + {args.backbone} ({args.weights}), {args.steps} steps of {args.batch_size} FashionDet "
        f"images, {args.threads} thread(s), median of {args.repeats}"
    )
    # an equality is only evidence if the steps changed the weights: say by how much
    note = (
        f"{setting}. Largest difference of the final weights, plain vs Lightning: {diff:.2e} "
        f"(the steps moved them by up to {moved:.2e})."
    )
    csv_path, md_path = write_tables(rows, COLUMNS, out / "overhead", note)
    png = plot(rows, out / "overhead.png", setting)
    print(md_path.read_text())
    print(f"Lightning / plain: {rows[1]['ratio']:.3f} (steps), {rows[2]['ratio']:.3f} (whole fit())")
    print(f"Wrote {csv_path}, {md_path}, {png}")
