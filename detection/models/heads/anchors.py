"""Anchors: their sizes (from the strides, given, or derived from the training boxes) and how well
they cover a data set's boxes.

Sizes: ``anchor_sizes=None`` gives ``anchor_scale x stride x 2**(i / scales_per_octave)`` on each
level; a list gives one list of sizes per level; ``"auto"`` is a request that the training pipeline
resolves with `derive_anchor_sizes` from the training boxes before the detector is built (the
resolved lists are then what the run's config and the checkpoint hold, so a reload rebuilds the
same anchors).

Coverage (`anchor_coverage`): the share of boxes whose best anchor reaches the matcher's positive
IoU threshold, computed with the detector's own anchor generator on the detector's input size;
with ATSS (`atss_coverage`), the share of boxes it gives at least one positive anchor.
For point-based FCOS (`fcos_coverage`): the share of boxes that some location of some level
accepts under torchvision's FCOS assignment (centre sampling and the per-level size range).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import box_iou

from detection.models.heads.atss import atss_assign

AUTO = "auto"
COVERAGE_KNOB = "model.detector.anchor_sizes (auto derives them from the data) or model.detector.anchor_scale"
# Below this share of covered boxes, a run warns and names the knob to change.
COVERAGE_WARNING = 0.9


def anchor_sizes_for(
    strides: Sequence[int],
    anchor_scale: float,
    scales_per_octave: int,
    anchor_sizes: Sequence[Sequence[float]] | str | None,
) -> list[list[float]]:
    """One list of anchor sides per level: given (`anchor_sizes`) or ``anchor_scale x stride``."""
    if anchor_sizes is None:
        octave = [2 ** (i / int(scales_per_octave)) for i in range(int(scales_per_octave))]
        return [[float(anchor_scale) * s * f for f in octave] for s in strides]
    if isinstance(anchor_sizes, str):
        raise ValueError(
            f"anchor_sizes={anchor_sizes!r} must be resolved from the training boxes before the detector "
            "is built (the training pipeline does it); build_detector takes explicit sizes per level"
        )
    sizes = [[float(v) for v in level] for level in anchor_sizes]
    if len(sizes) != len(strides) or any(not level or min(level) <= 0 for level in sizes):
        raise ValueError(
            f"anchor_sizes needs one non-empty list of positive sizes per level ({len(strides)} levels, "
            f"strides {list(strides)}), got {anchor_sizes}"
        )
    return sizes


class LevelCountingAnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator that remembers how many anchors per image each level made in
    its last call (`num_anchors_per_level`): ATSS picks its candidates level by level.

    Its anchors are float32 whatever the feature maps' dtype: torchvision's takes the dtype of the
    maps, so under autocast it made bfloat16 anchors (centres rounded to 8 px at 1536 px) and
    rounded its own cell anchors for good.
    """

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        super().set_cell_anchors(torch.float32, device)

    num_anchors_per_level: list[int]

    def forward(self, image_list: Any, feature_maps: list[Tensor]) -> list[Tensor]:
        per_location = self.num_anchors_per_location()
        self.num_anchors_per_level = [
            int(f.shape[-2] * f.shape[-1]) * n for f, n in zip(feature_maps, per_location, strict=True)
        ]
        return super().forward(image_list, feature_maps)


def anchor_generator(
    strides: Sequence[int],
    anchor_scale: float,
    scales_per_octave: int = 1,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    anchor_sizes: Sequence[Sequence[float]] | str | None = None,
) -> AnchorGenerator:
    """torchvision's AnchorGenerator with `anchor_sizes_for`'s sizes and `aspect_ratios` everywhere."""
    sizes = anchor_sizes_for(strides, anchor_scale, scales_per_octave, anchor_sizes)
    if len({len(level) for level in sizes}) != 1:
        raise ValueError(f"every level needs the same number of anchor sizes, got {sizes}")
    ratios = (tuple(float(r) for r in aspect_ratios),) * len(strides)
    return LevelCountingAnchorGenerator(tuple(tuple(level) for level in sizes), ratios)


def derive_anchor_sizes(
    box_sides: Sequence[float],
    num_levels: int,
    sizes_per_level: int,
    quantiles: tuple[float, float] = (0.05, 0.95),
) -> list[list[float]]:
    """Anchor sides for `num_levels` levels from the boxes' sides (``sqrt(w * h)``, input pixels).

    All ``num_levels x sizes_per_level`` sizes are spaced geometrically from the `quantiles` of the
    sides, smallest on the finest level, so the anchors span the sizes the data has.
    """
    sides = torch.as_tensor([float(s) for s in box_sides if s > 0], dtype=torch.float64)
    if sides.numel() == 0:
        raise ValueError("anchor_sizes=auto needs training boxes, and the training split has none")
    low, high = (float(torch.quantile(sides, q)) for q in quantiles)
    count = int(num_levels) * int(sizes_per_level)
    if count == 1 or high <= low:
        flat = [low * 2 ** (i / max(count - 1, 1)) for i in range(count)] if high <= low else [low]
    else:
        flat = [low * (high / low) ** (i / (count - 1)) for i in range(count)]
    flat = [round(s, 2) for s in flat]
    return [flat[k * sizes_per_level : (k + 1) * sizes_per_level] for k in range(int(num_levels))]


