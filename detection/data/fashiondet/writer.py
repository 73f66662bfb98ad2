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

import contextlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detection.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from detection.data.fashiondet.compose import _make_canvas, photo_image
from detection.data.fashiondet.params import (
    GENERATOR_VERSION,
    ITEM_POOLS,
    PARAMS_FILE,
    SPLITS,
    resolve_params,
)

log = logging.getLogger(__name__)


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
                "generator": "detection.data.fashiondet",
                "version": GENERATOR_VERSION,
                "preset": preset,
                "params": params,
                "counts": counts,
            },
        )
        log.info("FashionDet written to %s in %.1f s: %s", root, seconds, counts)
    return root
