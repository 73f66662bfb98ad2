"""Export detectors to ONNX and TorchScript, and check them against PyTorch on FashionDet images.

Each detector is wrapped to take one image [3, H, W] (float, [0, 1]) and return (boxes [N, 4],
scores [N], labels [N]); ONNX goes through the TorchScript-based exporter (`dynamo=False`, opset
17: the dynamo exporter needs onnxscript, which the `export` extra does not install) and runs in
onnxruntime; TorchScript is `torch.jit.trace` (the heads are not `torch.jit.script`-able). The
graph is traced at one input size (the first test image's); other images are resized to it.
Parity is judged as detection.research.export_check describes.

Without --ckpt each head is built on the ImageNet EfficientNet-Lite0 (offline) and its final
classification layer redrawn (std 2/sqrt(fan-in), bias 0), so that scores spread as a trained
model's do and the check is not decided by ties. Writes <out>/<head>.onnx, <head>.torchscript.pt,
export.csv / .md and export.png (milliseconds per image, PyTorch against the exported runtimes).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detection.models.heads import head_names
from detection.research.export_check import Detections, check
from detection.research.runs import load_detector, split_images
from detection.research.tables import write_tables
from detection.research.timing import median_ms
from detection.training import figures

ONNX, TORCHSCRIPT = "ONNX (opset 17) + onnxruntime", "TorchScript (trace)"
COLUMNS = [
    ("head", "head", ""),
    ("format", "format", ""),
    ("exported", "exported", ""),
    ("images", "images", ""),
    ("detections", "detections (PyTorch / exported)", ""),
    ("matched", "matched", ""),
    ("max_box_err", "max abs box error (px)", ".2e"),
    ("max_score_err", "max abs score error", ".2e"),
    ("parity", "parity", ""),
    ("ms", "ms / image", ".1f"),
    ("torch_ms", "PyTorch ms / image", ".1f"),
]
Runtime = Callable[[Tensor], Detections]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, action="append", help="DetectionTask checkpoint (repeatable)")
    parser.add_argument(
        "--heads", default=",".join(head_names()), help="comma-separated (default: every registered head)"
    )
    parser.add_argument("--data-root", type=Path, default=Path("data/fashiondet"), help="FashionDet folder")
    parser.add_argument("--images", type=int, default=8, help="test images compared")
    parser.add_argument("--atol", type=float, default=1e-3, help="tolerance on boxes (px) and scores")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


class SingleImage(nn.Module):
    """One image in, three tensors out: the shape exporters and runtimes want."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.detector([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def exportable_copy(detector: nn.Module) -> SingleImage:
    """A copy without module extra state (the image mean/std, kept as attributes anyway), prepared by
    the head's export hook (``prepare_export``: Light-Head's pool then uses ops that ONNX maps).

    The TorchScript tracer reads the state dict and fails on the non-tensor extra state that our
    backbone and transform carry so checkpoints keep their normalisation.
    """
    detector = copy.deepcopy(detector).eval()
    plain = {"get_extra_state": nn.Module.get_extra_state, "set_extra_state": nn.Module.set_extra_state}
    detector.prepare_export()
    for module in detector.modules():
        cls = type(module)
        if cls.get_extra_state is not nn.Module.get_extra_state:
            module.__class__ = type(cls.__name__, (cls,), plain)
    return SingleImage(detector).eval()


@torch.no_grad()
def spread_scores(detector: nn.Module, seed: int = 0) -> None:
    """Redraw the final classification layers so an untrained head's scores spread, not tie."""
    generator = torch.Generator().manual_seed(seed)
    for name, module in detector.named_modules():
        if name.endswith(("cls_logits", "cls_score")) and hasattr(module, "weight"):
            fan_in = module.weight[0].numel()  # logits of unit-scale spread, not saturated
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 2.0 / fan_in**0.5)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()  # drop the rare-foreground prior, which keeps every score low


def to_onnx(model: SingleImage, example: Tensor, stem: Path) -> tuple[Path, Runtime]:
    import onnxruntime as ort

    path = stem.parent / f"{stem.name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["boxes", "scores", "labels"],
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return path, lambda x: tuple(session.run(None, {"image": x.numpy()}))


def to_torchscript(model: SingleImage, example: Tensor, stem: Path) -> tuple[Path, Runtime]:
    path = stem.parent / f"{stem.name}.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, (example,), check_trace=False).save(str(path))
    loaded = torch.jit.load(str(path))
    return path, lambda x: tuple(t.numpy() for t in loaded(x))


