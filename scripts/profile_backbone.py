"""Backbone profiler: parameters, FLOPs, training memory per batch size and images per second.

For each backbone (as `build_backbone` builds it for detection: levels c3-c5, random weights,
trainable BatchNorm, nothing frozen) and each batch size, one training step is forward through the
backbone, a scalar loss on its feature maps, backward and an SGD step. Measured:

- params (M), depth (convolutions), width (channels of the stride-32 map), groups (largest group
  count of a grouped, not depthwise, convolution), depthwise convolutions, GFLOPs per image for
  the forward pass (`torch.utils.flop_counter.FlopCounterMode`, multiply and add = two FLOPs);
- saved activations (MB): bytes of the tensors autograd keeps for backward in one step (counted
  with `torch.autograd.graph.saved_tensors_hooks`, each storage once, weights left out) - the
  feature-map memory that grows with batch size, the same on any device;
- peak memory (MB): on CUDA `torch.cuda.max_memory_allocated` above the model's own; on CPU the
  growth of the process's peak resident set (Linux VmHWM, reset through /proc/self/clear_refs)
  during the step, named "peak RSS growth (CPU)" - allocator caching makes it a rough measure;
- images / s: batch size over the median step time.

    python scripts/profile_backbone.py                                 # 6 backbones, 128 px, batch 1 and 8
    python scripts/profile_backbone.py --backbones resnet18,resnet50 --batch-sizes 2,4,8 --size 224

Writes profile_backbone.csv / .md / .png into --out (default logs/profile_backbone/<stamp>).
"""

from __future__ import annotations

import os

# Spinning OpenMP threads starve each other on a shared, oversubscribed CPU (a 2-thread step ran
# ~300x slower here); passive waiting costs little when the machine is free. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import ctypes
import re
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from detection.models import build_backbone
from detection.research.tables import write_tables
from detection.training import figures

BACKBONES = "resnet18,resnet50,resnext50_32x4d,wide_resnet50_2,efficientnet_lite0,mobilenet_v3_large"
COLUMNS = [
    ("backbone", "backbone", ""),
    ("params_M", "params (M)", ".2f"),
    ("depth", "convs", ""),
    ("width", "C5 channels", ""),
    ("groups", "max groups", ""),
    ("depthwise", "depthwise convs", ""),
    ("gflops", "GFLOPs / image (fwd)", ".2f"),
    ("batch", "batch", ""),
    ("activations_MB", "saved activations (MB)", ".1f"),
    ("peak_MB", "peak memory (MB)", ".1f"),
    ("memory_measure", "peak memory measure", ""),
    ("images_per_s", "train images / s", ".1f"),
]


def structure(model: nn.Module) -> dict[str, Any]:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1 and c.groups == c.in_channels]
    return {
        "depth": len(convs),
        "groups": max((c.groups for c in convs if c not in depthwise), default=1),
        "depthwise": len(depthwise),
    }


