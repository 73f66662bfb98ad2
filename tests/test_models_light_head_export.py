"""Light-Head R-CNN's PS-RoIAlign from ops that export: equal to `ps_roi_align`, in PyTorch and in
onnxruntime. The whole detector's ONNX and TorchScript parity is tests/test_heads_conformance.py's."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torchvision.ops import ps_roi_align

from detection.models.heads.light_head_rcnn import ps_roi_align_exportable


def _boxes(generator: torch.Generator, count: int, extent: float) -> torch.Tensor:
    """Random boxes of every size, from sub-pixel to larger than the map, some partly outside it."""
    corner = torch.rand(count, 2, generator=generator) * 1.2 * extent - 0.1 * extent
    side = torch.rand(count, 2, generator=generator) ** 3 * extent
    return torch.cat([corner, corner + side], dim=1)


FIXED = torch.tensor(
    [
        [0.0, 0.0, 224.0, 160.0],  # the whole map (stride 8)
        [10.3, 12.7, 11.0, 13.1],  # tiny
        [100.0, 100.0, 100.2, 100.2],  # sub-pixel at stride 8
        [5.0, 5.0, 5.5, 150.0],  # a sliver
        [-30.0, -20.0, 40.0, 60.0],  # partly outside
        [200.0, 150.0, 260.0, 190.0],  # partly outside, far corner
        [-50.0, -50.0, 400.0, 300.0],  # larger than the map
    ]
)


@pytest.mark.parametrize("output_size", [7, 3, (2, 3)])
@pytest.mark.parametrize("sampling_ratio", [2, 1, 3, 0, -1])
def test_ps_roi_align_exportable_matches(output_size: int | tuple[int, ...], sampling_ratio: int) -> None:
    generator = torch.Generator().manual_seed(sampling_ratio + 10)
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    features = torch.randn(2, 4 * ph * pw, 20, 28, generator=generator)
    boxes = [torch.cat([FIXED, _boxes(generator, 25, 224.0)]), _boxes(generator, 30, 224.0)]
    for spatial_scale in (1 / 8, 1 / 2):
        expected = ps_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio)
        got = ps_roi_align_exportable(features, boxes, output_size, spatial_scale, sampling_ratio)
        assert got.shape == expected.shape == (len(FIXED) + 55, 4, ph, pw)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # a [K, 5] tensor of (batch index, box) as well as a list of boxes per image
    rois = torch.cat([torch.full((len(boxes[1]), 1), 1.0), boxes[1]], dim=1)
    torch.testing.assert_close(
        ps_roi_align_exportable(features, rois, output_size, 0.125, sampling_ratio),
        ps_roi_align(features, rois, output_size, 0.125, sampling_ratio),
        rtol=0,
        atol=1e-5,
    )


def test_ps_roi_align_exportable_rejects_channels_that_are_not_whole_bin_groups() -> None:
    with pytest.raises(ValueError, match="multiple of 7 x 7"):
        ps_roi_align_exportable(torch.zeros(1, 50, 8, 8), [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], 7)


class _Pool(torch.nn.Module):
    def __init__(self, sampling_ratio: int) -> None:
        super().__init__()
        self.sampling_ratio = sampling_ratio

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return ps_roi_align_exportable(features, rois, 7, 0.125, self.sampling_ratio)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_ps_roi_align_exportable_in_onnxruntime_equals_ps_roi_align(sampling_ratio: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 5 * 49, 16, 16, generator=generator)
    boxes = torch.cat([FIXED, _boxes(generator, 40, 128.0)])
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # opset >= 16: torchvision maps roi_align(aligned=True) to RoiAlign "half_pixel"
        torch.onnx.export(
            _Pool(sampling_ratio), (features, rois), buffer, dynamo=False, opset_version=17,
            input_names=["features", "rois"],
        )  # fmt: skip
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": features.numpy(), "rois": rois.numpy()})[0]
    expected = ps_roi_align(features, rois, 7, 0.125, sampling_ratio)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-5)
