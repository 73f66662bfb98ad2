"""How long inference takes: median wall times and per-image latency.

Every clock reading goes through `clock()`: on CUDA it first waits for the GPU's queued work
(`torch.cuda.synchronize`), so a timing covers the kernels launched, not only their launch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

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


def median_ms(fn: Callable[[], object], warmup: int = 1, runs: int = 3) -> float:
    """Median wall time of `fn` in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = clock()
        fn()
        times.append((clock() - start) * 1000.0)
    return statistics.median(times)


@torch.no_grad()
def latency_ms_per_image(model: nn.Module, images: Sequence[Tensor], warmup: int = 2) -> float:
    """Median milliseconds of ``model([image])`` over `images`, one image at a time (batch 1)."""
    model.eval()
    for image in list(images)[:warmup]:
        model([image])
    times = []
    for image in images:
        start = clock()
        model([image])
        times.append((clock() - start) * 1000.0)
    return statistics.median(times)


def count_parameters(model: nn.Module, prefix: str | tuple[str, ...] = "") -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefix))


@torch.no_grad()
def rcnn_timings(model: nn.Module, images: list[Tensor], warmup: int = 1, runs: int = 3) -> dict[str, float]:
    """Milliseconds per image of a torchvision-style R-CNN on one batch of `images`.

    "end to end" is the whole forward pass, "backbone" the classification network alone (no FPN)
    on the resized batch, "head (RPN + RoI)" everything after the backbone + FPN features (computed
    once, outside the clock), "RoI heads" the second stage alone on the first pass's proposals;
    "proposals/img" is how many proposals the RPN kept per image.
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
    return {
        "end to end": median_ms(lambda: model(images), warmup, runs) / n,
        "backbone": median_ms(lambda: model.backbone.body(batch.tensors), warmup, runs) / n,
        "head (RPN + RoI)": median_ms(head, warmup, runs) / n,
        "RoI heads": median_ms(roi_heads, warmup, runs) / n,
        "proposals/img": sum(len(p) for p in proposals) / n,
    }
