"""One FashionDet canvas: scikit-image photographs, Fashion-MNIST item layers, compositing, placement.

An item's alpha comes from its intensity (0 below `alpha_low`, 1 above `alpha_high`), its colour
is a tint shaded by the intensity. A layer's pixel is *visible* where the layer contributes at
least `visible_alpha` of the final colour: alpha_j * prod_{later k}(1 - alpha_k) >= visible_alpha.
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detection.data.fashion_mnist import load_fashion_mnist
from detection.data.fashiondet.params import _SPLIT_CODE, ITEM_POOLS, PHOTOS


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


# ----------------------------------------------------------------------------- one canvas
def _random_tint(rng: np.random.Generator, p: Mapping[str, Any]) -> list[float]:
    value = float(rng.uniform(*p["tint_value"]))
    if rng.random() < p["grey_fraction"]:
        return [value, value, value]
    hue, sat = float(rng.random()), float(rng.uniform(*p["tint_saturation"]))
    return [float(c) for c in colorsys.hsv_to_rgb(hue, sat, value)]


def _make_canvas(
    split: str, index: int, p: Mapping[str, Any], items: np.ndarray
) -> tuple[np.ndarray, dict, list]:
    """Render canvas `index` of `split`; returns (image, image extras, annotation extras)."""
    rng = np.random.default_rng([p["seed"], _SPLIT_CODE[split], index])
    size, va = p["canvas_size"], p["visible_alpha"]
    _, first, end = ITEM_POOLS[split]

    photo = p["photos"][int(rng.integers(len(p["photos"])))]
    ph, pw = load_photo(photo).shape[:2]
    rx0, ry0, rx1, ry1 = photo_regions(ph, pw, p["train_fraction"])[split]
    limit = min(rx1 - rx0, ry1 - ry0)
    side = int(rng.integers(min(p["crop_min"], limit), min(p["crop_max"], limit) + 1))
    cx, cy = int(rng.integers(rx0, rx1 - side + 1)), int(rng.integers(ry0, ry1 - side + 1))
    photo_box = [cx, cy, cx + side, cy + side]
    photo_flip = bool(rng.random() < 0.5)
    background = background_crop(photo, photo_box, photo_flip, size)

    wanted = int(rng.integers(p["min_objects"], p["max_objects"] + 1))
    layers: list[Layer] = []
    specs: list[dict[str, Any]] = []
    shares = np.zeros((0, size, size), np.float32)  # current contribution of every accepted layer
    visible = np.zeros(0, np.int64)
    own = np.zeros(0, np.int64)
    for _ in range(wanted):
        for _ in range(p["max_tries"]):
            source = int(rng.integers(first, end))
            long_side = int(rng.integers(p["min_object_size"], p["max_object_size"] + 1))
            flip = bool(rng.random() < 0.5)
            tint = _random_tint(rng, p)
            alpha, colour = item_layer(
                items[source], long_side, flip, tint, p["alpha_low"], p["alpha_high"], p["shade_min"]
            )
            h, w = alpha.shape
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            own_pixels = int((alpha >= va).sum())
            if own_pixels < p["min_visible_pixels"]:
                continue
            rect = (x, y, x + w, y + h)
            if any(rect_iou(rect, layer.rect) > p["max_iou"] for layer in layers):
                continue
            old = shares[:, y : y + h, x : x + w]
            new = old * (1.0 - alpha)[None]
            now_visible = visible - (old >= va).sum(axis=(1, 2)) + (new >= va).sum(axis=(1, 2))
            if np.any(now_visible < p["min_visible_pixels"]) or np.any(
                now_visible < (1.0 - p["max_occlusion"]) * own
            ):
                continue
            shares[:, y : y + h, x : x + w] = new
            placed = np.zeros((1, size, size), np.float32)
            placed[0, y : y + h, x : x + w] = alpha
            shares = np.concatenate([shares, placed])
            visible = np.append(now_visible, own_pixels)
            own = np.append(own, own_pixels)
            layers.append(Layer(alpha, colour, x, y))
            specs.append(
                {
                    "source_index": source,
                    "long_side": long_side,
                    "flip": flip,
                    "tint": tint,
                    "placement": [x, y, w, h],
                }
            )
            break

    image, contributions, boxes = render_canvas(background, layers, va)
    annotations = []
    for spec, contribution, box in zip(specs, contributions, boxes):
        if box is None:  # cannot happen after the visibility checks; never write a box without pixels
            continue
        annotations.append({**spec, "box": box, "visible_pixels": int((contribution >= va).sum())})
    image_extra = {"photo": photo, "photo_region": split, "photo_box": photo_box, "photo_flip": photo_flip}
    return image, image_extra, annotations


def render_records(
    image_record: Mapping[str, Any],
    annotations: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    data_dir: str | Path | None = None,
) -> tuple[np.ndarray, list[np.ndarray], list[tuple[int, int, int, int] | None]]:
    """Render a written canvas again from its records: (image uint8, contributions, boxes).

    Lets a test or a curious user check that the stored boxes are the tight boxes of the visible
    pixels of exactly the image on disk.
    """
    background = background_crop(
        image_record["photo"],
        image_record["photo_box"],
        image_record["photo_flip"],
        int(params["canvas_size"]),
    )
    layers = []
    for ann in annotations:
        items, _ = load_fashion_mnist(ann["source_split"], data_dir=data_dir)
        alpha, colour = item_layer(
            items[ann["source_index"]],
            ann["long_side"],
            ann["flip"],
            ann["tint"],
            params["alpha_low"],
            params["alpha_high"],
            params["shade_min"],
        )
        layers.append(Layer(alpha, colour, ann["placement"][0], ann["placement"][1]))
    return render_canvas(background, layers, params["visible_alpha"])
