"""Export detectors to ONNX and TorchScript, and check them against PyTorch on FashionDet images.

Each detector is wrapped to take one image [3, H, W] (float, [0, 1]) and return (boxes [N, 4],
scores [N], labels [N]); ONNX goes through the TorchScript-based exporter (`dynamo=False`, opset
17: the dynamo exporter needs onnxscript, which the `export` extra does not install) and runs in
onnxruntime; TorchScript is `torch.jit.trace` (the heads are not `torch.jit.script`-able). The
graph is traced at one input size (the first test image's); other images are resized to it.

Parity: on each test image the exported model's detections are matched to PyTorch's (same label,
nearest box within 1 px, in PyTorch score order); it holds when every matched pair agrees within --atol on box
coordinates (pixels) and on scores, and every unmatched detection ties with the score cut-off
(its score within --atol of the lowest kept score: which of two equal scores survives top-k is
arbitrary).

    python scripts/export.py --ckpt logs/fashiondet/runs/<run>/checkpoints/last.ckpt
    python scripts/export.py --heads fcos,retinanet,faster_rcnn,light_head_rcnn   # freshly built

Without --ckpt each head is built on the ImageNet EfficientNet-Lite0 (offline) and its final
classification layer redrawn (std 2/sqrt(fan-in), bias 0), so that scores spread as a trained
model's do and the check is not decided by ties. Writes <out>/<head>.onnx, <head>.torchscript.pt,
export.csv / .md and export.png (milliseconds per image, PyTorch against the exported runtimes).
"""

from __future__ import annotations

import os

# Spinning OpenMP threads starve each other on a shared, oversubscribed CPU; see profile_backbone.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from detection.research.runs import load_detector, split_images  # noqa: E402
from detection.research.tables import write_tables  # noqa: E402
from detection.research.timing import median_ms  # noqa: E402
from detection.training import figures  # noqa: E402

MATCH_PX = 1.0  # boxes further apart than this are different detections, not one with an error
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


class SingleImage(nn.Module):
    """One image in, three tensors out: the shape exporters and runtimes want."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.detector([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def exportable_copy(detector: nn.Module) -> SingleImage:
    """A copy without module extra state (the image mean/std, kept as attributes anyway).

    The TorchScript tracer reads the state dict and fails on the non-tensor extra state that our
    backbone and transform carry so checkpoints keep their normalisation.
    """
    detector = copy.deepcopy(detector).eval()
    for module in detector.modules():
        cls = type(module)
        if cls.get_extra_state is not nn.Module.get_extra_state:
            module.__class__ = type(
                cls.__name__,
                (cls,),
                {"get_extra_state": nn.Module.get_extra_state, "set_extra_state": nn.Module.set_extra_state},
            )
    return SingleImage(detector).eval()


def spread_scores(detector: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for name, module in detector.named_modules():
        if name.endswith(("cls_logits", "cls_score")) and hasattr(module, "weight"):
            with torch.no_grad():
                fan_in = module.weight[0].numel()  # logits of unit-scale spread, not saturated
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 2.0 / fan_in**0.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()  # drop the rare-foreground prior, which keeps every score low


def compare(ref: tuple[np.ndarray, ...], out: tuple[np.ndarray, ...], atol: float) -> dict[str, Any]:
    """Match one image's detections (same label, nearest box) in PyTorch score order; measure errors."""
    r_boxes, r_scores, r_labels = ref
    o_boxes, o_scores, o_labels = out
    used = np.zeros(len(o_boxes), dtype=bool)
    box_err = score_err = 0.0
    matched = 0
    unmatched_r = []
    for i in np.argsort(-r_scores, kind="stable"):
        # distance in pixels, so that degenerate (zero-area) boxes of an untrained head match too
        distance = np.abs(o_boxes - r_boxes[i]).max(axis=1) if len(o_boxes) else np.zeros(0)
        distance = np.where(~used & (o_labels == r_labels[i]), distance, np.inf)
        j = int(distance.argmin()) if len(distance) else -1
        if j >= 0 and distance[j] <= MATCH_PX:
            used[j] = True
            matched += 1
            box_err = max(box_err, float(distance[j]))
            score_err = max(score_err, float(abs(r_scores[i] - o_scores[j])))
        else:
            unmatched_r.append(float(r_scores[i]))
    floor = min([*r_scores.tolist(), *o_scores.tolist()], default=0.0)
    unmatched = unmatched_r + o_scores[~used].tolist()
    ties_only = all(s <= floor + atol for s in unmatched)
    return {
        "n_ref": len(r_boxes),
        "n_out": len(o_boxes),
        "matched": matched,
        "box_err": box_err,
        "score_err": score_err,
        "ok": ties_only and box_err <= atol and score_err <= atol,
    }


