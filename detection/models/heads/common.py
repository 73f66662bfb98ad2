"""The input transform every head uses: torchvision's, normalising with the backbone's record."""

from __future__ import annotations

from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detection.models.backbones import Backbone, Normalization


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's resize/normalise/batch transform that normalises with the backbone's record.

    `image_mean` / `image_std` read the backbone's `Normalization` object, so a detector whose
    backbone loads other statistics from a checkpoint normalises with them: the transform keeps
    no copy of its own.
    """

    def __init__(
        self, normalization: Normalization, min_size: int, max_size: int, size_divisible: int
    ) -> None:
        self.normalization = normalization
        super().__init__(
            min_size, max_size, normalization.mean, normalization.std, size_divisible=size_divisible
        )

    @property
    def image_mean(self) -> list[float]:
        return self.normalization.mean

    @image_mean.setter
    def image_mean(self, value: list[float]) -> None:
        self.normalization.mean = [float(v) for v in value]

    @property
    def image_std(self) -> list[float]:
        return self.normalization.std

    @image_std.setter
    def image_std(self, value: list[float]) -> None:
        self.normalization.std = [float(v) for v in value]


def build_transform(
    body: Backbone, min_size: int, max_size: int, size_divisible: int = 32
) -> DetectionTransform:
    """Resize so the short side is `min_size` (long side at most `max_size`), normalise as `body`."""
    return DetectionTransform(body.normalization, int(min_size), int(max_size), int(size_divisible))
