"""Light-Head R-CNN (Li et al., 2017) on torchvision's R-CNN machinery.

Where the features come from (this implementation's choice):
- the RPN runs on every FPN level (P3..P5 plus any extra levels), exactly as in our Faster R-CNN,
  so the two detectors differ only in the R-CNN subnet and can be compared on equal terms;
- the thin feature map is computed from the backbone's stride-16 map C4 (``thin_map_from=
  "backbone"``, default: a classification feature untouched by the FPN, like the paper's stride-16
  backbone output) or from the FPN's P4 (``"fpn"``); ``thin_map_stride`` picks another stride.

The R-CNN subnet: a large separable convolution (k x 1 then 1 x k, plus 1 x k then k x 1, summed,
then ReLU; k = 15; Cmid 64 for variant "S", 256 for "L"; Cout = 10 x p x p with p = 7) makes the
thin map; position-sensitive RoIAlign (`torchvision.ops.ps_roi_align`) pools each proposal to
10 x 7 x 7; one fully connected layer (2048) feeds the class and box predictors. Pooling is cheap
whatever the number of proposals, and the per-RoI work is one 490 -> 2048 layer instead of
Faster R-CNN's two large ones.

Export: `ps_roi_align` has no ONNX mapping, so `LightHeadRoIPool.prepare_export()` switches the
pool to `ps_roi_align_exportable` (one `roi_align` over every channel, then each bin's own
channel), the same numbers from ops that ONNX (opset >= 16) and TorchScript carry.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import ps_roi_align, roi_align

from detection.models.backbones import Backbone
from detection.models.heads.contract import register_head
from detection.models.heads.rcnn import RCNN, build_rcnn
from detection.models.necks import DetectorBackbone

VARIANTS = {"S": 64, "L": 256}
THIN_MAP_SOURCES = ("backbone", "fpn")


class LargeSeparableConv(nn.Module):
    """(k x 1 -> 1 x k) + (1 x k -> k x 1), then ReLU: a k x k receptive field at 2 x (k + k) cost."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_size: int = 15) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"thin_kernel_size must be odd to keep the map size, got {kernel_size}")
        k, pad = kernel_size, kernel_size // 2
        self.col = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, (k, 1), padding=(pad, 0)),
            nn.Conv2d(mid_channels, out_channels, (1, k), padding=(0, pad)),
        )
        self.row = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, (1, k), padding=(0, pad)),
            nn.Conv2d(mid_channels, out_channels, (k, 1), padding=(pad, 0)),
        )
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.col(x) + self.row(x))


