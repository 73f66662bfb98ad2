"""COCO: annotations/instances_<split>.json, images in <split>/; the reader and the JSON's validation.

- Any COCO detection set (an image folder and a JSON file) works: category ids map to contiguous
  labels sorted by id (names kept), crowd boxes are kept aside (counted, not trained on), images
  without boxes stay as negatives.
- Every problem ends in a CocoFormatError that names the file, the record and what to fix, except
  two counted repairs (the shared box checks of `detection.data.records.IndexBuilder`): a box
  partly outside its image is clipped, and (with invalid_boxes="drop") boxes that are non-finite,
  empty or wholly outside are refused instead of failing the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detection.data.formats.base import SplitReader
from detection.data.formats.registry import register_format
from detection.data.records import (
    INVALID_BOX_POLICIES,
    DataFormatError,
    DetectionIndex,
    DetectionStats,
    IndexBuilder,
    check_policy,
)

__all__ = ["INVALID_BOX_POLICIES", "CocoFormatError", "CocoIndex", "CocoReader", "CocoStats", "parse_coco"]

# One record type for every format; the COCO names stay for the code that knows them.
CocoStats = DetectionStats
CocoIndex = DetectionIndex


class CocoFormatError(DataFormatError):
    """A COCO file or one of its images is not usable; the message says which record and what to fix."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: Any) -> int | None:
    if _is_int(value) and value > 0:
        return int(value)
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    return None


def _load_json(path: Path) -> Any:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise CocoFormatError(
            f"{path}: annotation file not found. Fix: check data.root, or point the split's ann key "
            "(e.g. data.train_ann) at the COCO JSON file"
        ) from None
    except OSError as exc:
        raise CocoFormatError(f"{path}: cannot read the annotation file ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CocoFormatError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). A COCO file is a "
            "JSON object with 'images', 'annotations' and 'categories' lists"
        ) from None
    except UnicodeDecodeError:
        raise CocoFormatError(
            f"{path}: not a text JSON file (binary content). A COCO file is a JSON object with 'images', "
            "'annotations' and 'categories' lists"
        ) from None


def parse_coco(ann_file: str | Path, invalid_boxes: str = "error") -> CocoIndex:
    """Validate `ann_file` and index its boxes per image (crowd boxes kept aside, counted)."""
    check_policy(invalid_boxes)
    path = Path(ann_file)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise CocoFormatError(
            f"{path}: the top level is a JSON {type(data).__name__}, not an object. A COCO file is an object "
            "with 'images', 'annotations' and 'categories' lists"
        )
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise CocoFormatError(
            f"{path}: not a COCO detection file: missing key(s) {missing} (found {sorted(data)[:10]}). "
            "Add them (an empty 'annotations' list is fine for images without objects)"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{path}: '{key}' must be a list, got a JSON {type(data[key]).__name__}")

    category_ids, class_names = _categories(path, data["categories"])
    label_of = {cid: label for label, cid in enumerate(category_ids)}
    images = _images(path, data["images"])
    row_of = {image["id"]: row for row, image in enumerate(images)}
    builder = IndexBuilder(
        path,
        images,
        class_names,
        category_ids=category_ids,
        invalid_boxes=invalid_boxes,
        error=CocoFormatError,
    )
    seen_ann_ids: set[int] = set()
    for position, ann in enumerate(data["annotations"]):
        where = f"{path}: annotation #{position}"
        if not isinstance(ann, dict):
            raise CocoFormatError(f"{where} is a JSON {type(ann).__name__}, not an object")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise CocoFormatError(f"{where} (id {ann.get('id', '?')}): missing key '{key}'")
        ann_id = ann["id"]
        if not _is_int(ann_id):
            raise CocoFormatError(f"{where}: 'id' must be an integer, got {ann_id!r}")
        where = f"{path}: annotation id {ann_id}"
        if ann_id in seen_ann_ids:
            raise CocoFormatError(f"{where}: duplicate annotation id; give every annotation its own id")
        seen_ann_ids.add(ann_id)
        image_id = ann["image_id"]
        if not _is_int(image_id) or image_id not in row_of:
            raise CocoFormatError(
                f"{where}: image_id {image_id!r} matches no image record. Fix the image_id or add the image "
                "to 'images'"
            )
        row = row_of[image_id]
        record = f"annotation id {ann_id} (image id {image_id}, file {images[row]['file_name']!r})"
        category_id = ann["category_id"]
        if not _is_int(category_id) or category_id not in label_of:
            known = category_ids[:20]
            raise CocoFormatError(
                f"{path}: {record}: category_id {category_id!r} is not in 'categories' (ids {known}"
                f"{' ...' if len(category_ids) > 20 else ''}). Fix the category_id or add the category"
            )
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1, False, True):
            raise CocoFormatError(f"{path}: {record}: iscrowd must be 0 or 1, got {crowd!r}")
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            if crowd:  # never trained on: a crowd region without a usable box is only counted
                builder.stats.crowd += 1
                continue
            raise CocoFormatError(
                f"{path}: {record}: bbox must be a list of 4 numbers [x, y, width, height], got {bbox!r}"
            )
        x, y, w, h = (float(v) for v in bbox)
        builder.add(
            row,
            (x, y, x + w, y + h),
            label_of[category_id],
            path=path,
            record=record,
            shown=f"bbox {bbox}",
            crowd=bool(crowd),
        )
    return builder.build()


