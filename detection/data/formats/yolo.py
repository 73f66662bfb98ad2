"""YOLO layout: images/<split>/, labels/<split>/ with one `class cx cy w h` line per box, data.yaml.

- data.yaml gives `names` (a list, or a dict {index: name} with indices 0..C-1) and optionally `nc`
  and per-split folders (`train: images/train`, relative to the root; `val` is also read as
  `valid`); a split without its key is images/<split>/. The labels of an image folder are in the
  folder of the same path with its last `images` replaced by `labels` (as labelling tools write them).
- Coordinates are normalised to the upright image (EXIF orientation applied), which is opened
  (header only) for its size. Lines outside [0, 1] are clipped and counted, like COCO boxes partly
  outside their image.
- Images without a label file, or with an empty one, are negatives. A label file whose image is
  missing is an error (`classes.txt`, which some tools keep among the labels, is skipped).
- Image ids: the place of the image in the sorted listing (1, 2, ...).
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from detection.data.dataset import IMAGE_EXTENSIONS, upright_size
from detection.data.formats.base import SplitReader
from detection.data.formats.registry import register_format
from detection.data.records import DataFormatError, DetectionIndex, IndexBuilder, progress

__all__ = ["DATA_YAML", "YoloFormatError", "YoloReader", "labels_dir_of", "read_data_yaml"]

DATA_YAML = "data.yaml"
_SPLIT_KEYS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


class YoloFormatError(DataFormatError):
    """A YOLO data.yaml, label file or image is not usable; the message names it and what to fix."""


def labels_dir_of(image_dir: Path) -> Path:
    """The label folder of an image folder: its last `images` component becomes `labels`."""
    parts = list(image_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return image_dir.parent / "labels" / image_dir.name


def read_data_yaml(path: Path) -> dict[str, Any]:
    """data.yaml as a dict with `names` a list of C strings (checked against `nc` when given)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise YoloFormatError(
            f"{path}: not found. A YOLO data set needs its class names there (names: [cat, dog]), or "
            "set data.class_names"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise YoloFormatError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise YoloFormatError(f"{path}: needs a `names` entry: a list of class names or {{index: name}}")
    names = data["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise YoloFormatError(
                f"{path}: `names` keys must be the class indices 0..{len(names) - 1}, got {sorted(names)}"
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, str | int) for n in names):
        raise YoloFormatError(
            f"{path}: `names` must be a non-empty list of class names, got {data['names']!r}"
        )
    names = [str(n) for n in names]
    if "nc" in data and data["nc"] != len(names):
        raise YoloFormatError(f"{path}: nc: {data['nc']} but `names` lists {len(names)} classes")
    return {**data, "names": names}


