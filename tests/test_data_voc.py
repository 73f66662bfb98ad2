"""Pascal VOC: the standard layout, exact 1-based coordinates, difficult objects kept aside, the class
list found or given, and one clear line for every bad file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from rich.console import Console

from detection.data import DetectionDataModule, VocFormatError


def _object(name: str, box: tuple, difficult: int = 0) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
        f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def _xml(file_name: str, objects: list[str], size: tuple[int, int] | None = (40, 30)) -> str:
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    )
    return f"<annotation><filename>{file_name}</filename>{size_xml}{''.join(objects)}</annotation>\n"


def _write(
    root: Path, annotations: dict[str, str], images: dict[str, tuple[int, int]], split: list[str]
) -> Path:
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, text in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(text)
    for file_name, size in images.items():
        Image.new("RGB", size, (200, 100, 50)).save(root / "JPEGImages" / file_name)
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{line}\n" for line in split))
    return root


def _standard(root: Path) -> Path:
    """000005.jpg (40x30): a dog, a difficult cat; 000007.png (20x10): no object, no <size>."""
    annotations = {
        "000005": _xml(
            "000005.jpg", [_object("dog", (1, 1, 10, 5)), _object("cat", (5, 5, 20, 20), difficult=1)]
        ),
        "000007": _xml("000007.png", [], size=None),
    }
    return _write(root, annotations, {"000005.jpg": (40, 30), "000007.png": (20, 10)}, ["000005", "000007"])


def _train(root: Path, **kwargs: object) -> DetectionDataModule:
    module = DetectionDataModule(root=root, format="voc", print_summary=False, **kwargs)
    module.check_splits(["train"])
    return module


def test_standard_layout(tmp_path: Path) -> None:
    module = _train(_standard(tmp_path))
    dataset = module.datasets["train"]
    assert module.class_names == ["cat", "dog"] and module.num_classes == 2  # found, sorted
    assert dataset.image_ids == [1, 2] and [r["file_name"] for r in dataset.images] == [
        "000005.jpg",
        "000007.png",
    ]
    assert (dataset.images[1]["width"], dataset.images[1]["height"]) == (20, 10)  # read from the image
    # 1-based inclusive pixels -> continuous: (1, 1, 10, 5) covers pixels 0..9 x 0..4
    assert dataset.index.boxes[0].tolist() == [[0.0, 0.0, 10.0, 5.0]]
    assert dataset.index.labels[0].tolist() == [1]
    assert dataset.stats.crowd == 1 and dataset.stats.boxes == 1 and dataset.stats.negatives == 1
    assert dataset.index.crowd_boxes[0].tolist() == [[4.0, 4.0, 20.0, 20.0]]  # difficult: kept aside
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and target["boxes"].dtype == torch.float32
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(module.summary())
    assert "crowd / difficult (left out) │     1" in console.export_text()


def test_whole_image_box_is_the_image(tmp_path: Path) -> None:
    root = _write(tmp_path, {"a": _xml("a.png", [_object("x", (1, 1, 40, 30))])}, {"a.png": (40, 30)}, ["a"])
    dataset = _train(root).datasets["train"]
    assert dataset.index.boxes[0].tolist() == [[0.0, 0.0, 40.0, 30.0]] and dataset.stats.clipped == 0


def test_class_list_from_labels_txt_or_given(tmp_path: Path) -> None:
    root = _standard(tmp_path)
    (root / "labels.txt").write_text("dog\ncat\nbird\n")
    module = _train(root)
    assert module.class_names == ["dog", "cat", "bird"] and module.datasets["train"].index.labels[
        0
    ].tolist() == [0]
    assert _train(root, class_names=["bird", "dog", "cat"]).datasets["train"].index.labels[0].tolist() == [1]
    with pytest.raises(ValueError, match=r"has 3 categories but data.num_classes=5"):
        _train(root, num_classes=5)


def _message(root: Path, **kwargs: object) -> str:
    with pytest.raises(VocFormatError) as info:
        _train(root, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_malformed_xml_names_file_and_line(tmp_path: Path) -> None:
    root = _standard(tmp_path)
    (root / "Annotations" / "000007.xml").write_text(
        "<annotation>\n<filename>000007.png</filename>\n<size>\n"
    )
    message = _message(root)
    assert message.startswith(f"{root / 'Annotations' / '000007.xml'}: not well-formed XML at line 4")
    assert "train.txt, line 2" in message


def test_unknown_class_names_the_object(tmp_path: Path) -> None:
    root = _standard(tmp_path)
    message = _message(root, class_names=["dog", "bird"])
    assert message.startswith(f"{root / 'Annotations' / '000005.xml'}: object #1 ('cat'): class 'cat' is not")
    assert "data.class_names: ['dog', 'bird']" in message


def test_stray_class_against_num_classes_names_the_class_and_its_xml(tmp_path: Path) -> None:
    # classes from the annotations: a stray 'hat' makes 3 where data.num_classes says 2
    objects = {"000005": ["dog", "cat"], "000006": ["dog", "cat"], "000009": ["hat"]}
    annotations = {
        i: _xml(f"{i}.jpg", [_object(n, (1, 1, 10, 5)) for n in names]) for i, names in objects.items()
    }
    root = _write(tmp_path, annotations, {f"{i}.jpg": (40, 30) for i in objects}, list(objects))
    with pytest.raises(ValueError) as info:
        _train(root, num_classes=2)
    message = str(info.value)
    assert "has 3 categories but data.num_classes=2" in message and "\n" not in message
    stray = message.split("classes in the data but not expected")[1]
    assert f"'hat' (1 box, first in {root / 'Annotations' / '000009.xml'})" in stray
    assert "'dog'" not in stray and "'cat'" not in stray  # two boxes each: not the likeliest strays


def test_listed_image_missing_names_the_split_line(tmp_path: Path) -> None:
    root = _standard(tmp_path)
    (root / "JPEGImages" / "000007.png").unlink()
    message = _message(root)
    assert message.startswith(
        f"{root / 'ImageSets' / 'Main' / 'train.txt'}, line 2: image '000007' is listed"
    )
    assert str(root / "JPEGImages") in message


def test_listed_id_without_annotation(tmp_path: Path) -> None:
    root = _standard(tmp_path)
    (root / "ImageSets" / "Main" / "train.txt").write_text("000005\n\n000009\n")
    message = _message(root)
    assert message.startswith(f"{root / 'ImageSets' / 'Main' / 'train.txt'}, line 3: no annotation file")


@pytest.mark.parametrize(
    "obj, expected",
    [
        (
            "<object><name>dog</name><bndbox><xmin>a</xmin></bndbox></object>",
            "object #0 ('dog'): <bndbox> needs",
        ),
        (_object("dog", (5, 5, 3, 9)), "zero or negative width"),
        (_object("dog", (50, 1, 60, 9)), "lies entirely outside its 40x30 image"),
        (_object("dog", (1, 1, 4, 4), difficult=2), "<difficult> must be 0 or 1"),
        ("<object><bndbox/></object>", "object #0 has no <name>"),
    ],
)
def test_bad_object_names_file_and_object(tmp_path: Path, obj: str, expected: str) -> None:
    root = _write(tmp_path, {"a": _xml("a.png", [obj])}, {"a.png": (40, 30)}, ["a"])
    message = _message(root, class_names=["dog"])
    assert message.startswith(str(root / "Annotations" / "a.xml")) and expected in message


def test_box_partly_outside_is_clipped_and_counted(tmp_path: Path) -> None:
    root = _write(
        tmp_path, {"a": _xml("a.png", [_object("dog", (30, 20, 50, 35))])}, {"a.png": (40, 30)}, ["a"]
    )
    dataset = _train(root).datasets["train"]
    assert dataset.stats.clipped == 1 and dataset.index.boxes[0].tolist() == [[29.0, 19.0, 40.0, 30.0]]


def test_missing_split_says_the_voc_layout(tmp_path: Path) -> None:
    module = DetectionDataModule(root=_standard(tmp_path), format="voc", print_summary=False)
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val.txt \+ Annotations/ \+ JPEGImages/"):
        module.setup("fit")
