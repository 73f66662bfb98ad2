"""How long inference takes: median wall times and per-image latency, with their spread.

Every clock reading goes through `clock()`: on CUDA it first waits for the GPU's queued work
(`torch.cuda.synchronize`), so a timing covers the kernels launched, not only their launch.
Repeated timings are reported as a `Spread`: the median and the interquartile range (25th to 75th
percentile), so a reader sees how much the runs disagreed, not one figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the queued CUDA work of `device` (None: of the current device, if CUDA is in use).
    On the CPU, nothing to wait for."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def clock(device: torch.device | str | None = None) -> float:
    """`time.perf_counter()` once the GPU work queued so far has finished (see `synchronize`)."""
    synchronize(device)
    return time.perf_counter()


class Spread(NamedTuple):
    """The median of repeated timings and their interquartile range: 25th (`q1`) and 75th (`q3`)
    percentiles, interpolated linearly between the sorted runs (numpy's default)."""

    median: float
    q1: float
    q3: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        samples = [float(s) for s in samples]
        if not samples:
            raise ValueError("a spread of no samples: time at least one run")
        if len(samples) == 1:  # statistics.quantiles wants two points before Python 3.13
            return cls(samples[0], samples[0], samples[0])
        q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(median, q1, q3)

    def text(self, spec: str = ".1f") -> str:
        """``median [q1–q3]``, e.g. ``12.3 [12.1–12.6]``."""
        return f"{self.median:{spec}} [{self.q1:{spec}}–{self.q3:{spec}}]"


def sample_ms(fn: Callable[[], object], warmup: int = 1, runs: int = 3) -> list[float]:
    """Wall times of `runs` calls of `fn` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = clock()
        fn()
        times.append((clock() - start) * 1000.0)
    return times


def median_iqr_ms(fn: Callable[[], object], warmup: int = 1, runs: int = 3) -> Spread:
    """Median and interquartile range of `fn`'s wall time in milliseconds (see `sample_ms`)."""
    return Spread.of(sample_ms(fn, warmup, runs))


def median_ms(fn: Callable[[], object], warmup: int = 1, runs: int = 3) -> float:
    """Median wall time of `fn` in milliseconds after `warmup` untimed calls."""
    return median_iqr_ms(fn, warmup, runs).median


@torch.no_grad()
def latency_samples_ms(model: nn.Module, images: Sequence[Tensor], warmup: int = 2) -> list[float]:
    """Milliseconds of ``model([image])`` for each of `images`, one image at a time (batch 1); the
    raw times, so that the times of several checkpoints can be pooled (`Spread.of`)."""
    model.eval()
    for image in list(images)[:warmup]:
        model([image])
    times = []
    for image in images:
        start = clock()
        model([image])
        times.append((clock() - start) * 1000.0)
    return times


def count_parameters(model: nn.Module, prefix: str | tuple[str, ...] = "") -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefix))


@torch.no_grad()
def rcnn_samples(
    model: nn.Module, images: list[Tensor], warmup: int = 1, runs: int = 3
) -> dict[str, list[float]]:
    """Milliseconds per image of each of `runs` passes of a torchvision-style R-CNN over one batch
    of `images`, by part; the raw runs, so that runs of several checkpoints can be pooled.

    "end to end" is the whole forward pass, "backbone" the classification network alone (no FPN)
    on the resized batch, "head (RPN + RoI)" everything after the backbone + FPN features (computed
    once, outside the clock), "RoI heads" the second stage alone on the first pass's proposals;
    "proposals/img" (one value, not a time) is how many proposals the RPN kept per image.
    """
    model.eval()
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)

    def head() -> None:
        props, _ = model.rpn(batch, features)
        model.roi_heads(features, props, batch.image_sizes)

    def roi_heads() -> None:
        model.roi_heads(features, proposals, batch.image_sizes)

    n = len(images)
    parts: dict[str, Callable[[], object]] = {
        "end to end": lambda: model(images),
        "backbone": lambda: model.backbone.body(batch.tensors),
        "head (RPN + RoI)": head,
        "RoI heads": roi_heads,
    }
    samples = {name: [t / n for t in sample_ms(fn, warmup, runs)] for name, fn in parts.items()}
    return {**samples, "proposals/img": [sum(len(p) for p in proposals) / n]}


def rcnn_timings(model: nn.Module, images: list[Tensor], warmup: int = 1, runs: int = 3) -> dict[str, Spread]:
    """Median and interquartile range of each part of `rcnn_samples` (ms per image; "proposals/img"
    is a count, the same in every run, so its three values are equal)."""
    return {name: Spread.of(values) for name, values in rcnn_samples(model, images, warmup, runs).items()}
