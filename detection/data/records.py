"""What every reader (COCO, VOC, YOLO) produces and the checks they all share.

- `DetectionIndex`: one validated split: image records, class names, per-image XYXY boxes and
  labels in pixels, the crowd/difficult boxes kept aside, and `DetectionStats`.
- `IndexBuilder`: the one box validation. A reader hands it each box in pixel XYXY with the words
  that name the box in its own file; the builder refuses non-finite, empty or wholly outside boxes
  (an error naming the file and the object, or counted as refused with invalid_boxes="drop"),
  clips boxes partly outside their image and counts them, and logs both once per split.
- `check_class_names`, `class_difference`: the data's classes against `data.class_names` /
  `data.num_classes` (or a checkpoint's), naming each class that differs with the first file it is in.
- `DataFormatError`: every reader's error is one of these (a ValueError: the pipelines end a run
  with its one line, no traceback).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

INVALID_BOX_POLICIES = ("error", "drop")
_MAX_LISTED = 5
_MAX_CLASSES_NAMED = 10
# Reading fewer files than this takes well under a few seconds: no progress bar.
PROGRESS_MIN_ITEMS = 500

T = TypeVar("T")


class DataFormatError(ValueError):
    """An annotation or image file is not usable; the message names the file, the record and the fix."""


@dataclass
class DetectionStats:
    """What a split holds after validation (boxes = the boxes used for training and evaluation)."""

    images: int = 0
    boxes: int = 0
    boxes_per_class: list[int] = field(default_factory=list)
    negatives: int = 0  # images without any usable box, kept as negatives
    crowd: int = 0  # COCO iscrowd=1 / VOC difficult=1 boxes, left out
    clipped: int = 0  # boxes partly outside their image, clipped to it
    refused: int = 0  # invalid boxes dropped (invalid_boxes="drop")

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "boxes": self.boxes,
            "boxes_per_class": list(self.boxes_per_class),
            "negatives": self.negatives,
            "crowd": self.crowd,
            "clipped": self.clipped,
            "refused": self.refused,
        }


@dataclass
class DetectionIndex:
    """A validated split: image records, classes and per-image XYXY boxes with labels."""

    ann_file: Path  # what the split was read from (COCO JSON, VOC split list, YOLO label folder)
    images: list[dict[str, Any]]  # {"id", "file_name", "width", "height"} in data set order
    category_ids: list[int]  # label -> category id (COCO's ids; 1..C for the other formats)
    class_names: list[str]  # label -> class name
    # per image float64 [N,4] XYXY pixels, clipped to the image (float32 in the data set's targets;
    # float64 here so that a conversion writes back what it read)
    boxes: list[np.ndarray]
    labels: list[np.ndarray]  # per image int64 [N] in [0, C)
    stats: DetectionStats
    # per image: crowd (COCO) / difficult (VOC) boxes, left out of training and evaluation; kept
    # so that a conversion carries them over
    crowd_boxes: list[np.ndarray] = field(default_factory=list)
    crowd_labels: list[np.ndarray] = field(default_factory=list)
    # class name -> the first file of this split holding one of its boxes (COCO: the JSON, VOC: an
    # XML, YOLO: a label file), else the file that lists the class: what a class mismatch names
    class_sources: dict[str, str] = field(default_factory=dict)


def check_policy(invalid_boxes: str) -> None:
    if invalid_boxes not in INVALID_BOX_POLICIES:
        raise ValueError(f"invalid_boxes must be one of {INVALID_BOX_POLICIES}, got {invalid_boxes!r}")


def progress(items: Sequence[T], description: str) -> Iterator[T]:
    """`items`, with a Rich progress bar while there are enough of them to take a while."""
    if len(items) < PROGRESS_MIN_ITEMS:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description, total=len(items), transient=True)


def _as_arrays(entries: list[tuple[float, ...]]) -> tuple[np.ndarray, np.ndarray]:
    if not entries:
        return np.zeros((0, 4), np.float64), np.zeros(0, np.int64)
    array = np.asarray(entries, dtype=np.float64)
    return array[:, :4].copy(), array[:, 4].astype(np.int64)


class IndexBuilder:
    """Collects a split's boxes through the shared checks and makes its `DetectionIndex`."""

    def __init__(
        self,
        ann_file: Path,
        images: list[dict[str, Any]],
        class_names: Sequence[str],
        *,
        category_ids: Sequence[int] | None = None,
        invalid_boxes: str = "error",
        error: type[DataFormatError] = DataFormatError,
        class_sources: Mapping[str, str | Path] | None = None,
    ) -> None:
        """`class_sources`: where each class is listed (name -> file), for classes without a box
        in this split (default: `ann_file`)."""
        check_policy(invalid_boxes)
        self.ann_file = Path(ann_file)
        self.images = images
        self.class_names = list(class_names)
        self.category_ids = (
            list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
        )
        self.invalid_boxes = invalid_boxes
        self.error = error
        self.stats = DetectionStats(images=len(images), boxes_per_class=[0] * len(self.class_names))
        self._boxes: list[list[tuple[float, ...]]] = [[] for _ in images]
        self._crowd: list[list[tuple[float, ...]]] = [[] for _ in images]
        self._clipped: list[str] = []
        self._refused: list[str] = []
        self._listed_in = {str(k): str(v) for k, v in (class_sources or {}).items()}
        self._first_file: dict[int, Path] = {}  # label -> the first file that holds one of its boxes

    def add(
        self,
        row: int,
        box: Iterable[float],
        label: int,
        *,
        path: Path,
        record: str,
        shown: str,
        crowd: bool = False,
    ) -> None:
        """Box `box` (pixel x0, y0, x1, y1) of image `row`, class `label`.

        `path` and `record` name the box for messages ("annotation id 5 (image id 1, ...)", "line
        3"); `shown` is the box as its file writes it ("bbox [1, 2, 3, 4]"). A crowd box is
        counted and kept aside, never refused (it is not trained on).
        """
        if label not in self._first_file:
            self._first_file[label] = path
        x0, y0, x1, y1 = (float(v) for v in box)
        width, height = self.images[row]["width"], self.images[row]["height"]
        problem = None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            problem = f"{shown} has non-finite coordinates"
        elif x1 <= x0 or y1 <= y0:
            problem = f"{shown} has zero or negative width or height (w={x1 - x0:g}, h={y1 - y0:g})"
        else:
            clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                problem = f"{shown} lies entirely outside its {width}x{height} image"
        if crowd:
            self.stats.crowd += 1
            if problem is None:
                self._crowd[row].append((*clipped, label))
            return
        if problem is not None:
            if self.invalid_boxes == "error":
                raise self.error(
                    f"{path}: {record}: {problem}. Fix: correct or remove this object, or set "
                    "data.invalid_boxes=drop to drop such boxes (they are counted as refused)"
                )
            self.stats.refused += 1
            if len(self._refused) < _MAX_LISTED:
                self._refused.append(f"{record}: {problem}")
            return
        if clipped != (x0, y0, x1, y1):
            self.stats.clipped += 1
            if len(self._clipped) < _MAX_LISTED:
                self._clipped.append(f"{record} {shown}")
        self._boxes[row].append((*clipped, label))

    def build(self) -> DetectionIndex:
        boxes, labels, crowd_boxes, crowd_labels = [], [], [], []
        for entries, crowd in zip(self._boxes, self._crowd):
            image_boxes, image_labels = _as_arrays(entries)
            boxes.append(image_boxes)
            labels.append(image_labels)
            for label in image_labels:
                self.stats.boxes_per_class[label] += 1
            if not entries:
                self.stats.negatives += 1
            crowd_box, crowd_label = _as_arrays(crowd)
            crowd_boxes.append(crowd_box)
            crowd_labels.append(crowd_label)
        self.stats.boxes = sum(self.stats.boxes_per_class)
        for count, what, examples in (
            (self.stats.clipped, "clipped %d box(es) partly outside their image", self._clipped),
            (self.stats.refused, "refused %d invalid box(es) (invalid_boxes=drop)", self._refused),
        ):
            if count:
                log.warning("%s: " + what + ", e.g. %s", self.ann_file, count, "; ".join(examples))
        return DetectionIndex(
            self.ann_file,
            self.images,
            self.category_ids,
            self.class_names,
            boxes,
            labels,
            self.stats,
            crowd_boxes,
            crowd_labels,
            {
                name: str(self._first_file.get(label) or self._listed_in.get(name, self.ann_file))
                for label, name in enumerate(self.class_names)
            },
        )


