"""Look before you train: scripts/inspect_data.py prints the summary and writes three pictures; a bad
file of any format ends it with one line naming the file and the record, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_reliability_support import run_script as run_as_user  # HYDRA_FULL_ERROR unset

from detection.data import DetectionDataModule
from detection.data.convert import convert_data
from detection.data.inspection import inspect_data


def test_three_pictures(fashiondet_small_root: Path, tmp_path: Path) -> None:
    module = DetectionDataModule(root=fashiondet_small_root, print_summary=False)
    pictures = inspect_data(module, tmp_path / "out", num_images=6, anchor_sizes=[16, 32, 64])
    assert sorted(pictures) == ["box_sizes", "classes", "samples"]
    assert pictures["samples"].name == "samples_train.png"
    for path in pictures.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200, path


def _break_voc(root: Path) -> str:
    xml = root / "Annotations" / "train_000003.xml"
    xml.write_text(xml.read_text()[:200])
    return f"VocFormatError: {xml}: not well-formed XML at line"


def _break_yolo(root: Path) -> str:
    label = root / "labels" / "val" / "000002.txt"
    label.write_text(label.read_text() + "3 0.5 0.5\n")
    return f"YoloFormatError: {label}: line "


@pytest.mark.slow  # a subprocess each: the script's last line as a user sees it
@pytest.mark.parametrize("layout", ["voc", "yolo"])
def test_bad_file_ends_in_one_line(fashiondet_small_root: Path, tmp_path: Path, layout: str) -> None:
    module = DetectionDataModule(root=fashiondet_small_root, print_summary=False)
    root = convert_data(module, layout, tmp_path / "set")
    expected = {"voc": _break_voc, "yolo": _break_yolo}[layout](root)
    result = run_as_user("inspect_data", [f"data={layout}", f"data.root={root}"], tmp_path, timeout=120)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(expected), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
