"""The reader every format implements: `SplitReader`, the splits of one data set -> `DetectionIndex`.

A reader knows its layout under `root` (or the per-split paths given instead), whether a split is
there, and how to read and validate it; every reader returns the same record type, so the data
module, the summary, the pictures and the converter never ask which format they hold. A format is
a subclass registered by name (`detection.data.formats.registry.register_format`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from detection.data.dataset import DetectionDataset
from detection.data.records import DataFormatError, DetectionIndex, check_policy

__all__ = ["SplitPaths", "SplitReader", "read_class_list"]

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

    format = ""  # the registered name (set by `register_format`)
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

    def expected_classes(self) -> list[str] | None:
        """The class names the data must hold (`class_names` when given), None to take the data's.

        A format whose files carry no class list (VOC) takes `class_names` as that list instead.
        """
        return self.class_names

    def dataset(
        self,
        split: str,
        transforms: Callable[..., Any] | None = None,
        *,
        check_files: bool = True,
        cache_images: bool = False,
    ) -> DetectionDataset:
        """`split` read, validated and ready to index (see `DetectionDataset`).

        check_files: check that every image file exists now (a reader that finds every image as it
        reads, `lists_images`, has done so already). cache_images: decode every image once.
        """
        return DetectionDataset(
            self.image_dir(split),
            self.read(split),
            transforms,
            check_files=check_files and not self.lists_images,
            cache_images=cache_images,
            error=self.error,
        )

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