def check(
    name: str, run: Any, ref: list[tuple[np.ndarray, ...]], images: list[Tensor], atol: float
) -> dict[str, Any]:
    results = [compare(r, run(image), atol) for r, image in zip(ref, images)]
    return {
        "images": len(images),
        "detections": f"{sum(r['n_ref'] for r in results)} / {sum(r['n_out'] for r in results)}",
        "matched": sum(r["matched"] for r in results),
        "max_box_err": max(r["box_err"] for r in results),
        "max_score_err": max(r["score_err"] for r in results),
        "parity": (
            "vacuous: no detections"
            if not any(r["n_ref"] for r in results)
            else f"{'pass' if all(r['ok'] for r in results) else 'FAIL'} (atol {atol:g})"
        ),
        "ms": median_ms(lambda: run(images[0]), warmup=1, runs=5),
    }


def export_one(head: str, model: SingleImage, images: list[Tensor], out: Path, atol: float) -> list[dict]:
    with torch.no_grad():
        ref = [tuple(t.numpy() for t in model(image)) for image in images]
        torch_ms = median_ms(lambda: model(images[0]), warmup=1, runs=5)
    rows = []
    example = (images[0],)

    onnx_path = out / f"{head}.onnx"
    row: dict[str, Any] = {"head": head, "format": "ONNX (opset 17) + onnxruntime", "torch_ms": torch_ms}
    try:
        import onnxruntime as ort

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(onnx_path),
                dynamo=False,
                opset_version=17,
                input_names=["image"],
                output_names=["boxes", "scores", "labels"],
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        row.update(exported=f"yes: {onnx_path.name}")
        row.update(check(head, lambda x: tuple(session.run(None, {"image": x.numpy()})), ref, images, atol))
    except Exception as error:  # an operator without an ONNX mapping, e.g. ps_roi_align
        row.update(exported=f"no: {type(error).__name__}: {_first_line(error)}")
    rows.append(row)

    script_path = out / f"{head}.torchscript.pt"
    row = {"head": head, "format": "TorchScript (trace)", "torch_ms": torch_ms}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
            traced.save(str(script_path))
            loaded = torch.jit.load(str(script_path))
        row.update(exported=f"yes: {script_path.name}")
        with torch.no_grad():
            row.update(check(head, lambda x: tuple(t.numpy() for t in loaded(x)), ref, images, atol))
    except Exception as error:
        row.update(exported=f"no: {type(error).__name__}: {_first_line(error)}")
    rows.append(row)
    return rows


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:160]


def plot(rows: list[dict], path: Path) -> Path:
    figure = figures.new_figure(7.0, 3.8)
    ax = figure.add_subplot()
    heads = list(dict.fromkeys(r["head"] for r in rows))
    kinds = ["PyTorch", "ONNX (opset 17) + onnxruntime", "TorchScript (trace)"]
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        values = []
        for head in heads:
            mine = [r for r in rows if r["head"] == head]
            if kind == "PyTorch":
                values.append(mine[0]["torch_ms"])
            else:
                values.append(next((r.get("ms") or 0.0 for r in mine if r["format"] == kind), 0.0))
        ax.bar(
            [i + (k - 1) * width for i in range(len(heads))],
            values,
            width,
            label=kind,
            color=figures.COLOURS[k],
        )
    ax.set_xticks(range(len(heads)), labels=heads)
    ax.set(ylabel="ms per image (CPU, batch 1)", title="PyTorch against exported runtimes (0: not exported)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return figures.save(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, action="append", help="DetectionTask checkpoint (repeatable)")
    parser.add_argument("--heads", default="fcos,retinanet,faster_rcnn,light_head_rcnn")
    parser.add_argument("--data-root", type=Path, default=Path("data/fashiondet"), help="FashionDet folder")
    parser.add_argument("--images", type=int, default=8, help="test images compared")
    parser.add_argument("--atol", type=float, default=1e-3, help="tolerance on boxes (px) and scores")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = args.out or Path("logs") / "export" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    if not (args.data_root / "annotations" / "instances_test.json").is_file():
        from detection.data import make_fashiondet

        make_fashiondet(args.data_root)
    images, _ = split_images(args.data_root, args.images, "test")
    size = images[0].shape[-2:]
    images = [
        img if img.shape[-2:] == size else torch.nn.functional.interpolate(img[None], size=tuple(size))[0]
        for img in images
    ]

    detectors: list[tuple[str, nn.Module]] = []
    if args.ckpt:
        for path in args.ckpt:
            detector = load_detector(path)
            detectors.append((str(getattr(detector, "head_name", None) or _head_of(path)), detector))
    else:
        from detection.models import build_detector

        backbone = {"name": "efficientnet_lite0", "weights": "imagenet"}
        for head in args.heads.split(","):
            torch.manual_seed(0)
            detector = build_detector(head, 10, backbone, min_size=int(size[0]), max_size=int(size[1])).eval()
            spread_scores(detector)
            detectors.append((head, detector))

    rows = []
    for head, detector in detectors:
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


def _head_of(checkpoint: Path) -> str:
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    return str(hparams.get("detector", {}).get("head", checkpoint.stem))


if __name__ == "__main__":
    main()
