"""FashionDet drawing primitives: scikit-image photographs, Fashion-MNIST item layers, compositing.

An item's alpha comes from its intensity (0 below `alpha_low`, 1 above `alpha_high`), its colour
is a tint shaded by the intensity. A layer's pixel is *visible* where the layer contributes at
least `visible_alpha` of the final colour: alpha_j * prod_{later k}(1 - alpha_k) >= visible_alpha.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Photographs shipped inside the scikit-image wheel (no download); grey ones become RGB.
PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "motorcycle",
    "camera",
    "coins",
    "grass",
    "gravel",
    "brick",
    "moon",
)


# ----------------------------------------------------------------------------- photos
@functools.cache
def load_photo(name: str) -> np.ndarray:
    """An RGB uint8 [H,W,3] photograph from scikit-image's bundled data (read-only)."""
    from skimage import data

    if name not in PHOTOS:
        raise ValueError(f"Unknown photo {name!r}; choose from {list(PHOTOS)}")
    array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    array = np.ascontiguousarray(array[:, :, :3], dtype=np.uint8)
    array.setflags(write=False)
    return array


@functools.cache
def photo_image(name: str) -> Image.Image:
    return Image.fromarray(load_photo(name))


def photo_regions(height: int, width: int, train_fraction: float) -> dict[str, tuple[int, int, int, int]]:
    """Disjoint (x0, y0, x1, y1) areas of a photo for train, val and test crops."""
    if width >= height:
        cut = int(width * train_fraction)
        mid = height // 2
        return {"train": (0, 0, cut, height), "val": (cut, 0, width, mid), "test": (cut, mid, width, height)}
    cut = int(height * train_fraction)
    mid = width // 2
    return {"train": (0, 0, width, cut), "val": (0, cut, mid, height), "test": (mid, cut, width, height)}


def background_crop(photo: str, box: Sequence[int], flip: bool, size: int) -> np.ndarray:
    """The square `box` of `photo` resized to size x size, float32 [size,size,3] in 0..255."""
    crop = photo_image(photo).resize((size, size), Image.Resampling.BILINEAR, box=tuple(box))
    array = np.asarray(crop, dtype=np.float32)
    return np.ascontiguousarray(array[:, ::-1]) if flip else array


# ----------------------------------------------------------------------------- items
def item_layer(
    item: np.ndarray,
    long_side: int,
    flip: bool,
    tint: Sequence[float],
    alpha_low: float,
    alpha_high: float,
    shade_min: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(alpha float32 [h,w] in [0,1], colour float32 [h,w,3] in 0..255) of one Fashion-MNIST item.

    The 28x28 item is cut to the tight box of its pixels >= alpha_low and scaled so that its long
    side is `long_side`.
    """
    rows = np.flatnonzero((item >= alpha_low).any(axis=1))
    cols = np.flatnonzero((item >= alpha_low).any(axis=0))
    if rows.size == 0:  # an (almost) empty item: keep the whole frame
        rows, cols = np.arange(item.shape[0]), np.arange(item.shape[1])
    crop = item[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    ch, cw = crop.shape
    scale = long_side / max(ch, cw)
    w, h = max(1, round(cw * scale)), max(1, round(ch * scale))
    resized = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    if flip:
        resized = np.ascontiguousarray(resized[:, ::-1])
    alpha = np.clip((resized - alpha_low) / (alpha_high - alpha_low), 0.0, 1.0)
    shade = shade_min + (1.0 - shade_min) * (resized / 255.0)
    colour = shade[:, :, None] * (np.asarray(tint, dtype=np.float32) * 255.0)
    return alpha.astype(np.float32), colour.astype(np.float32)


@dataclass
class Layer:
    """An item layer placed at (x, y) on the canvas."""

    alpha: np.ndarray
    colour: np.ndarray
    x: int
    y: int

    @property
    def rect(self) -> tuple[int, int, int, int]:
        h, w = self.alpha.shape
        return self.x, self.y, self.x + w, self.y + h


def render_canvas(
    background: np.ndarray, layers: Sequence[Layer], visible_alpha: float
) -> tuple[np.ndarray, list[np.ndarray], list[tuple[int, int, int, int] | None]]:
    """Composite `layers` in order over `background`.

    Returns the uint8 image, each layer's contribution map (float32 [H,W]: the share of the final
    colour it provides) and each layer's tight box (x0, y0, x1, y1) of pixels whose contribution is
    >= visible_alpha, or None when no pixel is visible.
    """
    canvas = background.astype(np.float32, copy=True)
    height, width = canvas.shape[:2]
    contributions = []
    for layer in layers:
        x0, y0, x1, y1 = layer.rect
        region = canvas[y0:y1, x0:x1]
        a = layer.alpha[:, :, None]
        canvas[y0:y1, x0:x1] = region * (1.0 - a) + layer.colour * a
        full = np.zeros((height, width), np.float32)
        full[y0:y1, x0:x1] = layer.alpha
        contributions.append(full)
    # A later layer scales down the share of every layer below it by (1 - its alpha).
    cover = np.ones((height, width), np.float32)
    for i in range(len(layers) - 1, -1, -1):
        alpha = contributions[i]
        contributions[i] = alpha * cover
        cover *= 1.0 - alpha
    boxes = [tight_box(c >= visible_alpha) for c in contributions]
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, contributions, boxes


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) with exclusive x1/y1 of the True pixels of `mask`; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def rect_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