def gflops_per_image(model: nn.Module, size: int) -> float:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def saved_activation_bytes(model: nn.Module, batch: torch.Tensor) -> int:
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # convolutions keep their weights too: not activations
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss(model(batch))
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _loss(features: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(f.float().pow(2).mean() for f in features.values())


class PeakMemory:
    """Peak memory of a block of code above what was in use when it started."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.name = "CUDA max allocated" if device.type == "cuda" else "peak RSS growth (CPU)"
        self._libc = None
        if device.type != "cuda":
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self._libc = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            if self._libc is not None:
                self._libc.malloc_trim(0)  # give freed heap back, so the peak below is this block's
            self._reset_hwm()
            self._start = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self.bytes = max(_status_kb("VmHWM") * 1024 - self._start, 0)

    def _reset_hwm(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.name = "peak RSS growth (CPU, not reset: upper bound)"


def _status_kb(field: str) -> int:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    _loss(model(batch)).backward()
    optimizer.step()


def profile(
    name: str, size: int, batch_sizes: list[int], warmup: int, steps: int, device: torch.device
) -> list[dict]:
    torch.manual_seed(0)
    model = build_backbone(name, weights=None, norm="bn", freeze_at=0).to(device)
    info = {
        "backbone": name,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "width": model.channels[-1],
        "gflops": gflops_per_image(model, size),
        **structure(model),
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    rows = []
    for batch_size in batch_sizes:
        model.train()
        batch = torch.rand(batch_size, 3, size, size, device=device)
        activations = saved_activation_bytes(model, batch)
        for _ in range(warmup):
            train_step(model, optimizer, batch)
        with PeakMemory(device) as peak:
            train_step(model, optimizer, batch)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            train_step(model, optimizer, batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        rows.append(
            {
                **info,
                "batch": batch_size,
                "activations_MB": activations / 2**20,
                "peak_MB": peak.bytes / 2**20,
                "memory_measure": peak.name,
                "images_per_s": batch_size / statistics.median(times),
            }
        )
        print(
            f"{name:20s} batch {batch_size:3d}: {rows[-1]['activations_MB']:8.1f} MB saved activations, "
            f"{rows[-1]['peak_MB']:8.1f} MB {peak.name}, {rows[-1]['images_per_s']:7.1f} img/s",
            flush=True,
        )
    return rows


def plot(rows: list[dict], path: Path, title: str) -> Path:
    figure = figures.new_figure(10.0, 4.2)
    mem_ax, speed_ax = figure.subplots(1, 2)
    names = list(dict.fromkeys(r["backbone"] for r in rows))
    for i, name in enumerate(names):
        mine = [r for r in rows if r["backbone"] == name]
        colour, marker = figures.COLOURS[i % len(figures.COLOURS)], figures.MARKERS[i % len(figures.MARKERS)]
        mem_ax.plot(
            [r["batch"] for r in mine],
            [r["activations_MB"] for r in mine],
            "-",
            marker=marker,
            color=colour,
            label=name,
        )
        largest = max(mine, key=lambda r: r["batch"])
        speed_ax.scatter(
            largest["gflops"],
            largest["images_per_s"],
            color=colour,
            marker=marker,
            s=60 + largest["params_M"] * 3,
        )
        speed_ax.annotate(
            f"{name}\n{largest['params_M']:.1f}M",
            (largest["gflops"], largest["images_per_s"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    mem_ax.set(
        xlabel="batch size", ylabel="saved activations (MB)", title="Feature-map memory of one training step"
    )
    mem_ax.grid(alpha=0.3)
    mem_ax.legend(fontsize=7)
    speed_ax.set(
        xlabel="GFLOPs / image (forward)",
        ylabel="training images / s",
        title=f"Speed at batch {max(r['batch'] for r in rows)} (marker size ~ params)",
    )
    speed_ax.grid(alpha=0.3)
    figure.suptitle(title, fontsize=9)
    return figures.save(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=BACKBONES)
    parser.add_argument("--size", type=int, default=128, help="input side in pixels")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    out = args.out or Path("logs") / "profile_backbone" / time.strftime("%Y-%m-%d_%H-%M-%S")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    for name in args.backbones.split(","):
        rows.extend(profile(name.strip(), args.size, batch_sizes, args.warmup, args.steps, device))
    where = f"{device.type}" + (
        f", {args.threads} threads" if device.type == "cpu" else f" ({torch.cuda.get_device_name(device)})"
    )
    title = f"{args.size}x{args.size} input, random weights, trainable BN, {where}"
    note = (
        f"Setting: {title}; images/s = batch / median of {args.steps} training steps (forward, backward, "
        "SGD). Saved activations: bytes autograd keeps for backward (each storage once). "
        "Peak memory: see the 'measure' column."
    )
    csv_path, md_path = write_tables(rows, COLUMNS, out / "profile_backbone", note)
    png = plot(rows, out / "profile_backbone.png", title)
    print(md_path.read_text())
    print(f"Wrote {csv_path}, {md_path}, {png}")


if __name__ == "__main__":
    main()
