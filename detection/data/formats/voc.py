"""Pascal VOC layout: ImageSets/Main/<split>.txt, Annotations/<id>.xml, JPEGImages/.

- Coordinates: VOC boxes are 1-based inclusive pixel indices; pixel i covers [i - 1, i) in the
  continuous coordinates used here, so (xmin, ymin, xmax, ymax) -> (xmin - 1, ymin - 1, xmax, ymax)
  exactly (a box over the whole W x H image is [0, 0, W, H]).
- `difficult` objects are kept aside like COCO crowd boxes: not trained on, not scored.
- Classes: `data.class_names` (a list or a file), else `labels.txt` in the root (one name a line,
  as the converter writes it), else every name in the annotations of all splits, sorted (for
  VOC2007/2012 that is the usual order of the 20 classes).
- Image ids: an image's place in its split file (1, 2, ...); VOC has no numeric ids.
- The image is the XML's <filename> in JPEGImages/ when that exists, else <id> with any image extension.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from detection.data.dataset import IMAGE_EXTENSIONS, upright_size
from detection.data.formats.base import SplitReader, read_class_list
from detection.data.formats.registry import register_format
from detection.data.records import DataFormatError, DetectionIndex, IndexBuilder, progress

__all__ = ["CLASS_LIST_FILE", "VocFormatError", "VocReader", "parse_voc_xml"]

CLASS_LIST_FILE = "labels.txt"


class VocFormatError(DataFormatError):
    """A VOC split file, annotation or image is not usable; the message names it and what to fix."""


@dataclass
class VocObject:
    name: str
    bbox: tuple[float, float, float, float]  # as written: 1-based xmin, ymin, xmax, ymax
    difficult: bool
    record: str  # "object #k ('name')", for messages


@dataclass
class VocImage:
    xml: Path
    file_name: str
    width: int
    height: int
    objects: list[VocObject] = field(default_factory=list)


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    return child.text.strip() if child is not None and child.text is not None else None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _positive_size(text: str | None) -> int | None:
    value = _number(text)
    return int(value) if value is not None and value > 0 and value.is_integer() else None


def parse_voc_xml(xml: Path, where: str) -> tuple[ET.Element, list[VocObject]]:
    """The <annotation> element of `xml` and its objects (`where`: the split file line that lists it)."""
    try:
        root = ET.parse(xml).getroot()
    except FileNotFoundError:
        raise VocFormatError(
            f"{where}: no annotation file {xml}. Fix: add it, or remove the id from the split file"
        ) from None
    except ET.ParseError as exc:
        line, column = exc.position
        raise VocFormatError(
            f"{xml}: not well-formed XML at line {line}, column {column} ({exc}); listed at {where}"
        ) from None
    if root.tag != "annotation":
        raise VocFormatError(f"{xml}: the root element is <{root.tag}>, not <annotation> (listed at {where})")
    objects = []
    # direct children only: a person's <part>s carry boxes of their own
    for k, element in enumerate(root.findall("object")):
        name = _text(element, "name")
        record = f"object #{k} ({name!r})"
        if not name:
            raise VocFormatError(f"{xml}: object #{k} has no <name>; give every object its class name")
        box = element.find("bndbox")
        values = [
            _number(_text(box, t)) if box is not None else None for t in ("xmin", "ymin", "xmax", "ymax")
        ]
        if any(v is None for v in values):
            found = [_text(box, t) for t in ("xmin", "ymin", "xmax", "ymax")] if box is not None else None
            raise VocFormatError(
                f"{xml}: {record}: <bndbox> needs numeric <xmin>, <ymin>, <xmax>, <ymax>, got {found}"
            )
        difficult = _text(element, "difficult") or "0"
        if difficult not in ("0", "1"):
            raise VocFormatError(f"{xml}: {record}: <difficult> must be 0 or 1, got {difficult!r}")
        objects.append(VocObject(name, tuple(values), difficult == "1", record))  # type: ignore[arg-type]
    return root, objects


@register_format("voc")
class VocReader(SplitReader):
    error = VocFormatError
    lists_images = True
    ann_kind = "split file"

    def default_paths(self, split: str) -> tuple[str, str]:
        return f"ImageSets/Main/{split}.txt", "JPEGImages"

    def layout(self, split: str) -> str:
        return f"ImageSets/Main/{split}.txt + Annotations/ + JPEGImages/"

    def annotation_dir(self, split: str) -> Path:
        split_file = self.paths(split)[0]
        assert split_file is not None
        # Annotations/ sits next to ImageSets/ in the standard layout, wherever the split file is
        if self.root is not None:
            return self.root / "Annotations"
        return split_file.parent.parent.parent / "Annotations"

    def expected_classes(self) -> list[str] | None:
        return None  # data.class_names is the class list itself

    def classes(self) -> tuple[list[str], str, dict[str, str]]:
        """(class names, where they came from, the file that names each class)."""
        if "classes" not in self._cache:
            listed = self.root / CLASS_LIST_FILE if self.root is not None else None
            if self.class_names is not None:
                names, source = self.class_names, "data.class_names"
                sources = dict.fromkeys(names, source)
            elif listed is not None and listed.is_file():
                names, source = read_class_list(listed), str(listed)
                sources = dict.fromkeys(names, source)
            else:
                sources = {}  # name -> the first XML with an object of it, over the splits in order
                for split in ("train", "val", "test"):
                    for image in self._split(split) if self.exists(split) else ():
                        for obj in image.objects:
                            sources.setdefault(obj.name, str(image.xml))
                if not sources:
                    raise VocFormatError(
                        f"{self.root}: no object in any split and no {CLASS_LIST_FILE}: the classes are "
                        "unknown. Write them one a line in labels.txt or set data.class_names"
                    )
                names, source = sorted(sources), "the annotations"
            self._cache["classes"] = (names, source, sources)
        return self._cache["classes"]

    def _split(self, split: str) -> list[VocImage]:
        if split not in self._cache:
            self._cache[split] = self._read_split(split)
        return self._cache[split]

    def _read_split(self, split: str) -> list[VocImage]:
        split_file, image_dir = self.paths(split)
        assert split_file is not None and image_dir is not None
        lines = [
            (n, line.split()[0])
            for n, line in enumerate(split_file.read_text().splitlines(), 1)
            if line.strip()
        ]
        listing = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
        annotations = self.annotation_dir(split)
        seen: dict[str, int] = {}
        images = []
        for number, image_id in progress(lines, f"Reading VOC {split}"):
            where = f"{split_file}, line {number}"
            if image_id in seen:
                raise VocFormatError(
                    f"{where}: image id {image_id!r} is listed twice (first at line {seen[image_id]})"
                )
            seen[image_id] = number
            xml = annotations / f"{image_id}.xml"
            root, objects = parse_voc_xml(xml, where)
            file_name = _image_file(root, image_id, listing)
            if file_name is None:
                raise VocFormatError(
                    f"{where}: image {image_id!r} is listed but no image file {image_id}.jpg (or another "
                    f"image type) is in {image_dir}. Fix: add the image or remove the line"
                )
            size = root.find("size")
            width = _positive_size(_text(size, "width")) if size is not None else None
            height = _positive_size(_text(size, "height")) if size is not None else None
            if width is None or height is None:  # tools leave <size> out or write 0: the file knows
                width, height = upright_size(image_dir / file_name)
            images.append(VocImage(xml, file_name, width, height, objects))
        return images

    def read(self, split: str) -> DetectionIndex:
        names, source, sources = self.classes()
        label_of = {name: label for label, name in enumerate(names)}
        voc_images = self._split(split)
        records = [
            {"id": i, "file_name": im.file_name, "width": im.width, "height": im.height}
            for i, im in enumerate(voc_images, 1)
        ]
        builder = IndexBuilder(
            self.paths(split)[0],
            records,
            names,
            invalid_boxes=self.invalid_boxes,
            error=VocFormatError,
            class_sources=sources,
        )
        for row, image in enumerate(voc_images):
            for obj in image.objects:
                if obj.name not in label_of:
                    raise VocFormatError(
                        f"{image.xml}: {obj.record}: class {obj.name!r} is not in the class list "
                        f"({source}: {names}). Fix the name, or add the class to the list"
                    )
                xmin, ymin, xmax, ymax = obj.bbox
                builder.add(
                    row,
                    (xmin - 1.0, ymin - 1.0, xmax, ymax),
                    label_of[obj.name],
                    path=image.xml,
                    record=obj.record,
                    shown=f"bndbox (xmin, ymin, xmax, ymax) = ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})",
                    crowd=obj.difficult,
                )
        return builder.build()


def _image_file(root: ET.Element, image_id: str, listing: set[str]) -> str | None:
    named = _text(root, "filename")
    if named and named in listing:
        return named
    for extension in IMAGE_EXTENSIONS:
        for candidate in (image_id + extension, image_id + extension.upper()):
            if candidate in listing:
                return candidate
    return None