def _categories(path: Path, records: list[Any]) -> tuple[list[int], list[str]]:
    if not records:
        raise CocoFormatError(
            f"{path}: 'categories' is empty; list every class as {{'id': int, 'name': str}}"
        )
    names: dict[int, str] = {}
    for position, cat in enumerate(records):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise CocoFormatError(
                f"{path}: category #{position} must be an object with an integer 'id' and a string 'name', "
                f"got {cat!r}"
            )
        if cat["id"] in names:
            raise CocoFormatError(
                f"{path}: duplicate category id {cat['id']} ({names[cat['id']]!r} and {cat['name']!r}); "
                "give every category its own id"
            )
        names[cat["id"]] = cat["name"]
    ids = sorted(names)
    return ids, [names[i] for i in ids]


def _images(path: Path, records: list[Any]) -> list[dict[str, Any]]:
    if not records:
        raise CocoFormatError(f"{path}: 'images' is empty; a split needs at least one image record")
    images: list[dict[str, Any]] = []
    first_of: dict[int, int] = {}
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise CocoFormatError(
                f"{path}: image #{position} is a JSON {type(record).__name__}, not an object"
            )
        image_id = record.get("id")
        where = f"{path}: image #{position} (id {image_id!r}, file {record.get('file_name')!r})"
        if not _is_int(image_id):
            raise CocoFormatError(f"{where}: 'id' must be an integer")
        file_name = record.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise CocoFormatError(
                f"{where}: 'file_name' must be a non-empty string (the image's path under the image folder)"
            )
        width, height = _positive_int(record.get("width")), _positive_int(record.get("height"))
        if width is None or height is None:
            raise CocoFormatError(
                f"{where}: 'width' and 'height' must be positive integers (the image size in pixels), got "
                f"{record.get('width')!r} x {record.get('height')!r}"
            )
        if image_id in first_of:
            other = images[first_of[image_id]]["file_name"]
            raise CocoFormatError(
                f"{path}: duplicate image id {image_id} (files {other!r} and {file_name!r}); give every "
                "image its own id and point each annotation's image_id at the right one"
            )
        first_of[image_id] = position
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    return images


@register_format("coco")
class CocoReader(SplitReader):
    error = CocoFormatError

    def default_paths(self, split: str) -> tuple[str, str]:
        return f"annotations/instances_{split}.json", split

    def layout(self, split: str) -> str:
        return f"annotations/instances_{split}.json + {split}/"

    def read(self, split: str) -> DetectionIndex:
        ann = self.paths(split)[0]
        assert ann is not None
        return parse_coco(ann, invalid_boxes=self.invalid_boxes)
