"""YOLO: images/ + labels/ + data.yaml, names as a list or a dict, negatives from empty or missing
label files, coordinates clipped and counted, and one clear line for every bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detection.data import DetectionDataModule, YoloFormatError


def _write(
    root: Path,
    labels: dict[str, str],
    images: dict[str, tuple[int, int]] | None = None,
    data_yaml: str = "names: [cat, dog]\n",
    split: str = "train",
) -> Path:
    images = images if images is not None else {"a.png": (40, 20), "b.jpg": (10, 10), "c.png": (8, 8)}
    for file_name, size in images.items():
        path = root / "images" / split / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (10, 200, 30)).save(path)
    for stem, text in labels.items():
        path = root / "labels" / split / f"{stem}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "data.yaml").write_text(data_yaml)
    return root


def _train(root: Path, **kwargs: object) -> DetectionDataModule:
    module = DetectionDataModule(root=root, format="yolo", print_summary=False, **kwargs)
    module.check_splits(["train"])
    return module


def test_layout_names_and_negatives(tmp_path: Path) -> None:
    # a.png 40x20: one dog filling the left half; b.jpg: empty label file; c.png: no label file
    root = _write(tmp_path, {"a": "1 0.25 0.5 0.5 1.0\n\n0 0.75 0.25 0.1 0.2\n", "b": ""})
    module = _train(root)
    dataset = module.datasets["train"]
    assert module.class_names == ["cat", "dog"] and dataset.image_ids == [1, 2, 3]
    assert [r["file_name"] for r in dataset.images] == ["a.png", "b.jpg", "c.png"]
    assert dataset.index.boxes[0].tolist() == [[0.0, 0.0, 20.0, 20.0], [28.0, 3.0, 32.0, 7.0]]
    assert dataset.index.labels[0].tolist() == [1, 0]
    assert (
        dataset.stats.negatives == 2 and dataset.stats.boxes == 2 and dataset.stats.boxes_per_class == [1, 1]
    )


def test_names_as_a_dict_and_other_folders(tmp_path: Path) -> None:
    data_yaml = "train: ../train/images\nnc: 3\nnames:\n  0: cat\n  1: dog\n  2: bird\n"
    root = tmp_path / "set"
    for split in ("train", "valid"):
        folder = root / split / "images"
        folder.mkdir(parents=True)
        Image.new("RGB", (10, 10)).save(folder / "x.png")
        (root / split / "labels").mkdir()
        (root / split / "labels" / "x.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(data_yaml + "val: ../valid/images\n")
    module = DetectionDataModule(root=root, format="yolo", print_summary=False)
    module.check_splits(["train", "val"])
    assert module.class_names == ["cat", "dog", "bird"]
    assert module.datasets["val"].index.labels[0].tolist() == [2]


def test_coordinates_outside_are_clipped_and_counted(tmp_path: Path) -> None:
    root = _write(tmp_path, {"a": "0 0.05 0.5 0.2 0.5\n0 0.5 1.1 0.4 0.4\n"})
    dataset = _train(root).datasets["train"]
    assert dataset.stats.clipped == 2
    assert np.allclose(dataset.index.boxes[0], [[0, 5, 6, 15], [12, 18, 28, 20]], rtol=0, atol=1e-9)


def _message(root: Path) -> str:
    with pytest.raises(YoloFormatError) as info:
        _train(root)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0 0.5 0.5 0.2\n", "line 1: expected 5 fields 'class cx cy w h', got 4"),
        ("0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.2 0.1 0.3 0.3 0.1\n", "line 2: expected 5 fields"),
        ("2 0.5 0.5 0.2 0.2\n", "line 1: class index 2 is out of range: data.yaml names 2 classes"),
        ("-1 0.5 0.5 0.2 0.2\n", "class index -1 is out of range"),
        ("dog 0.5 0.5 0.2 0.2\n", "line 1: expected an integer class and four numbers"),
        ("0 0.5 0.5 0 0.2\n", "line 1: 'cx cy w h' = 0.5 0.5 0 0.2 has zero or negative width"),
        ("0 0.5 nan 0.2 0.2\n", "has non-finite coordinates"),
        ("0 1.5 1.5 0.2 0.2\n", "lies entirely outside its 40x20 image"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    root = _write(tmp_path, {"a": text})
    message = _message(root)
    assert message.startswith(str(root / "labels" / "train" / "a.txt")) and expected in message


def test_label_file_without_image(tmp_path: Path) -> None:
    root = _write(tmp_path, {"a": "", "zz": "0 0.5 0.5 0.1 0.1\n", "classes": "cat\ndog\n"})
    message = _message(root)
    assert message.startswith(f"{root / 'labels' / 'train' / 'zz.txt'}: label file with no image")


@pytest.mark.parametrize(
    "data_yaml, expected",
    [
        ("names: [cat, dog\n", "data.yaml: not valid YAML at line 2"),
        ("nc: 2\n", "needs a `names` entry"),
        ("names: {0: cat, 2: dog}\n", "`names` keys must be the class indices 0..1"),
        ("nc: 3\nnames: [cat, dog]\n", "nc: 3 but `names` lists 2 classes"),
    ],
)
def test_bad_data_yaml(tmp_path: Path, data_yaml: str, expected: str) -> None:
    root = _write(tmp_path, {}, data_yaml=data_yaml)
    message = _message(root)
    assert message.startswith(str(root / "data.yaml")) and expected in message


def test_without_data_yaml_the_names_can_be_given(tmp_path: Path) -> None:
    root = _write(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"})
    (root / "data.yaml").unlink()
    assert "data.yaml: not found" in _message(root)
    assert _train(root, class_names=["x", "y"]).class_names == ["x", "y"]


def test_given_names_must_match_data_yaml(tmp_path: Path) -> None:
    root = _write(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"})
    assert _train(root, class_names=["cat", "dog"]).class_names == ["cat", "dog"]
    with pytest.raises(
        ValueError, match=r"classes \['cat', 'dog'\] differ from data.class_names=\['dog', 'cat'\]"
    ):
        _train(root, class_names=["dog", "cat"])


def test_missing_split_says_the_yolo_layout(tmp_path: Path) -> None:
    module = DetectionDataModule(root=_write(tmp_path, {}), format="yolo", print_summary=False)
    with pytest.raises(FileNotFoundError, match=r"its image folder .*images/val does not exist.*images/val/"):
        module.setup("fit")