@dataclass(frozen=True)
class Coverage:
    """How many of `boxes` an anchor-based part (or FCOS's assignment) can match as positives."""

    part: str
    covered: int
    boxes: int
    rule: str  # what makes a box covered, in words
    knob: str

    @property
    def share(self) -> float:
        return self.covered / self.boxes if self.boxes else 1.0

    def line(self) -> str:
        return f"anchor coverage, {self.part}: {self.share:.1%} of {self.boxes} training boxes ({self.rule})"

    def warning(self) -> str | None:
        if self.share >= COVERAGE_WARNING:
            return None
        return (
            f"{self.part}: only {self.share:.1%} of the training boxes can be matched as positives "
            f"(below {COVERAGE_WARNING:.0%}); change {self.knob}"
        )


def _grid_anchors(
    generator: AnchorGenerator, strides: Sequence[int], height: int, width: int
) -> tuple[Tensor, list[int]]:
    """All anchors [A, 4] of `generator` on a padded input of `height` x `width`, level by level,
    and how many of them each level has."""
    grid_sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in strides]
    cell = [c.float() for c in generator.cell_anchors]
    shifts = []
    for (rows, cols), stride, base in zip(grid_sizes, strides, cell, strict=True):
        ys, xs = torch.meshgrid(
            torch.arange(rows, dtype=torch.float32) * stride,
            torch.arange(cols, dtype=torch.float32) * stride,
            indexing="ij",
        )
        offsets = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
        shifts.append((offsets + base.view(1, -1, 4)).reshape(-1, 4))
    return torch.cat(shifts), [len(level) for level in shifts]


def anchor_coverage(
    part: str,
    generator: AnchorGenerator,
    strides: Sequence[int],
    boxes: Sequence[Tensor],
    input_sizes: Sequence[tuple[int, int]],
    fg_iou_thresh: float,
    knob: str,
) -> Coverage:
    """Share of `boxes` (per image, xyxy in input pixels) whose best anchor has IoU >= `fg_iou_thresh`."""
    cache: dict[tuple[int, int], Tensor] = {}
    covered = total = 0
    for image_boxes, (height, width) in zip(boxes, input_sizes, strict=True):
        if len(image_boxes) == 0:
            continue
        if (height, width) not in cache:
            cache[(height, width)] = _grid_anchors(generator, strides, height, width)[0]
        best = box_iou(image_boxes.float(), cache[(height, width)]).max(dim=1).values
        covered += int((best >= fg_iou_thresh).sum())
        total += len(image_boxes)
    return Coverage(part, covered, total, f"best anchor IoU >= {float(fg_iou_thresh):g}", knob)


def atss_coverage(
    part: str,
    generator: AnchorGenerator,
    strides: Sequence[int],
    boxes: Sequence[Tensor],
    input_sizes: Sequence[tuple[int, int]],
    topk: int,
    knob: str,
) -> Coverage:
    """Share of `boxes` that ATSS (`detection.models.heads.atss`) gives at least one positive anchor."""
    cache: dict[tuple[int, int], tuple[Tensor, list[int]]] = {}
    covered = total = 0
    for image_boxes, (height, width) in zip(boxes, input_sizes, strict=True):
        if len(image_boxes) == 0:
            continue
        if (height, width) not in cache:
            cache[(height, width)] = _grid_anchors(generator, strides, height, width)
        anchors, counts = cache[(height, width)]
        matched = atss_assign(image_boxes.float(), anchors, counts, topk)
        covered += int(matched[matched >= 0].unique().numel())
        total += len(image_boxes)
    return Coverage(part, covered, total, "ATSS gives them a positive anchor", knob)


def fcos_coverage(
    strides: Sequence[int],
    center_sampling_radius: float,
    boxes: Sequence[Tensor],
    input_sizes: Sequence[tuple[int, int]],
) -> Coverage:
    """Share of `boxes` that torchvision's FCOS assigns to at least one location.

    Locations sit at multiples of the stride (torchvision's anchor centres). A location of level
    stride s (anchor size s) takes a box when it lies inside the box, within
    ``center_sampling_radius x s`` of its centre (each axis), and the largest distance to the box's
    sides is in (4 s, 8 s); the finest level has no lower bound and the coarsest no upper one.
    """
    covered = total = 0
    for image_boxes, (height, width) in zip(boxes, input_sizes, strict=True):
        if len(image_boxes) == 0:
            continue
        accepted = torch.zeros(len(image_boxes), dtype=torch.bool)
        centres = (image_boxes[:, :2] + image_boxes[:, 2:]) / 2
        for level, stride in enumerate(strides):
            ys, xs = torch.meshgrid(
                torch.arange(math.ceil(height / stride)) * stride,
                torch.arange(math.ceil(width / stride)) * stride,
                indexing="ij",
            )
            points = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float()  # [P, 2]
            near = (points[None] - centres[:, None]).abs().max(dim=2).values < center_sampling_radius * stride
            ltrb = torch.cat(
                [points[None] - image_boxes[:, None, :2], image_boxes[:, None, 2:] - points[None]], 2
            )
            inside = ltrb.min(dim=2).values > 0
            reach = ltrb.max(dim=2).values
            lower = 0.0 if level == 0 else 4.0 * stride
            upper = math.inf if level == len(strides) - 1 else 8.0 * stride
            accepted |= (near & inside & (reach > lower) & (reach < upper)).any(dim=1)
        covered += int(accepted.sum())
        total += len(image_boxes)
    knob = "model.detector.center_sampling_radius"
    return Coverage("FCOS level assignment", covered, total, "a level accepts them", knob)


def to_input_pixels(
    boxes: Tensor, image_size: tuple[int, int], min_size: int, max_size: int
) -> tuple[Tensor, tuple[int, int]]:
    """Boxes and image size as the detector sees them after its resize (torchvision's rule: the
    short side to `min_size`, the long side at most `max_size`)."""
    height, width = image_size
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return boxes * scale, (round(height * scale), round(width * scale))
