"""Backbone profiler: parameters, FLOPs, training memory per batch size and images per second.

For each backbone (as `build_backbone` builds it for detection: levels c3-c5, random weights,
trainable BatchNorm, nothing frozen) and each batch size, one training step is forward through the
backbone, a scalar loss on its feature maps, backward and an SGD step. Measured:

- params (M), depth (convolutions), width (channels of the stride-32 map), groups (largest group
  count of a grouped, not depthwise, convolution), depthwise convolutions, GFLOPs per image for
  the forward pass (`torch.utils.flop_counter.FlopCounterMode`, multiply and add = two FLOPs);
- saved activations (MB): bytes of the tensors autograd keeps for backward in one step (counted
  with `torch.autograd.graph.saved_tensors_hooks`, each storage once, weights left out) - the
  feature-map memory that grows with batch size, the same on any device; under bfloat16 autocast it
  also holds the bfloat16 copies of the weights that autocast makes, which do not grow with batch;
- peak memory (MB): on CUDA `torch.cuda.max_memory_allocated` above the model's own; on CPU the
  growth of the process's peak resident set (Linux VmHWM, reset through /proc/self/clear_refs)
  during the step, named "peak RSS growth (CPU)" - allocator caching makes it a rough measure;
- images / s: batch size over the median step time;
- layout (`--layouts nchw,nhwc`): the backbone in PyTorch's default memory layout or channels-last
  (`build_backbone(channels_last=True)`), which oneDNN trains faster on CPU;
- precision (`--precisions fp32,bf16`): float32, or bfloat16 autocast (`trainer.precision=bf16-mixed`
  in a run): dense convolutions gain on a CPU with AVX512-BF16 or AMX, depthwise ones may lose.

Writes profile_backbone.csv / .md / .png into --out (default logs/profile_backbone/<stamp>).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from detection.models import build_backbone
from detection.research.memory import PeakMemory
from detection.research.tables import write_tables
from detection.research.timing import clock, count_parameters
from detection.training import figures

BACKBONES = "resnet18,resnet50,resnext50_32x4d,wide_resnet50_2,efficientnet_lite0,mobilenet_v3_large"
COLUMNS = [
    ("backbone", "backbone", ""),
    ("layout", "layout", ""),
    ("precision", "precision", ""),
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=BACKBONES)
    parser.add_argument("--size", type=int, default=128, help="input side in pixels")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--layouts", default="nchw", help="nchw | nhwc | nchw,nhwc (channels-last)")
    parser.add_argument("--precisions", default="fp32", help="fp32 | bf16 | fp32,bf16 (bfloat16 autocast)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def structure(model: nn.Module) -> dict[str, Any]:
    """Convolutions, the largest group count of a grouped (not depthwise) one, depthwise ones."""
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
        model(torch.rand(1, 3, size, size, device=next(model.parameters()).device))
    return counter.get_total_flops() / 1e9


def feature_loss(features: dict[str, Tensor]) -> Tensor:
    """A scalar that depends on every feature map, so backward reaches the whole backbone."""
    return sum(f.float().pow(2).mean() for f in features.values())


def autocast(batch: Tensor, precision: str) -> torch.autocast:
    return torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def saved_activation_bytes(model: nn.Module, batch: Tensor, precision: str = "fp32") -> int:
    """Bytes autograd keeps for backward in one forward pass: each storage once, weights left out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # convolutions keep their weights too: not activations
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(batch, precision):
        loss = feature_loss(model(batch))
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: Tensor, precision: str = "fp32"
) -> None:
    optimizer.zero_grad(set_to_none=True)
    with autocast(batch, precision):
        loss = feature_loss(model(batch))
    loss.backward()
    optimizer.step()


def step_seconds(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: Tensor, steps: int, precision: str = "fp32"
) -> float:
    """Median wall time of a training step; CUDA is synchronised so the clock sees its work."""
    times = []
    for _ in range(steps):
        start = clock(batch.device)
        train_step(model, optimizer, batch, precision)
        times.append(clock(batch.device) - start)
    return statistics.median(times)


def describe(name: str, model: nn.Module, size: int) -> dict[str, Any]:
    """What a backbone is, independent of the batch size."""
    return {
        "backbone": name,
        "params_M": count_parameters(model) / 1e6,
        "width": model.channels[-1],
        "gflops": gflops_per_image(model, size),
        **structure(model),
    }


def profile(
    name: str,
    size: int,
    batch_sizes: list[int],
    warmup: int,
    steps: int,
    device: torch.device,
    layout: str = "nchw",
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """One row per batch size for the backbone `name`, randomly initialised with seed 0."""
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"unknown layout {layout!r}: nchw or nhwc")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}: fp32 or bf16")
    torch.manual_seed(0)
    model = build_backbone(name, weights=None, norm="bn", freeze_at=0, channels_last=layout == "nhwc")
    model = model.to(device)
    info = {**describe(name, model, size), "layout": layout, "precision": precision}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    rows = []
    for batch_size in batch_sizes:
        model.train()
        batch = torch.rand(batch_size, 3, size, size, device=device)
        activations = saved_activation_bytes(model, batch, precision)
        for _ in range(warmup):
            train_step(model, optimizer, batch, precision)
        with PeakMemory(device) as peak:
            train_step(model, optimizer, batch, precision)
        row = {
            **info,
            "batch": batch_size,
            "activations_MB": activations / 2**20,
            "peak_MB": peak.bytes / 2**20,
            "memory_measure": peak.name,
            "images_per_s": batch_size / step_seconds(model, optimizer, batch, steps, precision),
        }
        print(
            f"{name:20s} {layout} {precision} batch {batch_size:3d}: "
            f"{row['activations_MB']:8.1f} MB saved activations, "
            f"{row['peak_MB']:8.1f} MB {peak.name}, {row['images_per_s']:7.1f} img/s",
            flush=True,
        )
        rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    figure = figures.new_figure(10.0, 4.2)
    mem_ax, speed_ax = figure.subplots(1, 2)
    keys = list(dict.fromkeys((r["backbone"], r["layout"], r["precision"]) for r in rows))
    varied = [len({key[i] for key in keys}) > 1 for i in (1, 2)]
    for i, key in enumerate(keys):
        mine = [r for r in rows if (r["backbone"], r["layout"], r["precision"]) == key]
        settings = [part for part, shown in zip(key[1:], varied) if shown]
        name = f"{key[0]} ({', '.join(settings)})" if settings else key[0]
        colour, marker = figures.COLOURS[i % len(figures.COLOURS)], figures.MARKERS[i % len(figures.MARKERS)]
        batches, activations = [r["batch"] for r in mine], [r["activations_MB"] for r in mine]
        mem_ax.plot(batches, activations, "-", marker=marker, color=colour, label=name)
        largest = max(mine, key=lambda r: r["batch"])
        xy = (largest["gflops"], largest["images_per_s"])
        speed_ax.scatter(*xy, color=colour, marker=marker, s=60 + largest["params_M"] * 3)
        label = f"{name}\n{largest['params_M']:.1f}M"
        speed_ax.annotate(label, xy, fontsize=7, xytext=(4, 4), textcoords="offset points")
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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    out = args.out or Path("logs") / "profile_backbone" / time.strftime("%Y-%m-%d_%H-%M-%S")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    lists = (args.backbones, args.layouts, args.precisions)
    grid = [[part.strip() for part in arg.split(",")] for arg in lists]
    for name, layout, precision in itertools.product(*grid):
        rows.extend(profile(name, args.size, batch_sizes, args.warmup, args.steps, device, layout, precision))
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
