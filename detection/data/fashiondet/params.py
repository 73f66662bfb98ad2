"""FashionDet generator parameters: defaults, presets, and their validation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


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

GENERATOR_VERSION = 1
PARAMS_FILE = "fashiondet.json"
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
# Which Fashion-MNIST items each split draws from: (source split, first index, end index).
ITEM_POOLS = {"train": ("train", 0, 60_000), "val": ("test", 0, 5_000), "test": ("test", 5_000, 10_000)}

DEFAULT_PARAMS: dict[str, Any] = {
    "num_train": 4000,
    "num_val": 500,
    "num_test": 500,
    "canvas_size": 128,
    "min_objects": 1,
    "max_objects": 6,
    "min_object_size": 16,  # long side of the item's layer, pixels
    "max_object_size": 64,
    "max_iou": 0.4,
    "max_occlusion": 0.4,
    "min_visible_pixels": 30,
    "visible_alpha": 0.5,
    "alpha_low": 10,
    "alpha_high": 60,
    "shade_min": 0.35,
    "tint_saturation": [0.35, 1.0],
    "tint_value": [0.55, 1.0],
    "grey_fraction": 0.1,
    "max_tries": 30,
    "crop_min": 96,  # side of the square photo crop, photo pixels
    "crop_max": 192,
    "train_fraction": 0.7,
    "photos": list(PHOTOS),
    "png_compress_level": 1,
}
FASHIONDET_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "small": {"num_train": 48, "num_val": 24, "num_test": 24},
}


# ----------------------------------------------------------------------------- parameters
def resolve_params(preset: str = "default", seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """All generator parameters: defaults < preset < overrides (None means 'keep'), validated."""
    if preset not in FASHIONDET_PRESETS:
        raise ValueError(f"Unknown FashionDet preset {preset!r}; choose one of {sorted(FASHIONDET_PRESETS)}")
    unknown = sorted(set(overrides) - set(DEFAULT_PARAMS))
    if unknown:
        raise ValueError(f"Unknown FashionDet parameter(s) {unknown}; valid: {sorted(DEFAULT_PARAMS)}")
    params = {**DEFAULT_PARAMS, **FASHIONDET_PRESETS[preset]}
    params.update({k: _plain(v) for k, v in overrides.items() if v is not None})
    params["seed"] = int(seed)
    _check_params(params)
    return params


def _plain(value: Any) -> Any:
    # Hydra hands ListConfig; the params file and the comparison need plain JSON values.
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value]


def _check_params(p: dict[str, Any]) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"Invalid FashionDet parameters: {what}")

    for key in ("num_train", "num_val", "num_test"):
        need(int(p[key]) >= 0 and int(p[key]) < 1_000_000, f"{key}={p[key]} must be in [0, 999999]")
    need(p["canvas_size"] >= 32, f"canvas_size={p['canvas_size']} must be >= 32")
    need(1 <= p["min_objects"] <= p["max_objects"], "need 1 <= min_objects <= max_objects")
    need(
        4 <= p["min_object_size"] <= p["max_object_size"] <= p["canvas_size"],
        "need 4 <= min_object_size <= max_object_size <= canvas_size",
    )
    need(0 < p["visible_alpha"] <= 1, "visible_alpha must be in (0, 1]")
    need(0 <= p["alpha_low"] < p["alpha_high"] <= 255, "need 0 <= alpha_low < alpha_high <= 255")
    need(0 <= p["max_occlusion"] < 1 and 0 <= p["max_iou"] <= 1, "max_occlusion in [0,1), max_iou in [0,1]")
    need(0 < p["train_fraction"] < 1, "train_fraction must be in (0, 1)")
    need(16 <= p["crop_min"] <= p["crop_max"], "need 16 <= crop_min <= crop_max")
    need(len(p["photos"]) > 0, "photos must name at least one photo")
    bad = [name for name in p["photos"] if name not in PHOTOS]
    need(not bad, f"unknown photos {bad}; choose from {list(PHOTOS)}")
    need(len(p["tint_saturation"]) == 2 and len(p["tint_value"]) == 2, "tint ranges are [low, high]")
