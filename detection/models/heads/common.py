"""Pieces shared by the heads: the input transform and stride-derived anchors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detection.models.backbones import Backbone


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's resize/normalise/batch transform whose mean/std are saved in the state dict.

    A detector rebuilt from its checkpoint with backbone weights=None then normalises as it did
    in training (e.g. with a pretraining data set's statistics), not with the defaults.
    """

    def get_extra_state(self) -> dict[str, Any]:
        return {"image_mean": list(self.image_mean), "image_std": list(self.image_std)}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict) and "image_mean" in state and "image_std" in state:
            self.image_mean = [float(v) for v in state["image_mean"]]
            self.image_std = [float(v) for v in state["image_std"]]


def build_transform(
    body: Backbone, min_size: int, max_size: int, size_divisible: int = 32
) -> DetectionTransform:
    """Resize so the short side is `min_size` (long side at most `max_size`), normalise as `body`."""
    return DetectionTransform(
        int(min_size), int(max_size), body.image_mean, body.image_std, size_divisible=int(size_divisible)
    )


def anchor_generator(
    strides: Sequence[int],
    anchor_scale: float,
    scales_per_octave: int = 1,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> AnchorGenerator:
    """Anchors of side ``anchor_scale * stride * 2**(i / scales_per_octave)`` on each level."""
    sizes = tuple(
        tuple(
            float(anchor_scale) * s * 2 ** (i / int(scales_per_octave)) for i in range(int(scales_per_octave))
        )
        for s in strides
    )
    ratios = (tuple(float(r) for r in aspect_ratios),) * len(strides)
    return AnchorGenerator(sizes, ratios)
