"""COCO reader (through the reader path the data module uses): every bad-input case ends in a message
naming file, record and fix; odd images decode."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from detection.data import CocoFormatError, DetectionDataModule, DetectionDataset, make_reader, read_image


def _coco(
    image_dir: Path, ann_file: Path, *, invalid_boxes: str = "error", cache_images: bool = False
) -> DetectionDataset:
    """The split `ann_file` + `image_dir` as the data module reads it (`SplitReader.dataset`)."""
    reader = make_reader(
        "coco", None, {"train": (str(ann_file), str(image_dir))}, invalid_boxes=invalid_boxes
    )
    return reader.dataset("train", cache_images=cache_images)


def _write_set(
    tmp_path: Path,
    images: list[dict] | None = None,
    annotations: list[dict] | None = None,
    categories: list[dict] | None = None,
    make_files: bool = True,
) -> tuple[Path, Path]:
    """A tiny COCO set: 3 images of 40x30 (the third without boxes), categories 3 and 7."""
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    if images is None:
        images = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30} for i in (1, 2, 3)]
    if annotations is None:
        annotations = [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [20, 10, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 1},
        ]
    if categories is None:
        categories = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    if make_files:
        for record in images:
            Image.new("RGB", (record["width"], record["height"]), (10, 20, 30)).save(
                image_dir / record["file_name"]
            )
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return image_dir, ann_file


def _error(tmp_path: Path, **kwargs: Any) -> str:
    image_dir, ann_file = _write_set(tmp_path, **kwargs)
    with pytest.raises(CocoFormatError) as info:
        _coco(image_dir, ann_file)
    message = str(info.value)
    assert str(ann_file) in message
    return message


def _ann(**changes: Any) -> list[dict]:
    base = {"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}
    return [{**base, **changes}]


def test_good_set_maps_categories_and_keeps_negatives(tmp_path: Path) -> None:
    image_dir, ann_file = _write_set(tmp_path)
    dataset = _coco(image_dir, ann_file)
    assert dataset.class_names == ["three", "seven"]  # sorted by category id
    assert dataset.category_ids == [3, 7] and dataset.num_classes == 2
    assert dataset.image_ids == [1, 2, 3] and len(dataset) == 3
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [1, 0]
    assert target["boxes"].tolist() == [[1, 2, 11, 7], [20, 10, 25, 15]]
    assert target["image_id"] == 1
    stats = dataset.stats
    assert (stats.images, stats.boxes, stats.crowd, stats.negatives) == (3, 2, 1, 2)  # crowd-only image 2 too
    assert stats.boxes_per_class == [1, 1]
    assert dataset[2][1]["boxes"].shape == (0, 4)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not a text JSON file"),
        (b"{'images': []}", "not valid JSON"),
        (b"[1, 2, 3]", "top level is a JSON list"),
        (b'{"images": [], "annotations": []}', "missing key(s) ['categories']"),
        (b'{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
    ],
)
def test_not_coco(tmp_path: Path, content: bytes, expected: str) -> None:
    ann_file = tmp_path / "broken.json"
    ann_file.write_bytes(content)
    with pytest.raises(CocoFormatError) as info:
        _coco(tmp_path, ann_file)
    assert str(ann_file) in str(info.value) and expected in str(info.value)


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match="annotation file not found"):
        _coco(tmp_path, tmp_path / "nope.json")


def test_record_type_errors(tmp_path: Path) -> None:
    assert "'width' and 'height' must be positive integers" in _error(
        tmp_path, images=[{"id": 1, "file_name": "1.png", "width": 40}], annotations=[], make_files=False
    )
    assert "'file_name' must be a non-empty string" in _error(
        tmp_path,
        images=[{"id": 1, "file_name": "", "width": 4, "height": 4}],
        annotations=[],
        make_files=False,
    )
    assert "bbox must be a list of 4 numbers" in _error(tmp_path, annotations=_ann(bbox=[1, 2, 3]))
    assert "missing key 'bbox'" in _error(tmp_path, annotations=[{"id": 5, "image_id": 1, "category_id": 3}])
    assert "category #0" in _error(tmp_path, categories=[{"id": "a", "name": "x"}])


def test_missing_image_file_named_at_load(tmp_path: Path) -> None:
    image_dir, ann_file = _write_set(tmp_path)
    (image_dir / "2.png").unlink()
    with pytest.raises(CocoFormatError) as info:
        _coco(image_dir, ann_file)
    message = str(info.value)
    assert "'2.png' (image id 2)" in message and str(image_dir) in message and "1 of 3" in message


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_named_at_read(tmp_path: Path, damage: str) -> None:
    image_dir, ann_file = _write_set(tmp_path)
    path = image_dir / "2.png"
    if damage == "garbage":
        path.write_bytes(b"this is not an image at all")
    else:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    dataset = _coco(image_dir, ann_file)  # existence is all that is checked up front
    with pytest.raises(CocoFormatError) as info:
        dataset[1]
    message = str(info.value)
    assert str(path) in message and "image id 2" in message and "cannot read image" in message


def test_unknown_image_and_category(tmp_path: Path) -> None:
    message = _error(tmp_path, annotations=_ann(image_id=99))
    assert "annotation id 5" in message and "image_id 99 matches no image" in message
    message = _error(tmp_path, annotations=_ann(category_id=4))
    assert "annotation id 5" in message and "category_id 4 is not in 'categories'" in message
    assert "[3, 7]" in message


@pytest.mark.parametrize("bbox", [[float("nan"), 1, 4, 4], [1, 1, float("inf"), 4]])
def test_non_finite_box(tmp_path: Path, bbox: list[float]) -> None:
    message = _error(tmp_path, annotations=_ann(bbox=bbox))
    assert "annotation id 5 (image id 1, file '1.png')" in message and "non-finite" in message
    assert "invalid_boxes=drop" in message


@pytest.mark.parametrize("bbox", [[1, 1, 0, 4], [1, 1, 4, -2]])
def test_empty_box(tmp_path: Path, bbox: list[float]) -> None:
    message = _error(tmp_path, annotations=_ann(bbox=bbox))
    assert "annotation id 5" in message and "zero or negative width or height" in message


def test_box_outside_is_clipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image_dir, ann_file = _write_set(tmp_path, annotations=_ann(bbox=[-3, 20, 10, 20]))
    with caplog.at_level(logging.WARNING):
        dataset = _coco(image_dir, ann_file)
    assert dataset.stats.clipped == 1
    assert dataset[0][1]["boxes"].tolist() == [[0, 20, 7, 30]]
    assert "clipped 1 box" in caplog.text and "annotation id 5" in caplog.text


def test_box_wholly_outside_refused_or_error(tmp_path: Path) -> None:
    assert "lies entirely outside its 40x30 image" in _error(tmp_path, annotations=_ann(bbox=[50, 1, 5, 5]))
    image_dir, ann_file = _write_set(
        tmp_path,
        annotations=_ann(bbox=[50, 1, 5, 5])
        + [
            {"id": 6, "image_id": 1, "category_id": 3, "bbox": [1, 1, 0, 0]},
            {"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 3, 3]},
        ],
    )
    dataset = _coco(image_dir, ann_file, invalid_boxes="drop")
    assert dataset.stats.refused == 2 and dataset.stats.boxes == 1


def test_duplicate_ids(tmp_path: Path) -> None:
    images = [
        {"id": 1, "file_name": "a.png", "width": 8, "height": 8},
        {"id": 1, "file_name": "b.png", "width": 8, "height": 8},
    ]
    message = _error(tmp_path, images=images, annotations=[])
    assert "duplicate image id 1" in message and "'a.png'" in message and "'b.png'" in message
    message = _error(tmp_path, annotations=_ann() + _ann())
    assert "annotation id 5: duplicate annotation id" in message


def test_size_mismatch_named(tmp_path: Path) -> None:
    image_dir, ann_file = _write_set(tmp_path)
    Image.new("RGB", (30, 40)).save(image_dir / "1.png")
    with pytest.raises(CocoFormatError, match=r"1.png: decodes to 30x40 .* says 40x30"):
        _coco(image_dir, ann_file)[0]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "1"])
def test_any_image_mode_becomes_rgb_uint8(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    if mode == "I;16":
        grey = np.full((6, 5), 65535, np.uint16)
        grey[0, 0] = 257 * 100
        Image.fromarray(grey).save(path)
    elif mode == "P":
        image = Image.new("RGB", (5, 6), (200, 30, 10)).quantize(4)
        image.info["transparency"] = 0
        image.save(path, transparency=0)
    else:
        Image.new(mode, (5, 6), 255 if mode in ("L", "1") else (200, 30, 10, 255)[: len(mode)]).save(path)
    out = read_image(path)
    assert out.shape == (3, 6, 5) and out.dtype == torch.uint8
    if mode == "I;16":
        assert out[:, 0, 0].tolist() == [100, 100, 100] and out[:, 1, 1].tolist() == [255, 255, 255]
    if mode in ("RGBA", "P"):
        assert out[:, 2, 2].tolist() == [200, 30, 10]


def test_exif_rotation_keeps_boxes_on_the_object(tmp_path: Path) -> None:
    # Stored pixels 60 wide x 40 high, red block at x 40..59, y 0..19. EXIF orientation 6 means
    # "rotate 90 degrees clockwise to display": shown 40 wide x 60 high, the block at x 20..39, y 40..59.
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[0:20, 40:60] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    Image.fromarray(stored).save(image_dir / "rot.jpg", exif=exif.tobytes(), quality=95)
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "rot.jpg", "width": 40, "height": 60}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 40, 20, 20]}],
                "categories": [{"id": 1, "name": "block"}],
            }
        )
    )
    image, target = _coco(image_dir, ann_file)[0]
    assert image.shape == (3, 60, 40)
    x0, y0, x1, y1 = (int(v) for v in target["boxes"][0])
    inside = image[:, y0:y1, x0:x1].float().mean(dim=(1, 2))
    assert inside[0] > 200 and inside[1] < 50  # the box holds the red block
    assert image[0].float().mean() < 80  # and the rest is dark


def test_class_mismatch_names_the_class_and_the_file(tmp_path: Path) -> None:
    # a stray category 'hat' (one box) beside 'three' and 'seven' (two boxes each)
    box = {"area": 4, "iscrowd": 0, "bbox": [1, 1, 2, 2]}
    annotations = [
        {**box, "id": i, "image_id": 1 + i % 2, "category_id": c} for i, c in enumerate((3, 3, 7, 7, 9), 1)
    ]
    categories = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 9, "name": "hat"}]
    image_dir, ann_file = _write_set(tmp_path, annotations=annotations, categories=categories)
    files = {"train_ann": str(ann_file), "train_images": str(image_dir), "print_summary": False}
    for expected, stray in (
        ({"num_classes": 2}, "classes in the data but not expected"),
        ({"class_names": ["three", "seven"]}, "classes in the data but not in data.class_names"),
    ):
        with pytest.raises(ValueError) as info:
            DetectionDataModule(**files, **expected).check_splits(["train"])
        message = str(info.value)
        assert stray in message and "\n" not in message
        named = message.split(stray)[1]
        assert "'hat' (" in named and f"first in {ann_file})" in named
        assert "'three'" not in named and "'seven'" not in named


def test_cache_images_gives_the_same_items(tmp_path: Path) -> None:
    image_dir, ann_file = _write_set(tmp_path)
    cached = _coco(image_dir, ann_file, cache_images=True)
    for path in image_dir.iterdir():
        path.unlink()  # decoded already: files no longer needed
    plain_image = cached[0][0]
    assert plain_image.shape == (3, 30, 40) and int(plain_image[2, 0, 0]) == 30
