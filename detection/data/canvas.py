"""FashionDet: real Fashion-MNIST items composed on crops of real photographs, written as COCO.

Every canvas is drawn from its own random generator seeded by (seed, split, index), so the output
is the same bytes for the same parameters whatever the number of worker processes.

Split separation (checkable from the files, see the extra fields below):
  * items: train canvases use Fashion-MNIST *train* items only; val canvases use Fashion-MNIST
    test items 0..4999 and test canvases test items 5000..9999.
  * photo regions: every photo is cut along its long side; the first `train_fraction` (70 %) feeds
    train canvases; the rest is halved across the short side, first half val, second half test.

Compositing: an item's alpha comes from its intensity (0 below `alpha_low`, 1 above `alpha_high`),
its colour is a random tint shaded by the intensity. An item's pixel is *visible* where the item
contributes at least `visible_alpha` of the final colour, i.e. alpha_j * prod_{later k}(1 - alpha_k)
>= visible_alpha. Each box is the tight box of the visible pixels (pixel edges, so integer
coordinates); placement is retried while a new item would hide more than `max_occlusion` of an
earlier one, leave it under `min_visible_pixels`, or overlap its rectangle by IoU > `max_iou`.

Besides the COCO fields, image records carry `photo`, `photo_region`, `photo_box` (crop in photo
pixels, x0 y0 x1 y1) and `photo_flip`; annotations carry `source_split`, `source_index` (the
Fashion-MNIST item), `placement` (x, y, w, h of the item's layer), `flip`, `tint` and
`visible_pixels`, enough to render a canvas again (`render_records`).
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detection.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from detection.data.render import (
    PHOTOS,
    Layer,
    background_crop,
    item_layer,
    load_photo,
    photo_image,
    photo_regions,
    rect_iou,
    render_canvas,
)

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- writing
_worker_state: dict[str, Any] = {}


def _init_worker(params: dict[str, Any], data_dir: str | None) -> None:
    _worker_state["params"] = params
    _worker_state["items"] = {s: load_fashion_mnist(s, data_dir=data_dir)[0] for s in ("train", "test")}


def _write_chunk(task: tuple[str, int, int, str]) -> list[tuple[dict, list]]:
    split, start, stop, folder = task
    p = _worker_state["params"]
    items = _worker_state["items"][ITEM_POOLS[split][0]]
    out = []
    for index in range(start, stop):
        image, image_extra, annotations = _make_canvas(split, index, p, items)
        name = f"{index + 1:06d}.png"
        Image.fromarray(image).save(
            os.path.join(folder, name), format="PNG", compress_level=int(p["png_compress_level"])
        )
        out.append(({"file_name": name, **image_extra}, annotations))
    return out


def _canvas_records(
    split: str, count: int, folder: Path, params: dict, data_dir: str | None, workers: int
) -> Iterator[tuple[dict, list]]:
    # Chunks only balance the work: every canvas has its own seed, so the split never shows.
    chunk = max(1, min(64, -(-count // (4 * max(workers, 1)))))
    tasks = [(split, s, min(s + chunk, count), str(folder)) for s in range(0, count, chunk)]
    # A daemonic process (a pool worker, some launchers) may not start children of its own.
    if workers <= 1 or len(tasks) <= 1 or multiprocessing.current_process().daemon:
        _init_worker(params, data_dir)
        for task in tasks:
            yield from _write_chunk(task)
        return
    # fork keeps the already loaded Fashion-MNIST arrays and photos without copying them again.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(workers, initializer=_init_worker, initargs=(params, data_dir)) as pool:
        for records in pool.imap(_write_chunk, tasks):  # imap keeps task order: deterministic ids
            yield from records


def _coco_json(
    split: str, records: list[tuple[dict, list]], p: Mapping[str, Any], labels: np.ndarray
) -> dict[str, Any]:
    source_split = ITEM_POOLS[split][0]
    images, annotations = [], []
    for image_id, (image_extra, anns) in enumerate(records, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": image_extra["file_name"],
                "width": p["canvas_size"],
                "height": p["canvas_size"],
                **{k: v for k, v in image_extra.items() if k != "file_name"},
            }
        )
        for ann in anns:
            x0, y0, x1, y1 = ann["box"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(labels[ann["source_index"]]) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                    "source_split": source_split,
                    "source_index": ann["source_index"],
                    "placement": ann["placement"],
                    "long_side": ann["long_side"],
                    "flip": ann["flip"],
                    "tint": ann["tint"],
                    "visible_pixels": ann["visible_pixels"],
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "clothing"}
        for i, name in enumerate(FASHION_MNIST_CLASSES)
    ]
    info = {
        "description": f"FashionDet {split}: Fashion-MNIST items on scikit-image photographs",
        "version": GENERATOR_VERSION,
    }
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as file:
        file.write(json.dumps(payload, separators=(",", ":")))  # dumps uses the C encoder, dump does not
    os.replace(tmp, path)


_PNG_NAME = re.compile(r"^\d{6}\.png$")


def is_cached(root: str | Path, params: Mapping[str, Any]) -> bool:
    """Whether `root` holds a complete FashionDet set made with exactly `params`."""
    root = Path(root)
    try:
        with open(root / PARAMS_FILE) as file:
            saved = json.load(file)
    except (OSError, ValueError):
        return False
    if saved.get("version") != GENERATOR_VERSION or saved.get("params") != dict(params):
        return False
    for split in SPLITS:
        folder = root / split
        if not (root / "annotations" / f"instances_{split}.json").is_file() or not folder.is_dir():
            return False
        if sum(1 for n in os.listdir(folder) if _PNG_NAME.match(n)) != params[f"num_{split}"]:
            return False
    return True


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    # Two processes (ranks, test workers) asked for the same set write it once.
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(root / ".fashiondet.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_fashiondet(
    root: str | Path,
    preset: str = "default",
    seed: int = 0,
    data_dir: str | Path | None = None,
    download: bool = False,
    workers: int | None = None,
    force: bool = False,
    **overrides: Any,
) -> Path:
    """Write the FashionDet COCO set under `root` unless it is already there with these parameters.

    `overrides` are any of DEFAULT_PARAMS (None keeps the preset's value). `data_dir`/`download`
    say where to find Fashion-MNIST (see `load_fashion_mnist`); `workers` processes render the
    canvases (default: up to 4, bounded by the CPUs); neither changes the output.
    """
    params = resolve_params(preset, seed, **overrides)
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root):
        if not force and is_cached(root, params):
            log.info("FashionDet found at %s (parameters unchanged)", root)
            return root
        start = time.perf_counter()
        # Fail early on missing Fashion-MNIST; the arrays are cached for the workers (fork).
        for source in ("train", "test"):
            load_fashion_mnist(source, data_dir=data_dir, download=download)
        for photo in params["photos"]:
            photo_image(photo)
        (root / PARAMS_FILE).unlink(missing_ok=True)  # an interrupted run must not look complete
        (root / "annotations").mkdir(exist_ok=True)
        if workers is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            workers = min(4, cpus)
        data_dir = None if data_dir is None else str(data_dir)
        counts = {}
        for split in SPLITS:
            folder = root / split
            folder.mkdir(exist_ok=True)
            for name in os.listdir(folder):
                if _PNG_NAME.match(name):
                    (folder / name).unlink()
            records = list(_canvas_records(split, params[f"num_{split}"], folder, params, data_dir, workers))
            labels = load_fashion_mnist(ITEM_POOLS[split][0], data_dir=data_dir)[1]
            payload = _coco_json(split, records, params, labels)
            _write_json(root / "annotations" / f"instances_{split}.json", payload)
            counts[split] = {"images": len(payload["images"]), "annotations": len(payload["annotations"])}
        seconds = time.perf_counter() - start
        _write_json(
            root / PARAMS_FILE,
            {
                "generator": "detection.data.canvas",
                "version": GENERATOR_VERSION,
                "preset": preset,
                "params": params,
                "counts": counts,
            },
        )
        log.info("FashionDet written to %s in %.1f s: %s", root, seconds, counts)
    return root