def _named(names: Sequence[str], sources: Mapping[str, str], counts: Mapping[str, int] | None = None) -> str:
    """'hat' (2 boxes, first in a/b.xml), ... for at most `_MAX_CLASSES_NAMED` names."""
    shown = []
    for name in names[:_MAX_CLASSES_NAMED]:
        about = []
        if counts is not None and name in counts:
            about.append(f"{counts[name]} box{'' if counts[name] == 1 else 'es'}")
        if sources.get(name):
            about.append(f"first in {sources[name]}")
        shown.append(f"{name!r}" + (f" ({', '.join(about)})" if about else ""))
    more = f" and {len(names) - _MAX_CLASSES_NAMED} more" if len(names) > _MAX_CLASSES_NAMED else ""
    return ", ".join(shown) + more


def class_difference(
    found: Sequence[str], expected: Sequence[str], sources: Mapping[str, str], expected_as: str = "expected"
) -> str:
    """What differs between the data's classes `found` and the `expected` ones, each class of the
    data with the file it is first in (`sources`, as `DetectionIndex.class_sources`), e.g.
    "classes in the data but not expected: 'hat' (first in Annotations/000123.xml)"."""
    expected_set, found_set = set(expected), set(found)
    extra = [name for name in found if name not in expected_set]
    missing = [name for name in expected if name not in found_set]
    parts = []
    if extra:
        parts.append(f"classes in the data but not {expected_as}: {_named(extra, sources)}")
    if missing:
        parts.append(f"classes {expected_as} but not in the data: {_named(missing, {})}")
    if not parts:
        label = next((i for i, (a, b) in enumerate(zip(found, expected)) if a != b), 0)
        parts.append(
            f"the same classes in another order: label {label} is {_named([found[label]], sources)} in the "
            f"data, {expected[label]!r} {expected_as}"
        )
    return "; ".join(parts)


