"""Write a data set, read by any reader, in another layout: COCO, Pascal VOC or YOLO.

Lossless where the formats allow; what each target cannot hold:
- COCO holds everything the readers keep: boxes as read (float64 in the JSON), classes and
  names, image ids, negatives, crowd (COCO) / difficult (VOC) boxes as iscrowd=1. From VOC and
  YOLO the category ids are 1..C in class order.
- VOC: boxes as 1-based xmin = x0 + 1, ymin = y0 + 1, xmax = x1, ymax = y1, exact for boxes on
  pixel edges (integers); other boxes are written as decimals, which our reader reads exactly but
  tools that expect integers round. Crowd boxes become difficult=1. Image and category ids are
  not kept (VOC has none: read back as 1..N and 1..C); the class order goes into labels.txt.
- YOLO: normalised cx cy w h with 12 significant digits (a box moves by under 1e-9 of the image
  side on the way back). Crowd/difficult boxes are left out (YOLO has no such flag) and counted
  in a warning; image and category ids are not kept.
- None keeps segmentations, areas or tool-specific fields.

Images are hard-linked where the file system allows, else copied: the same bytes either way.
VOC keeps one flat JPEGImages/: a file in a sub-folder becomes `<sub>_<name>`, and ids get a
`<split>_` prefix when two splits share a name (FashionDet's 000001.png in every split).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from detection.data.formats.voc import CLASS_LIST_FILE
from detection.data.formats.yolo import DATA_YAML
from detection.data.records import DetectionIndex, progress

log = logging.getLogger(__name__)

Splits = Mapping[str, tuple[DetectionIndex, Path]]  # split -> (index, the folder of its images)


def _number(value: float) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise FileExistsError(f"{target}: two images of the source map to this file; rename one")
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def _place_images(splits: Splits, target_of: Callable[[str, str], Path]) -> None:
    jobs = [
        (image_dir / r["file_name"], target_of(split, r["file_name"]))
        for split, (index, image_dir) in splits.items()
        for r in index.images
    ]
    for source, target in progress(jobs, "Writing images"):
        _place(source, target)


def write_coco(splits: Splits, out: Path) -> Path:
    """annotations/instances_<split>.json and <split>/ images under `out`."""
    for split, (index, _) in splits.items():
        annotations: list[dict[str, Any]] = []
        for row, record in enumerate(index.images):
            crowd = index.crowd_boxes[row] if index.crowd_boxes else []
            crowd_labels = index.crowd_labels[row] if index.crowd_labels else []
            entries = [(b, lab, 0) for b, lab in zip(index.boxes[row], index.labels[row])]
            entries += [(b, lab, 1) for b, lab in zip(crowd, crowd_labels)]
            for box, label, is_crowd in entries:
                x0, y0, x1, y1 = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record["id"],
                        "category_id": index.category_ids[int(label)],
                        "bbox": [_number(x0), _number(y0), _number(x1 - x0), _number(y1 - y0)],
                        "area": _number((x1 - x0) * (y1 - y0)),
                        "iscrowd": is_crowd,
                    }
                )
        payload = {
            "images": [{k: r[k] for k in ("id", "file_name", "width", "height")} for r in index.images],
            "annotations": annotations,
            "categories": [{"id": c, "name": n} for c, n in zip(index.category_ids, index.class_names)],
        }
        path = out / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))
    _place_images(splits, lambda split, name: out / split / name)
    return out


def _voc_ids(splits: Splits) -> dict[tuple[str, str], str]:
    """(split, file_name) -> VOC image id: the name without extension, flattened, unique."""
    flat = {
        (split, r["file_name"]): PurePosixPath(r["file_name"]).with_suffix("").as_posix().replace("/", "_")
        for split, (index, _) in splits.items()
        for r in index.images
    }
    values = list(flat.values())
    if len(set(values)) == len(values):
        return flat
    return {(split, name): f"{split}_{stem}" for (split, name), stem in flat.items()}


def _voc_xml(
    image_id: str, suffix: str, record: dict[str, Any], objects: list[tuple[Any, str, int]]
) -> ET.Element:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = image_id + suffix
    size = ET.SubElement(root, "size")
    for tag, value in (("width", record["width"]), ("height", record["height"]), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for box, name, difficult in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = name
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = "0"
        ET.SubElement(element, "difficult").text = str(difficult)
        bndbox = ET.SubElement(element, "bndbox")
        x0, y0, x1, y1 = (float(v) for v in box)
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, tag).text = repr(_number(value))
    ET.indent(root)
    return root


def write_voc(splits: Splits, out: Path) -> Path:
    """Annotations/, JPEGImages/, ImageSets/Main/<split>.txt and labels.txt under `out`."""
    ids = _voc_ids(splits)
    names = next(iter(splits.values()))[0].class_names
    (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    (out / CLASS_LIST_FILE).write_text("".join(f"{n}\n" for n in names))
    for split, (index, _) in splits.items():
        lines = []
        for row, record in enumerate(index.images):
            image_id = ids[(split, record["file_name"])]
            objects = [(b, names[int(lab)], 0) for b, lab in zip(index.boxes[row], index.labels[row])]
            if index.crowd_boxes:
                objects += [
                    (b, names[int(lab)], 1) for b, lab in zip(index.crowd_boxes[row], index.crowd_labels[row])
                ]
            suffix = PurePosixPath(record["file_name"]).suffix
            xml = ET.tostring(_voc_xml(image_id, suffix, record, objects), encoding="unicode")
            (out / "Annotations" / f"{image_id}.xml").write_text(xml + "\n", encoding="utf-8")
            lines.append(image_id)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in lines))

    def target(split: str, name: str) -> Path:
        return out / "JPEGImages" / (ids[(split, name)] + PurePosixPath(name).suffix)

    _place_images(splits, target)
    return out


def write_yolo(splits: Splits, out: Path) -> Path:
    """images/<split>/, labels/<split>/ (one file per image, empty for negatives) and data.yaml."""
    names = next(iter(splits.values()))[0].class_names
    left_out = 0
    for split, (index, _) in splits.items():
        for row, record in enumerate(index.images):
            width, height = record["width"], record["height"]
            lines = []
            for box, label in zip(index.boxes[row], index.labels[row]):
                x0, y0, x1, y1 = (float(v) for v in box)
                values = (
                    (x0 + x1) / 2 / width,
                    (y0 + y1) / 2 / height,
                    (x1 - x0) / width,
                    (y1 - y0) / height,
                )
                lines.append(f"{int(label)} " + " ".join(format(v, ".12g") for v in values))
            if index.crowd_boxes:
                left_out += len(index.crowd_boxes[row])
            path = out / "labels" / split / PurePosixPath(record["file_name"]).with_suffix(".txt")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{line}\n" for line in lines))
    data = {"path": ".", **{s: f"images/{s}" for s in splits}, "nc": len(names), "names": list(names)}
    (out / DATA_YAML).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    if left_out:
        log.warning("%s: left out %d crowd/difficult box(es): YOLO labels have no such flag", out, left_out)
    _place_images(splits, lambda split, name: out / "images" / split / name)
    return out


WRITERS: dict[str, Callable[[Splits, Path], Path]] = {
    "coco": write_coco,
    "voc": write_voc,
    "yolo": write_yolo,
}

# What the target layout does not keep (the module docstring has the details).
NOT_KEPT = {
    "coco": "segmentations and tool-specific fields; VOC/YOLO classes get category ids 1..C",
    "voc": "image and category ids (VOC has none), segmentations; decimal boxes stay decimal (VOC tools "
    "expect integers)",
    "yolo": "crowd/difficult boxes, image and category ids, segmentations; boxes become normalised "
    "floats (12 significant digits)",
}


def convert_data(datamodule: Any, to: str, out: str | Path) -> Path:
    """Every split of `datamodule` (a `DetectionDataModule`, any format) written as `to` under `out`.

    `out` must be a new or empty folder, so that no earlier file stays mixed with the new set.
    """
    if to not in WRITERS:
        raise ValueError(f"unknown target format {to!r}; choose one of {tuple(WRITERS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; convert into a new or empty folder")
    datamodule.check_splits(())
    splits = {split: (ds.index, ds.image_dir) for split, ds in datamodule.datasets.items()}
    return WRITERS[to](splits, out)
