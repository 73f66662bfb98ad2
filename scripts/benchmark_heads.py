"""Light-Head R-CNN vs Faster R-CNN inference time on the same backbone, FPN and input.

Both detectors share one backbone (identical weights) and the same RPN settings, so the difference
is the R-CNN subnet. Prints, per image: the whole forward pass ("end to end"), everything after
the backbone + FPN features ("head": RPN + RoI heads), and the RoI heads alone; then the ratios
Light-Head / Faster. No timing is asserted anywhere: the figures depend on the machine.

    python scripts/benchmark_heads.py                      # efficientnet_lite0, 512 px, 1 thread
    python scripts/benchmark_heads.py --size 128 --proposals 300 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

from detection.models import build_backbone, build_detector


def _median_ms(fn: Callable[[], object], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _timings(model: torch.nn.Module, images: list[torch.Tensor], warmup: int, runs: int) -> dict[str, float]:
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)

    def head() -> None:
        props, _ = model.rpn(batch, features)
        model.roi_heads(features, props, batch.image_sizes)

    n = len(images)
    return {
        "end to end": _median_ms(lambda: model(images), warmup, runs) / n,
        "head (RPN + RoI)": _median_ms(head, warmup, runs) / n,
        "RoI heads": _median_ms(lambda: model.roi_heads(features, proposals, batch.image_sizes), warmup, runs)
        / n,
        "proposals/img": sum(len(p) for p in proposals) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="none", help="backbone weights: none or imagenet")
    parser.add_argument("--size", type=int, default=512, help="input side in pixels (min_size = max_size)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--fpn-channels", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--proposals", type=int, default=1000, help="RPN proposals kept per image at test")
    parser.add_argument("--variant", default="S", choices=("S", "L"), help="Light-Head thin-map variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    body = build_backbone(args.backbone, weights=args.weights)
    common = {
        "num_classes": args.num_classes,
        "neck": {"out_channels": args.fpn_channels, "extra_levels": "maxpool"},
        "min_size": args.size,
        "max_size": args.size,
        "rpn_post_nms_top_n_test": args.proposals,
    }
    models = {
        "faster_rcnn": build_detector("faster_rcnn", backbone=copy.deepcopy(body), **common),
        "light_head_rcnn": build_detector(
            "light_head_rcnn", backbone=copy.deepcopy(body), variant=args.variant, **common
        ),
    }
    images = [torch.rand(3, args.size, args.size) for _ in range(args.batch)]
    results = {}
    with torch.no_grad():
        for name, model in models.items():
            results[name] = _timings(model.eval(), images, args.warmup, args.runs)

    print(
        f"backbone {args.backbone} (weights {args.weights}), input {args.size}x{args.size}, "
        f"batch {args.batch}, "
        f"FPN {args.fpn_channels} ch, {args.num_classes} classes, Light-Head {args.variant}, "
        f"{args.threads} thread(s), median of {args.runs} runs"
    )
    for name, model in models.items():
        head_params = sum(
            p.numel() for n, p in model.named_parameters() if n.startswith(("rpn.", "roi_heads."))
        )
        print(f"  {name:16s} head parameters: {head_params / 1e6:.2f} M")
    keys = list(results["faster_rcnn"])
    print(f"{'ms per image':18s}{'Faster R-CNN':>14s}{'Light-Head':>14s}{'ratio LH/F':>12s}")
    for key in keys:
        fast, light = results["faster_rcnn"][key], results["light_head_rcnn"][key]
        ratio = light / fast if fast else float("nan")
        print(f"{key:18s}{fast:14.1f}{light:14.1f}{ratio:12.2f}")


if __name__ == "__main__":
    main()