@register_format("yolo")
class YoloReader(SplitReader):
    error = YoloFormatError
    lists_images = True
    ann_kind = "image folder"
    marker_index = 1

    def data_yaml(self) -> dict[str, Any]:
        if "data" not in self._cache:
            path = self.root / DATA_YAML if self.root is not None else None
            if path is not None and (path.is_file() or self.class_names is None):
                self._cache["data"], self._cache["names_from"] = read_data_yaml(path), str(path)
            else:
                self._cache["data"] = {"names": self.class_names}
                self._cache["names_from"] = "data.class_names"
        return self._cache["data"]

    def default_paths(self, split: str) -> tuple[str, str]:
        images = f"images/{split}"
        data = self.data_yaml() if self.root is not None and (self.root / DATA_YAML).is_file() else {}
        for key in _SPLIT_KEYS[split]:
            value = data.get(key)
            if isinstance(value, str) and value:
                images = _within_root(self.root, value)
                break
        return str(labels_dir_of(Path(images))), images

    def paths(self, split: str) -> tuple[Path | None, Path | None]:
        ann, images = super().paths(split)
        if self._given.get(split, (None, None))[0] is None and images is not None:
            ann = labels_dir_of(images)  # the labels follow a given image folder
        return ann, images

    def layout(self, split: str) -> str:
        return f"images/{split}/ + labels/{split}/ + {DATA_YAML}"

    def read(self, split: str) -> DetectionIndex:
        labels_dir, image_dir = self.paths(split)
        assert labels_dir is not None and image_dir is not None
        names = self.data_yaml()["names"]
        files = _files(image_dir, IMAGE_EXTENSIONS)
        by_stem = {PurePosixPath(f).with_suffix("").as_posix(): f for f in files}
        if len(by_stem) != len(files):
            raise YoloFormatError(
                f"{image_dir}: two images share a name but for the extension; each needs its own label file"
            )
        for label in _files(labels_dir, (".txt",)):
            if label != "classes.txt" and PurePosixPath(label).with_suffix("").as_posix() not in by_stem:
                raise YoloFormatError(
                    f"{labels_dir / label}: label file with no image: nothing named "
                    f"{PurePosixPath(label).with_suffix('')}.<jpg|png|...> in {image_dir}. Fix: add the "
                    "image or remove the label file"
                )
        records = []
        for i, file_name in enumerate(progress(files, f"Reading YOLO {split} image sizes"), 1):
            width, height = upright_size(image_dir / file_name)
            records.append({"id": i, "file_name": file_name, "width": width, "height": height})
        builder = IndexBuilder(
            labels_dir,
            records,
            names,
            invalid_boxes=self.invalid_boxes,
            error=YoloFormatError,
            # a class with boxes: its first label file, else where the names are
            class_sources=dict.fromkeys(names, self._cache["names_from"]),
        )
        for row, record in enumerate(records):
            label_file = labels_dir / PurePosixPath(record["file_name"]).with_suffix(".txt")
            if label_file.is_file():
                _read_label_file(label_file, row, record, len(names), builder)
        return builder.build()


def _within_root(root: Path | None, value: str) -> str:
    # Some exports write folders relative to data.yaml's parent ("../train/images") for a data.yaml
    # inside the root: take the path inside the root when only that one exists.
    if root is not None and not (root / value).exists() and value.startswith("../"):
        inside = value[3:]
        if (root / inside).exists():
            return inside
    return value


def _files(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Files under `folder` (recursively) with one of `extensions`, as sorted POSIX paths relative to it."""
    found = []
    for directory, subdirs, names in os.walk(folder):
        subdirs.sort()
        relative = Path(directory).relative_to(folder)
        for name in names:
            if name.lower().endswith(extensions):
                found.append((relative / name).as_posix())
    return sorted(found)


def _read_label_file(
    path: Path, row: int, record: dict[str, Any], num_classes: int, builder: IndexBuilder
) -> None:
    width, height = record["width"], record["height"]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise YoloFormatError(
            f"{path}: not a text file; a label file holds 'class cx cy w h' lines"
        ) from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}: line {number}"
        if len(fields) != 5:
            polygon = " (more fields: a segmentation polygon; only boxes are read)" if len(fields) > 5 else ""
            raise YoloFormatError(
                f"{where}: expected 5 fields 'class cx cy w h', got {len(fields)}: {line.strip()!r}{polygon}"
            )
        try:
            label = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise YoloFormatError(
                f"{where}: expected an integer class and four numbers 'class cx cy w h', got {line.strip()!r}"
            ) from None
        if not 0 <= label < num_classes:
            raise YoloFormatError(
                f"{where}: class index {label} is out of range: data.yaml names {num_classes} classes "
                f"(0..{num_classes - 1}). Fix the index or add the class to `names`"
            )
        finite = all(math.isfinite(v) for v in (cx, cy, w, h))
        box = (
            ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
            if finite
            else (math.nan,) * 4
        )
        builder.add(
            row, box, label, path=path, record=f"line {number}", shown=f"'cx cy w h' = {' '.join(fields[1:])}"
        )