EXPORTERS = {ONNX: to_onnx, TORCHSCRIPT: to_torchscript}


@torch.no_grad()
def export_one(
    head: str, model: SingleImage, images: list[Tensor], out: Path, atol: float
) -> list[dict[str, Any]]:
    """One row per format: exported or why not, and parity against PyTorch on `images`."""
    ref = [tuple(t.numpy() for t in model(image)) for image in images]
    torch_ms = median_ms(lambda: model(images[0]), warmup=1, runs=5)
    rows = []
    for kind, exporter in EXPORTERS.items():
        row: dict[str, Any] = {"head": head, "format": kind, "torch_ms": torch_ms}
        try:
            path, run = exporter(model, images[0], out / head)
            row.update(exported=f"yes: {path.name}", **check(run, ref, images, atol))
        except Exception as error:  # e.g. an operator without an ONNX mapping
            row.update(exported=f"no: {type(error).__name__}: {_first_line(error)}")
        rows.append(row)
    return rows


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:160]


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    figure = figures.new_figure(7.0, 3.8)
    ax = figure.add_subplot()
    heads = list(dict.fromkeys(r["head"] for r in rows))
    kinds = ["PyTorch", ONNX, TORCHSCRIPT]
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        values = []
        for head in heads:
            mine = [r for r in rows if r["head"] == head]
            if kind == "PyTorch":
                values.append(mine[0]["torch_ms"])
            else:
                values.append(next((r.get("ms") or 0.0 for r in mine if r["format"] == kind), 0.0))
        xs = [i + (k - 1) * width for i in range(len(heads))]
        ax.bar(xs, values, width, label=kind, color=figures.COLOURS[k])
    ax.set_xticks(range(len(heads)), labels=heads)
    ax.set(ylabel="ms per image (CPU, batch 1)", title="PyTorch against exported runtimes (0: not exported)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return figures.save(figure, path)


def fashiondet_images(data_root: Path, count: int) -> list[Tensor]:
    """The first `count` FashionDet test images (written when missing), all at the first one's size."""
    if not (data_root / "annotations" / "instances_test.json").is_file():
        from detection.data import make_fashiondet

        make_fashiondet(data_root)
    images, _ = split_images(data_root, count, "test")
    size = tuple(images[0].shape[-2:])
    resize = torch.nn.functional.interpolate
    return [img if img.shape[-2:] == size else resize(img[None], size=size)[0] for img in images]


def head_of(checkpoint: Path) -> str:
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    return str(hparams.get("detector", {}).get("head", checkpoint.stem))


def detectors(args: argparse.Namespace, size: tuple[int, int]) -> list[tuple[str, nn.Module]]:
    """(head, detector) from each --ckpt, else each of --heads freshly built with spread scores."""
    if args.ckpt:
        return [(head_of(path), load_detector(path)) for path in args.ckpt]
    from detection.models import build_detector

    built = []
    backbone = {"name": "efficientnet_lite0", "weights": "imagenet"}
    for head in args.heads.split(","):
        torch.manual_seed(0)
        detector = build_detector(head, 10, backbone, min_size=size[0], max_size=size[1]).eval()
        spread_scores(detector)
        built.append((head, detector))
    return built


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or Path("logs") / "export" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    images = fashiondet_images(args.data_root, args.images)
    size = (int(images[0].shape[-2]), int(images[0].shape[-1]))
    rows = []
    for head, detector in detectors(args, size):
        print(f"exporting {head} ...", flush=True)
        rows.extend(export_one(head, exportable_copy(detector), images, out, args.atol))
    source = (
        "checkpoint(s) " + ", ".join(str(p) for p in args.ckpt) if args.ckpt else "freshly built detectors"
    )
    note = (
        f"{source}; {len(images)} FashionDet test images from {args.data_root} at {size[0]}x{size[1]}; "
        f"{args.threads} thread(s). Parity: matched pairs within atol on boxes (px) and scores, "
        "unmatched detections only at the score cut-off."
    )
    csv_path, md_path = write_tables(rows, COLUMNS, out / "export", note)
    png = plot(rows, out / "export.png")
    print(md_path.read_text())
    print(f"Wrote {csv_path}, {md_path}, {png}")
