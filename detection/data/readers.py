"""Where each format keeps a split, and the reader that turns it into a `DetectionIndex`.

A reader knows its layout under `root` (or the per-split paths given instead), whether a split is
there, and how to read and validate it; every reader returns the same record type, so the data
module, the summary, the pictures and the converter never ask which format they hold.

Layouts (the defaults; `<split>_ann` and `<split>_images` point elsewhere):
- coco: annotations/instances_<split>.json, images in <split>/
- voc:  ImageSets/Main/<split>.txt (one image id a line), Annotations/<id>.xml, JPEGImages/
- yolo: images/<split>/ and labels/<split>/ (or the folders data.yaml names), data.yaml
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detection.data.coco.validation import CocoFormatError, parse_coco
from detection.data.records import DataFormatError, DetectionIndex, check_policy

FORMATS = ("coco", "voc", "yolo")
SplitPaths = tuple[str | None, str | None]


class SplitReader:
    """The splits of one data set in one format (subclasses say where files live and how to read them).

    Args:
        root: the data set folder (None: every split's paths are given).
        files: per split (annotation path, image folder), each relative to `root` or absolute;
            None entries take the format's layout.
        class_names: the class list when the format does not carry one (VOC), else checked
            against the data's.
        invalid_boxes: "error" or "drop" (counted as refused).
    """

    format = ""
    error: type[DataFormatError] = DataFormatError
    lists_images = False  # True: reading already found every image file (no separate check)
    ann_kind = "annotation file"
    marker_index = 0  # which of (annotations, image folder) says that a split is there

    def __init__(
        self,
        root: Path | None,
        files: Mapping[str, SplitPaths] | None = None,
        class_names: Sequence[str] | None = None,
        invalid_boxes: str = "error",
    ) -> None:
        check_policy(invalid_boxes)
        self.root = root
        self.class_names = list(class_names) if class_names is not None else None
        self.invalid_boxes = invalid_boxes
        self._given = dict(files or {})
        self._cache: dict[str, Any] = {}  # what a reader read once and keeps (parsed files)

    def _resolve(self, value: str | None, default: str) -> Path | None:
        if value is not None:
            path = Path(value).expanduser()
            return path if path.is_absolute() or self.root is None else self.root / path
        return self.root / default if self.root is not None else None

    def default_paths(self, split: str) -> tuple[str, str]:
        raise NotImplementedError

    def paths(self, split: str) -> tuple[Path | None, Path | None]:
        """(annotations, image folder) of `split`."""
        ann, images = self._given.get(split, (None, None))
        default_ann, default_images = self.default_paths(split)
        return self._resolve(ann, default_ann), self._resolve(images, default_images)

    def image_dir(self, split: str) -> Path:
        images = self.paths(split)[1]
        if images is None:
            raise ValueError(f"data.{split}_images is needed when data.root is not set")
        return images

    def marker(self, split: str) -> Path | None:
        """The file or folder whose presence means the split is there."""
        return self.paths(split)[self.marker_index]

    def exists(self, split: str) -> bool:
        marker = self.marker(split)
        return marker is not None and marker.exists()

    def read(self, split: str) -> DetectionIndex:
        raise NotImplementedError

    def layout(self, split: str) -> str:
        """The default layout of `split`, for messages."""
        raise NotImplementedError

    def missing_message(self, split: str, needed_by: str) -> str:
        return (
            f"The {split} split is needed {needed_by} but its {self.ann_kind} {self.marker(split)} does not "
            "exist. Set "
            f"data.root to a folder laid out as {self.layout(split)} (data.format={self.format}), or point "
            f"data.{split}_ann and data.{split}_images at your files"
        )


class CocoReader(SplitReader):
    format = "coco"
    error = CocoFormatError

    def default_paths(self, split: str) -> tuple[str, str]:
        return f"annotations/instances_{split}.json", split

    def layout(self, split: str) -> str:
        return f"annotations/instances_{split}.json + {split}/"

    def read(self, split: str) -> DetectionIndex:
        ann = self.paths(split)[0]
        assert ann is not None
        return parse_coco(ann, invalid_boxes=self.invalid_boxes)


def make_reader(
    format: str,
    root: Path | None,
    files: Mapping[str, SplitPaths] | None = None,
    class_names: Sequence[str] | str | None = None,
    invalid_boxes: str = "error",
) -> SplitReader:
    """The reader of `format` ("coco", "voc" or "yolo"); `class_names` may name a file of names."""
    if format not in FORMATS:
        raise ValueError(f"unknown data.format {format!r}; choose one of {FORMATS}")
    if isinstance(class_names, str):
        class_names = read_class_list(Path(class_names).expanduser())
    if format == "voc":
        from detection.data.voc import VocReader as reader_class
    elif format == "yolo":
        from detection.data.yolo import YoloReader as reader_class
    else:
        reader_class = CocoReader
    return reader_class(root, files, class_names, invalid_boxes)


def read_class_list(path: Path) -> list[str]:
    """One class name a line (blank lines skipped), as labelling tools write it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read the class list ({exc})") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise DataFormatError(f"{path}: the class list is empty; write one class name a line")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataFormatError(f"{path}: class name(s) {repeated} appear more than once; list each once")
    return names