def ps_roi_align_exportable(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """`torchvision.ops.ps_roi_align` from ops that export: [K, C, ph, pw] from an [N, C*ph*pw, H, W] map.

    One `roi_align(aligned=True)` pools every one of the C*ph*pw channels to ph x pw bins, and bin
    (i, j) of output channel c keeps channel c*ph*pw + i*pw + j, as the PS-RoIAlign kernel reads it.
    ``aligned=True`` is that kernel's sampling: coordinates shifted by half a pixel and RoIs not
    widened to at least 1 x 1; torchvision maps it to ONNX RoiAlign (coordinate_transformation_mode
    "half_pixel") from opset 16. The one difference: a RoI of zero width or height with adaptive
    sampling (`sampling_ratio` <= 0) samples nothing and gives 0 here, NaN (0 / 0) in
    `ps_roi_align`. It computes ph*pw times the bins that it keeps: an export path, not a fast one.
    """
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    bins = ph * pw
    channels = input.shape[1] // bins
    if channels * bins != input.shape[1]:
        raise ValueError(f"input channels {input.shape[1]} are not a multiple of {ph} x {pw} bins")
    pooled = roi_align(input, boxes, (ph, pw), spatial_scale, sampling_ratio, aligned=True)
    # [K, C, bins (channel group), bins (bin)]: keep the diagonal, each bin from its own group
    own = torch.arange(bins, device=input.device) * (bins + 1)
    return pooled.reshape(-1, channels, bins * bins).index_select(2, own).reshape(-1, channels, ph, pw)


class LightHeadRoIPool(nn.Module):
    """Thin feature map from ``features[feature_name]``, then PS-RoIAlign of every proposal.

    Called by torchvision's RoIHeads as ``box_roi_pool(features, proposals, image_shapes)``;
    returns [K, bin_channels, p, p]. `export_friendly` pools with `ps_roi_align_exportable` (the
    same numbers, slower) instead of `ps_roi_align`, which ONNX cannot express; `prepare_export()`
    sets it.
    """

    export_friendly: bool = False

    def __init__(
        self,
        in_channels: int,
        feature_name: str,
        stride: int,
        mid_channels: int,
        kernel_size: int = 15,
        bin_channels: int = 10,
        pooled_size: int = 7,
        sampling_ratio: int = 2,
    ) -> None:
        super().__init__()
        self.feature_name = feature_name
        self.spatial_scale = 1.0 / stride
        self.pooled_size = pooled_size
        self.sampling_ratio = sampling_ratio
        self.thin = LargeSeparableConv(in_channels, mid_channels, bin_channels * pooled_size**2, kernel_size)

    def prepare_export(self) -> None:
        """Pool with ops that ONNX and TorchScript carry (`ps_roi_align_exportable`) from now on."""
        self.export_friendly = True

    def forward(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        thin = self.thin(features[self.feature_name])
        # float32 proposals sample a float32 map, as torchvision's CUDA autocast does for this op (its
        # CPU kernel has no autocast and refuses mixed dtypes); the pooled bins go on in the map's dtype
        pool = ps_roi_align_exportable if self.export_friendly else ps_roi_align
        pooled = pool(thin.float(), proposals, self.pooled_size, self.spatial_scale, self.sampling_ratio)
        return pooled.to(thin.dtype)


class LightHeadRCNN(RCNN):
    """The R-CNN detector whose export hook switches the pool to ops that ONNX maps."""

    def prepare_export(self) -> None:
        self.roi_heads.box_roi_pool.prepare_export()


class LightHeadBoxHead(nn.Module):
    """The single fully connected layer of the light head."""

    def __init__(self, in_features: int, representation_size: int = 2048) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc(x.flatten(start_dim=1)))


def thin_map_input(body: Backbone, knobs: dict[str, Any]) -> list[str]:
    """The backbone map the thin map is made from (none when it comes from the neck)."""
    stride = knobs["thin_map_stride"]
    if knobs["thin_map_from"] != "backbone" or stride not in body.strides:
        return []  # a stride the backbone lacks is reported by the builder
    return [body.names[body.strides.index(stride)]]


@register_head(
    "light_head_rcnn",
    neck={"extra_levels": "maxpool"},
    body_outputs=thin_map_input,
    options_from=(build_rcnn,),
)
def build_light_head_rcnn(
    backbone: DetectorBackbone,
    num_classes: int,
    *,
    variant: str = "S",
    thin_mid_channels: int | None = None,
    thin_kernel_size: int = 15,
    thin_bin_channels: int = 10,
    thin_map_from: str = "backbone",
    thin_map_stride: int = 16,
    pooled_size: int = 7,
    roi_sampling_ratio: int = 2,
    representation_size: int = 2048,
    **rcnn_options: Any,
) -> LightHeadRCNN:
    """Light-Head R-CNN (see the module docstring for which maps feed the RPN and the thin map).

    `variant` "S" (Cmid 64) or "L" (Cmid 256), or `thin_mid_channels` explicitly; the thin map has
    ``thin_bin_channels x pooled_size**2`` channels. `rcnn_options` are `build_rcnn`'s knobs (RPN, box
    sampling and post-processing, anchors), the same as Faster R-CNN's.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown Light-Head variant {variant!r}; choose one of {tuple(VARIANTS)}")
    if thin_map_from not in THIN_MAP_SOURCES:
        raise ValueError(f"thin_map_from must be one of {THIN_MAP_SOURCES}, got {thin_map_from!r}")
    body = backbone.body
    if thin_map_from == "backbone":
        if thin_map_stride not in body.strides:
            raise ValueError(
                f"thin_map_stride {thin_map_stride} is not a backbone level (strides {body.strides}); add "
                "its level to the backbone's out_levels or set thin_map_stride"
            )
        index = body.strides.index(thin_map_stride)
        feature_name, in_channels = body.names[index], body.channels[index]
        if feature_name not in backbone.body_outputs:
            raise ValueError(
                f"the thin map reads backbone map {feature_name!r}, which this feature module does not "
                "return: build the detector with build_detector, or give DetectorBackbone body_outputs"
            )
    else:
        if thin_map_stride not in backbone.strides:
            raise ValueError(
                f"thin_map_stride {thin_map_stride} is not a neck level (strides {backbone.strides})"
            )
        feature_name = backbone.names[backbone.strides.index(thin_map_stride)]
        in_channels = backbone.out_channels
    roi_pool = LightHeadRoIPool(
        in_channels,
        feature_name,
        thin_map_stride,
        int(thin_mid_channels or VARIANTS[variant]),
        int(thin_kernel_size),
        int(thin_bin_channels),
        int(pooled_size),
        int(roi_sampling_ratio),
    )
    box_head = LightHeadBoxHead(int(thin_bin_channels) * int(pooled_size) ** 2, int(representation_size))
    return build_rcnn(
        backbone, num_classes, roi_pool, box_head, int(representation_size), LightHeadRCNN, **rcnn_options
    )
