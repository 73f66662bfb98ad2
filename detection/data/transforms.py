"""Train and eval pipelines on torchvision.transforms.v2 (tv_tensors keep boxes in step with pixels).

Both take (image uint8 [3,H,W], target {"boxes", "labels", "image_id"}) and return the image as
float32 in [0, 1]. Every knob is a keyword argument so a Hydra config can set it
(`data.train_transforms.<knob>`, `data.eval_transforms.<knob>`).

Scale jitter: a plain random resize would be undone by the detector's own resize to its
min_size, so the jitter here resizes and then crops or pads back to a fixed output size
("large scale jitter"): objects really change size while the image size stays. Small objects on
128 px canvases suffer from strong zoom-out, hence the mild default range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["ScaleJitterCrop", "LimitSize", "build_train_transforms", "build_eval_transforms"]


def _pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    values = tuple(int(v) for v in size)
    if len(values) != 2:
        raise ValueError(f"A size is an int or [height, width], got {size!r}")
    return values  # type: ignore[return-value]


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for item in flat_inputs:
        if isinstance(item, tv_tensors.Image | tv_tensors.Video | tv_tensors.Mask) or (
            isinstance(item, torch.Tensor) and not isinstance(item, tv_tensors.TVTensor)
        ):
            return tuple(F.get_size(item))  # type: ignore[return-value]
    for item in flat_inputs:
        if isinstance(item, tv_tensors.BoundingBoxes):
            return tuple(item.canvas_size)  # type: ignore[return-value]
    raise TypeError("No image found in the transform's inputs")


class ScaleJitterCrop(v2.Transform):
    """Resize by a random factor, then crop or pad (at a random place) to the output size.

    The factor is drawn from `scale_range` and applied on top of the factor that fits the image
    into `output_size` (the input's own size when None). Boxes cut by the crop are clipped; boxes
    that vanish are removed later by SanitizeBoundingBoxes.
    """

    def __init__(
        self,
        scale_range: Sequence[float] = (0.75, 1.25),
        output_size: int | Sequence[int] | None = None,
        fill: float | Sequence[float] = 0,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {scale_range!r}")
        self.scale_range = (low, high)
        self.output_size = _pair(output_size)
        self.fill = fill
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        out_h, out_w = self.output_size or (height, width)
        fit = min(out_h / height, out_w / width)
        scale = fit * (
            self.scale_range[0] + float(torch.rand(())) * (self.scale_range[1] - self.scale_range[0])
        )
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        top = int(torch.randint(0, new_h - out_h + 1, ())) if new_h > out_h else 0
        left = int(torch.randint(0, new_w - out_w + 1, ())) if new_w > out_w else 0
        pad_top = int(torch.randint(0, out_h - new_h + 1, ())) if new_h < out_h else 0
        pad_left = int(torch.randint(0, out_w - new_w + 1, ())) if new_w < out_w else 0
        crop_h, crop_w = min(new_h, out_h), min(new_w, out_w)
        padding = [pad_left, pad_top, out_w - crop_w - pad_left, out_h - crop_h - pad_top]
        return {"size": [new_h, new_w], "crop": (top, left, crop_h, crop_w), "padding": padding}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = self._call_kernel(F.resize, inpt, size=params["size"], antialias=self.antialias)
        out = self._call_kernel(F.crop, out, *params["crop"])
        if any(params["padding"]):
            out = self._call_kernel(F.pad, out, padding=params["padding"], fill=self.fill)
        return out


class LimitSize(v2.Transform):
    """Shrink (never enlarge) so that the long side is at most `max_size`: guards memory on huge images."""

    def __init__(self, max_size: int, antialias: bool = True) -> None:
        super().__init__()
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = int(max_size)
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        scale = self.max_size / max(height, width)
        if scale >= 1:
            return {"size": None}
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["size"] is None:
            return inpt
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=self.antialias)


def build_train_transforms(
    hflip_prob: float = 0.5,
    scale_range: Sequence[float] | None = (0.75, 1.25),
    output_size: int | Sequence[int] | None = None,
    fill: float | Sequence[float] = 0,
    photometric_prob: float = 0.5,
    brightness: Sequence[float] = (0.875, 1.125),
    contrast: Sequence[float] = (0.5, 1.5),
    saturation: Sequence[float] = (0.5, 1.5),
    hue: Sequence[float] = (-0.05, 0.05),
    max_image_size: int | None = None,
    min_box_size: float = 1.0,
) -> v2.Compose:
    """Training pipeline: [limit size] -> photometric -> horizontal flip -> scale jitter + crop/pad
    -> drop degenerate boxes -> float32 in [0, 1].

    Args:
        hflip_prob: probability of a horizontal flip.
        scale_range: random zoom factor range; None turns scale jitter off.
        output_size: the jittered image's size (int or [h, w]); None keeps each input's size.
        fill: pixel value (0..255) of the padding when zooming out.
        photometric_prob: probability of each photometric change (RandomPhotometricDistort).
        brightness, contrast, saturation, hue: their ranges (see RandomPhotometricDistort).
        max_image_size: shrink larger images first (long side), saving time and memory.
        min_box_size: boxes smaller than this (pixels, either side) after augmentation are dropped.
    """
    steps: list[v2.Transform] = []
    if max_image_size is not None:
        steps.append(LimitSize(max_image_size))
    if photometric_prob > 0:
        steps.append(
            v2.RandomPhotometricDistort(
                brightness=tuple(brightness),
                contrast=tuple(contrast),
                saturation=tuple(saturation),
                hue=tuple(hue),
                p=photometric_prob,
            )
        )
    if hflip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip_prob))
    if scale_range is not None:
        steps.append(ScaleJitterCrop(scale_range=scale_range, output_size=output_size, fill=fill))
    steps += [
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=min_box_size),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
    ]
    return v2.Compose(steps)


def build_eval_transforms(
    resize: int | Sequence[int] | None = None,
    max_size: int | None = None,
) -> v2.Compose:
    """Evaluation pipeline: optional resize, then float32 in [0, 1].

    Args:
        resize: None keeps the image; an int resizes the shorter side to it (aspect kept);
            [h, w] resizes to exactly that.
        max_size: cap on the long side (with resize=int), or alone: shrink larger images only.
    """
    steps: list[v2.Transform] = []
    if resize is not None:
        size = [int(resize)] if isinstance(resize, int) else list(_pair(resize))  # type: ignore[arg-type]
        steps.append(v2.Resize(size, max_size=max_size if isinstance(resize, int) else None, antialias=True))
    elif max_size is not None:
        steps.append(LimitSize(max_size))
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    return v2.Compose(steps)
