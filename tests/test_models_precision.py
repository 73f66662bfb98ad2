"""Under autocast the network runs in low precision, but every head's detections are decoded, scored
and suppressed in float32, from float32 anchors (`detection.models.precision`)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from detection.models import Backbone, build_backbone, build_detector, head_knobs, head_names
from detection.models.heads.anchors import anchor_generator
from detection.models.precision import Float32Predictions, float32

SIZE = 160
NUM_CLASSES = 4
LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def _no_threshold(head: str) -> dict[str, float]:
    """Every detection an untrained head proposes: the comparison needs many boxes, not good ones."""
    knob = "score_thresh" if "score_thresh" in head_knobs(head) else "box_score_thresh"  # R-CNN's
    return {knob: 0.0}


@functools.lru_cache(maxsize=1)
def _backbone() -> Backbone:
    return build_backbone("resnet18", weights=None)


def _detector(head: str) -> nn.Module:
    torch.manual_seed(0)
    body = build_backbone("resnet18", weights=None)
    body.load_state_dict(_backbone().state_dict())
    neck = {"out_channels": 32}
    model = build_detector(head, NUM_CLASSES, body, neck, min_size=SIZE, max_size=SIZE, **_no_threshold(head))
    return model.eval()


def _prediction_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the raw predictions that the detector then decodes: those the
    head contract marks with `Float32Predictions`."""
    modules = [m for m in model.modules() if isinstance(m, Float32Predictions)]
    assert modules, f"{type(model).__name__} marks no prediction module with Float32Predictions"
    return modules


@contextmanager
def _outputs(modules: list[nn.Module], record: list[Any], replay: list[Any] | None = None) -> Iterator[None]:
    """Record each module's output (as float32), or, with `replay`, return the recorded ones instead."""

    def hook(index: int):
        def run(module: nn.Module, args: Any, output: Any) -> Any:
            if replay is not None:
                return replay[index]
            record.append(float32(output))
            return None

        return run

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    # not the model's input size: the boxes are also resized back to the images in float32
    return [
        torch.rand(3, 2 * SIZE, 2 * SIZE + 40, generator=g),
        torch.rand(3, 2 * SIZE, 2 * SIZE, generator=g),
    ]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("head", head_names())
def test_detections_are_decoded_and_suppressed_in_float32(head: str, dtype: torch.dtype) -> None:
    model, images = _detector(head), _images()
    modules, recorded = _prediction_modules(model), []
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype), _outputs(modules, recorded):
        low = model(images)
    assert any(len(d["boxes"]) for d in low), "the comparison needs detections"
    for detections in low:
        assert detections["boxes"].dtype == torch.float32
        assert detections["scores"].dtype == torch.float32
    # The same raw predictions decoded without autocast: the detections must be identical, so the
    # decoding, thresholds and NMS under autocast ran in float32 from float32 anchors.
    with torch.no_grad(), _outputs(modules, [], replay=recorded):
        reference = model(images)
    for got, want in zip(low, reference, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("dtype", LOW)
def test_anchors_are_float32_on_large_inputs(dtype: torch.dtype) -> None:
    generator = anchor_generator([8, 16, 32, 64, 128], anchor_scale=4.0, scales_per_octave=3)
    size = 1536
    images = ImageList(torch.zeros(1, 3, size, size), [(size, size)])
    maps = [torch.zeros(1, 8, size // s, size // s, dtype=dtype) for s in (8, 16, 32, 64, 128)]
    (low,) = generator(images, maps)
    (exact,) = generator(images, [m.float() for m in maps])
    assert low.dtype == torch.float32
    assert torch.equal(low, exact)
    assert generator.cell_anchors[0].dtype == torch.float32  # not lowered for the calls to come
    # the input is large enough for the test to mean something: bfloat16 cannot hold these anchors
    assert not torch.equal(exact, exact.bfloat16().float())
