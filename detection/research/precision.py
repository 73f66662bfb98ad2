"""Mixed precision against float32 where coordinates are large: one checkpoint, mAP per precision.

On FashionDet's 128 px canvases a bfloat16 coordinate is off by at most 0.25 px, so float32 and
autocast agree there whatever the detector does. To see what a GPU user sees on COCO-sized inputs,
`--grid` x `--grid` test canvases are pasted into one mosaic (8 x 8 makes 1024 px) and the
detector's input size grows with it, so every item keeps the scale it was trained at (the
checkpoint's input size over the canvas size) while the coordinates the detector decodes reach
COCO's. Each mosaic's detections are cut back into its canvases (by box centre) and scored with
torchmetrics' COCO mAP, as the test split is; the caps on candidates and detections per image
grow by grid**2, so a mosaic keeps what its canvases would have kept.

Precisions: ``fp32`` (no autocast), ``bf16`` and ``fp16`` (``torch.autocast`` with that dtype, as
Lightning's ``bf16-mixed`` / ``16-mixed`` run evaluation).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from detection.data import DetectionDataModule
from detection.research.tables import write_tables
from detection.training import DetectionTask

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COLUMNS = [
    ("precision", "precision", ""),
    ("mAP", "mAP", ".4f"),
    ("mAP_50", "mAP_50", ".4f"),
    ("mAP_75", "mAP_75", ".4f"),
    ("delta_mAP_75", "mAP_75 - fp32", "+.4f"),
    ("detections", "detections", "d"),
    ("seconds", "seconds", ".1f"),
]
Canvas = tuple[Tensor, dict[str, Tensor]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="a DetectionTask checkpoint")
    parser.add_argument("--data-root", type=Path, default=Path("data/fashiondet"))
    parser.add_argument("--grid", type=int, default=8, help="canvases per mosaic side (8: 1024 px)")
    parser.add_argument("--images", type=int, default=448, help="test canvases used (whole mosaics)")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def mosaic(canvases: Sequence[Canvas], grid: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """`canvases` pasted row by row into one grid x grid image; returns it and each canvas's origin (x, y)."""
    height = max(image.shape[-2] for image, _ in canvases)
    width = max(image.shape[-1] for image, _ in canvases)
    out = torch.zeros(3, grid * height, grid * width)
    origins = []
    for index, (image, _) in enumerate(canvases):
        y, x = (index // grid) * height, (index % grid) * width
        out[:, y : y + image.shape[-2], x : x + image.shape[-1]] = image
        origins.append((x, y))
    return out, origins


def split_detections(
    detections: dict[str, Tensor], origins: Sequence[tuple[int, int]], cell: tuple[int, int]
) -> list[dict[str, Tensor]]:
    """A mosaic's detections, each given to the canvas that holds its box centre, in its coordinates."""
    boxes = detections["boxes"]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    height, width = cell
    out = []
    for x, y in origins:
        inside = (
            (centre[:, 0] >= x)
            & (centre[:, 0] < x + width)
            & (centre[:, 1] >= y)
            & (centre[:, 1] < y + height)
        )
        shift = torch.tensor([x, y, x, y], dtype=boxes.dtype)
        out.append(
            {
                "boxes": boxes[inside] - shift,
                "scores": detections["scores"][inside],
                "labels": detections["labels"][inside],
            }
        )
    return out


@contextlib.contextmanager
def input_scaled(detector: nn.Module, factor: int) -> Iterator[None]:
    """`detector` with its input size times `factor` and its per-image caps times factor**2."""
    transform = detector.transform
    caps = [
        (owner, name)
        for owner in (detector, getattr(detector, "roi_heads", None), getattr(detector, "rpn", None))
        if owner is not None
        for name in ("detections_per_img", "topk_candidates", "_pre_nms_top_n", "_post_nms_top_n")
        if hasattr(owner, name)
    ]
    saved = (transform.min_size, transform.max_size, [(o, n, getattr(o, n)) for o, n in caps])
    transform.min_size = tuple(int(s) * factor for s in transform.min_size)
    transform.max_size = int(transform.max_size) * factor
    for owner, name in caps:
        value = getattr(owner, name)
        scaled = (
            {k: v * factor**2 for k, v in value.items()} if isinstance(value, dict) else value * factor**2
        )
        setattr(owner, name, scaled)
    try:
        yield
    finally:
        transform.min_size, transform.max_size = saved[0], saved[1]
        for owner, name, value in saved[2]:
            setattr(owner, name, value)


def evaluate(
    detector: nn.Module, canvases: Sequence[Canvas], grid: int, dtype: torch.dtype | None
) -> dict[str, Any]:
    """COCO mAP of `detector` on `canvases` pasted into mosaics, under autocast to `dtype` (None: none)."""
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
    metric.warn_on_many_detections = False  # a canvas may get over 100: COCO keeps its best 100, as in a test
    per_mosaic = grid * grid
    cell = (max(i.shape[-2] for i, _ in canvases), max(i.shape[-1] for i, _ in canvases))
    detections = 0
    started = time.perf_counter()
    for start in range(0, len(canvases) - per_mosaic + 1, per_mosaic):
        group = canvases[start : start + per_mosaic]
        image, origins = mosaic(group, grid)
        autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.no_grad(), autocast, input_scaled(detector, grid):
            (found,) = detector([image])
        detections += len(found["boxes"])
        metric.update(
            [
                {k: v.float() if v.is_floating_point() else v for k, v in d.items()}
                for d in split_detections(found, origins, cell)
            ],
            [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in group],
        )
    result = metric.compute()
    return {
        "mAP": float(result["map"]),
        "mAP_50": float(result["map_50"]),
        "mAP_75": float(result["map_75"]),
        "detections": detections,
        "seconds": time.perf_counter() - started,
    }


def test_canvases(data_root: Path, count: int) -> list[Canvas]:
    data = DetectionDataModule(root=data_root, print_summary=False, cache_images=False)
    data.setup("test")
    dataset = data.datasets["test"]
    return [dataset[i] for i in range(min(count, len(dataset)))]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    task = DetectionTask.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=True)
    detector = task.detector.eval()
    canvases = test_canvases(args.data_root, args.images)
    if len(canvases) < args.grid**2:
        raise ValueError(f"{len(canvases)} test canvases cannot fill one {args.grid} x {args.grid} mosaic")
    rows = []
    for name in args.precisions.split(","):
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r}; choose from {sorted(PRECISIONS)}")
        rows.append({"precision": name, **evaluate(detector, canvases, args.grid, PRECISIONS[name])})
        print(f"{name}: mAP_75 {rows[-1]['mAP_75']:.4f} ({rows[-1]['seconds']:.0f} s)", flush=True)
    reference = next((r["mAP_75"] for r in rows if r["precision"] == "fp32"), None)
    for row in rows:
        row["delta_mAP_75"] = None if reference is None else row["mAP_75"] - reference
    mosaics = len(canvases) // args.grid**2
    side = args.grid * canvases[0][0].shape[-1]
    note = (
        f"{args.ckpt}: {mosaics} mosaics of {args.grid} x {args.grid} test canvases ({side} px), "
        f"detector input x{args.grid}; {args.threads} thread(s)."
    )
    out = args.out or Path("logs") / "precision" / time.strftime("%Y-%m-%d_%H-%M-%S")
    _, md_path = write_tables(rows, COLUMNS, out / "precision_check", note)
    print(md_path.read_text())
    return rows
