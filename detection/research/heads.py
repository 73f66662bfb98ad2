"""Light-Head R-CNN vs Faster R-CNN inference time on the same backbone, FPN and input.

Both detectors share one backbone (identical weights) and the same RPN settings, so the difference
is the R-CNN subnet. Prints, per image: the whole forward pass ("end to end"), the backbone alone,
everything after the backbone + FPN features ("head": RPN + RoI heads), and the RoI heads alone;
then the ratios Light-Head / Faster, the backbone's share of Faster R-CNN's time (which no head on
this backbone can go below) and the lowest end-to-end ratio any RoI subnet could reach (Faster
R-CNN's time without its RoI heads). Each time is the median of ``--runs`` passes with its
interquartile range, ``median [25th–75th percentile]``; the ratios and shares are of medians. No
timing is asserted anywhere: the figures depend on the machine.

With ``--checkpoints FASTER LIGHT_HEAD`` the two trained detectors (DetectionTask checkpoints, e.g.
of experiment=fashiondet_faster_rcnn and fashiondet_light_head_rcnn) are timed instead, rebuilt
from their specs at ``--size`` (so their proposal counts follow that input size) with their own
weights; ``--data-root`` times them on that COCO-layout set's first test images.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from detection.models import build_backbone, build_detector, build_from_spec
from detection.research.runs import split_images
from detection.research.timing import Spread, count_parameters, rcnn_timings

COUNTS = ("proposals/img",)  # rows of `rcnn_timings` that count, not time: no spread to show


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="none", help="backbone weights: none or imagenet")
    parser.add_argument("--size", type=int, default=512, help="input side in pixels (min_size = max_size)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--fpn-channels", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument(
        "--proposals",
        type=int,
        default=None,
        help="RPN proposals kept per image at test (default 1000; with --checkpoints the spec's)",
    )
    parser.add_argument(
        "--checkpoints", nargs=2, metavar=("FASTER", "LIGHT_HEAD"), help="time these trained detectors"
    )
    parser.add_argument("--data-root", help="time on this set's first --batch test images (default: random)")
    parser.add_argument("--variant", default="S", choices=("S", "L"), help="Light-Head thin-map variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def build_pair(args: argparse.Namespace) -> dict[str, nn.Module]:
    """Faster and Light-Head R-CNN in eval mode, on copies of one randomly drawn backbone."""
    torch.manual_seed(0)
    body = build_backbone(args.backbone, weights=args.weights)
    common = {
        "num_classes": args.num_classes,
        "neck": {"out_channels": args.fpn_channels, "extra_levels": "maxpool"},
        "min_size": args.size,
        "max_size": args.size,
        "rpn_post_nms_top_n_test": args.proposals or 1000,
    }
    return {
        "faster_rcnn": build_detector("faster_rcnn", backbone=copy.deepcopy(body), **common).eval(),
        "light_head_rcnn": build_detector(
            "light_head_rcnn", backbone=copy.deepcopy(body), variant=args.variant, **common
        ).eval(),
    }


def load_pair(args: argparse.Namespace) -> dict[str, nn.Module]:
    """The two trained detectors of `args.checkpoints`, rebuilt for `args.size` px inputs."""
    models = {}
    for name, path in zip(("faster_rcnn", "light_head_rcnn"), args.checkpoints, strict=True):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        spec = {**checkpoint["hyper_parameters"]["detector"], "min_size": args.size, "max_size": args.size}
        if args.proposals:
            spec["rpn_post_nms_top_n_test"] = args.proposals
        if spec.get("head") != name:
            raise ValueError(f"{path} holds a {spec.get('head')} detector; --checkpoints takes {name} here")
        model = build_from_spec(spec)
        state = {
            k.removeprefix("detector."): v
            for k, v in checkpoint["state_dict"].items()
            if k.startswith("detector.")
        }
        model.load_state_dict(state)
        models[name] = model.eval()
    return models


def report(
    args: argparse.Namespace, models: dict[str, nn.Module], results: dict[str, dict[str, Spread]]
) -> str:
    shape = f"input {args.size}x{args.size}, batch {args.batch}"
    if args.checkpoints:
        what = f"checkpoints {', '.join(args.checkpoints)} rebuilt at {shape}"
    else:
        what = (
            f"backbone {args.backbone} (weights {args.weights}), {shape}, FPN {args.fpn_channels} ch, "
            f"{args.num_classes} classes, Light-Head {args.variant}"
        )
    lines = [f"{what}, {args.threads} thread(s), median [interquartile range] of {args.runs} runs"]
    for name, model in models.items():
        head_params = count_parameters(model, ("rpn.", "roi_heads."))
        lines.append(f"  {name:16s} head parameters: {head_params / 1e6:.2f} M")
    lines.append(f"{'ms per image':18s}{'Faster R-CNN':>24s}{'Light-Head':>24s}{'ratio LH/F':>12s}")
    for key, fast in results["faster_rcnn"].items():
        light = results["light_head_rcnn"][key]
        ratio = light.median / fast.median if fast.median else float("nan")
        cells = [f"{t.median:.1f}" if key in COUNTS else t.text(".1f") for t in (fast, light)]
        lines.append(f"{key:18s}{cells[0]:>24s}{cells[1]:>24s}{ratio:12.2f}")
    # The backbone, FPN and RPN cost both detectors the same: even an RoI subnet that took no time
    # could not bring Light-Head below this share of Faster R-CNN's end-to-end time.
    faster = {key: spread.median for key, spread in results["faster_rcnn"].items()}
    floor = (faster["end to end"] - faster["RoI heads"]) / faster["end to end"]
    # No detector on this backbone, whatever its FPN, RPN or RoI subnet, runs faster than the
    # backbone alone: the bound on any head's claim to speed.
    share = faster["backbone"] / faster["end to end"]
    lines.append(f"backbone alone, share of Faster R-CNN's end to end (no head is below): {share:.2f}")
    lines.append(f"lowest reachable end-to-end ratio LH/F (an RoI subnet that costs nothing): {floor:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models = load_pair(args) if args.checkpoints else build_pair(args)
    torch.manual_seed(0)
    if args.data_root:
        images, _ = split_images(args.data_root, args.batch, "test")
    else:
        images = [torch.rand(3, args.size, args.size) for _ in range(args.batch)]
    results = {name: rcnn_timings(model, images, args.warmup, args.runs) for name, model in models.items()}
    print(report(args, models, results))