def check_class_names(
    source: Path,
    found: Sequence[str],
    given: Sequence[str] | None,
    num_classes: int | None,
    sources: Mapping[str, str] | None = None,
    counts: Mapping[str, int] | None = None,
) -> None:
    """`data.class_names` / `data.num_classes`, when set, must agree with the classes of the data.

    The message names the classes that differ and, for each class of the data, the first file it
    is in (`sources`); with only a number to go by, the classes with the fewest boxes (`counts`,
    over all splits) are named as the likeliest strays.
    """
    sources = sources or {}
    if given is not None and list(given) != list(found):
        difference = class_difference(found, given, sources, "in data.class_names")
        raise ValueError(
            f"{source}: the data's {len(found)} classes {list(found)} differ from data.class_names="
            f"{list(given)} ({len(given)}): {difference}. Fix data.class_names or the class names in the "
            "files named, or leave data.class_names unset to take the data's"
        )
    if num_classes is not None and int(num_classes) != len(found):
        surplus = len(found) - int(num_classes)
        if surplus > 0:
            count = (counts or {}).get
            by_count = sorted(found, key=lambda name: count(name, 0))
            cut = count(by_count[surplus - 1], 0)  # classes tied with the last one named are named too
            rarest = [name for name in by_count if count(name, 0) <= cut]
            detail = (
                f"classes in the data but not expected ({surplus} too many; the likeliest, with the fewest "
                f"boxes): {_named(rarest, sources, counts)}"
            )
        else:
            detail = f"{-surplus} fewer than expected; the data's classes: {_named(found, sources, counts)}"
        raise ValueError(
            f"{source} has {len(found)} categories but data.num_classes={num_classes}: {detail}. Fix the "
            f"class name(s) in the file(s) named, or set data.num_classes={len(found)} or leave it unset to "
            "take it from the data (the model's num_classes follows it)"
        )
