"""Training and inference images/s and peak memory of the main job's detector at each precision.

The main job's model (conf/model/fcos.yaml: FCOS + EfficientNet-Lite0, 128 px canvases upsampled to
192 px inside the detector, batch 16), built from the project's config with random weights, is
trained for ``--steps`` optimiser steps (AdamW) and run in inference on random canvases at
``32-true`` (float32), ``16-mixed`` (float16 autocast, gradients scaled) and ``bf16-mixed``
(bfloat16 autocast); then Light-Head R-CNN and Faster R-CNN end to end (inference) at ``--rcnn-size``
px. Clocks wait for the GPU (`timing.clock`); peak memory is ``torch.cuda.max_memory_allocated``
above the model's own (on the CPU: the growth of peak resident memory). Prints one table; no figure
is asserted anywhere.

    python scripts/gpu_throughput.py                                # CUDA if present
    python scripts/gpu_throughput.py --device cpu --steps 2 --size 64 --batch 2 --rcnn-size 128
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import Tensor, nn

from detection.models import build_from_spec
from detection.research.memory import PeakMemory
from detection.research.timing import clock

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf")
PRECISIONS = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precisions", default="32-true,16-mixed,bf16-mixed")
    parser.add_argument("--size", type=int, default=None, help="detector input side (default: the config's)")
    parser.add_argument("--canvas", type=int, default=128, help="side of the random input canvases")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rcnn-size", type=int, default=512, help="0: skip the R-CNN comparison")
    parser.add_argument("--rcnn-batch", type=int, default=4)
    parser.add_argument("--channels-last", action="store_true", help="the whole detector in NHWC")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone + FPN")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    return parser.parse_args(argv)


def detector_spec(model: str, size: int | None = None) -> dict[str, Any]:
    """The detector spec of ``model=<model>`` (random backbone, FashionDet's 10 classes)."""
    overrides = [f"model={model}", "model.backbone.weights=null", "data.num_classes=10"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    spec = OmegaConf.to_container(cfg.model.detector, resolve=True)
    if spec.get("anchor_sizes") == "auto":
        spec["anchor_sizes"] = None
    if size:
        spec["min_size"] = spec["max_size"] = int(size)
    return spec


def _batch(n: int, side: int, device: torch.device) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, side, side, generator=generator).to(device) for _ in range(n)]
    targets = []
    for _ in range(n):
        xy = torch.rand(4, 2, generator=generator) * side * 0.6
        wh = 16 + torch.rand(4, 2, generator=generator) * side * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=side)], dim=1)
        labels = torch.randint(0, 10, (4,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


@contextlib.contextmanager
def _autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def _rate(images: int, seconds: float) -> float:
    return round(images / seconds, 1) if seconds > 0 else float("nan")


def train_throughput(
    model: nn.Module,
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
    precision: str,
    steps: int,
    warmup: int,
) -> dict[str, float]:
    """Training images/s over `steps` AdamW steps and the peak memory they take."""
    device = images[0].device
    dtype = PRECISIONS[precision]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16 and device.type == "cuda")
    model.train()

    def step() -> None:
        with _autocast(device, dtype):
            losses = model(images, targets)
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    with PeakMemory(device) as memory:
        start = clock(device)
        for _ in range(steps):
            step()
        seconds = clock(device) - start
    return {
        "train img/s": _rate(steps * len(images), seconds),
        "train peak MB": round(memory.bytes / 2**20, 1),
    }


@torch.no_grad()
def inference_throughput(
    model: nn.Module, images: list[Tensor], precision: str, steps: int, warmup: int
) -> dict[str, float]:
    """Inference images/s (the whole forward: transform, network, decoding, NMS) and peak memory."""
    device = images[0].device
    model.eval()
    for _ in range(warmup):
        with _autocast(device, PRECISIONS[precision]):
            model(images)
    with PeakMemory(device) as memory:
        start = clock(device)
        for _ in range(steps):
            with _autocast(device, PRECISIONS[precision]):
                model(images)
        seconds = clock(device) - start
    return {
        "infer img/s": _rate(steps * len(images), seconds),
        "infer peak MB": round(memory.bytes / 2**20, 1),
    }


def _build(spec: dict[str, Any], device: torch.device, args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(0)
    model = build_from_spec(spec).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.backbone.compile()
    return model


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (model, precision)."""
    device = _device(args.device)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}; choose from {', '.join(PRECISIONS)}")
    rows = []
    spec = detector_spec("fcos", args.size)
    images, targets = _batch(args.batch, args.canvas, device)
    for precision in precisions:
        model = _build(spec, device, args)
        row = {"model": f"fcos {spec['backbone']['name']} {spec['min_size']} px", "precision": precision}
        row.update(train_throughput(model, images, targets, precision, args.steps, args.warmup))
        row.update(inference_throughput(model, images, precision, args.steps, args.warmup))
        rows.append(row)
        del model
    if args.rcnn_size:
        images, _ = _batch(args.rcnn_batch, args.rcnn_size, device)
        for head in ("faster_rcnn", "light_head_rcnn"):
            spec = detector_spec(head, args.rcnn_size)
            for precision in precisions:
                model = _build(spec, device, args)
                row = {
                    "model": f"{head} {spec['backbone']['name']} {args.rcnn_size} px",
                    "precision": precision,
                }
                row.update(inference_throughput(model, images, precision, args.steps, args.warmup))
                rows.append(row)
                del model
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = ["model", "precision", "train img/s", "train peak MB", "infer img/s", "infer peak MB"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as trainer=gpu runs
        torch.set_float32_matmul_precision("high")
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
    rows = measure(args)
    print(f"Throughput on {where}: batch {args.batch} (R-CNNs {args.rcnn_batch}), {args.steps} timed steps")
    print(format_table(rows))
    return rows
