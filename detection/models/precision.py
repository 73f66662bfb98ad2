"""Mixed precision that stops where numbers decide results.

Under autocast (Lightning's ``16-mixed`` / ``bf16-mixed``) convolutions and linear layers return
float16 or bfloat16. torchvision's detectors then decode boxes, add the class offsets of
`batched_nms` and compare IoUs in the dtype of the predictions: a bfloat16 coordinate of 1000 px
is rounded to 4 px, and float16 overflows past 65504, which batched_nms's offsets reach with many
classes on large inputs. Anchors inherit the feature maps' dtype as well.

So every head's raw predictions leave it in float32 (`Float32Predictions`), and the anchors are
made in float32 (`detection.models.heads.anchors`). Everything after them (losses, box decoding,
score thresholds, NMS, resizing back to the input image) then computes in float32: none of these
ops is one that autocast lowers, and autocast never lowers float32 inputs of the others. The
network itself (backbone, FPN, head towers) keeps running in low precision.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

T = TypeVar("T")


def float32(value: T) -> T:
    """`value` with every float16/bfloat16 tensor in it (nested lists, tuples, dicts) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float64 else value
    if isinstance(value, dict):
        return type(value)((k, float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(float32(v) for v in value)
    return value


class Float32Predictions:
    """Mixin for a head module: its forward's outputs come back as float32, whatever the autocast.

    Placed before the torchvision class (``class Head(Float32Predictions, FCOSHead)``) it changes no
    parameter or state-dict key, so checkpoints load either way.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return float32(super().forward(*args, **kwargs))


__all__ = ["Float32Predictions", "float32"]
