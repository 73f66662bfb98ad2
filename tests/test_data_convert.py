"""Converting between COCO, VOC and YOLO: round trips keep every image, box and class, pycocotools
reads the results, and FashionDet read in each layout trains and scores the same."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    QUIET,
    csv_rows,
    hydra_job,
    isolated_environ,
    read_metrics,
    tiny,
    train_in_process,
)
from PIL import Image

from detection.data import DetectionDataModule
from detection.data.convert import convert_data


def _module(root: Path, format: str = "coco") -> DetectionDataModule:
    return DetectionDataModule(root=root, format=format, print_summary=False)


def _convert(root: Path, format: str, to: str, out: Path) -> Path:
    return convert_data(_module(root, format), to, out)


def _odd_coco(root: Path) -> Path:
    """A COCO set with what a conversion could lose: decimal boxes, a crowd box, a negative, a file
    in a sub-folder, category ids that are not 1..C, image ids that are not 1..N."""
    (root / "train" / "sub").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = [
        {"id": 7, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 3, "file_name": "sub/b.jpg", "width": 25, "height": 50},
        {"id": 9, "file_name": "empty.png", "width": 16, "height": 16},
    ]
    for record in images:
        Image.new("RGB", (record["width"], record["height"]), (90, 20, 30)).save(
            root / "train" / record["file_name"]
        )
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 12, "bbox": [1.25, 2.5, 10.125, 5.75], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 4, "bbox": [20, 10, 5, 5], "iscrowd": 0},
        {"id": 3, "image_id": 3, "category_id": 4, "bbox": [0, 0, 25, 50], "iscrowd": 0},
        {"id": 4, "image_id": 3, "category_id": 12, "bbox": [3, 4, 10, 10], "iscrowd": 1},
    ]
    categories = [{"id": 12, "name": "twelve"}, {"id": 4, "name": "four/4"}]
    payload = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(payload))
    return root


def _objects(root: Path, split: str = "train") -> dict[str, list[tuple[str, tuple[float, ...], int]]]:
    """Flattened file name (as a VOC id) -> sorted (class, XYWH box, iscrowd), read by pycocotools."""
    from pycocotools.coco import COCO

    coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    out = {}
    for image in coco.loadImgs(coco.getImgIds()):
        assert (root / split / image["file_name"]).is_file()
        key = Path(image["file_name"]).with_suffix("").as_posix().replace("/", "_")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"], iscrowd=None))
        out[key] = sorted((names[a["category_id"]], tuple(a["bbox"]), a["iscrowd"]) for a in anns)
    return out


def _same(a: dict, b: dict, tolerance: float, crowd: bool = True) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        left = [o for o in a[key] if crowd or not o[2]]
        right = [o for o in b[key] if crowd or not o[2]]
        assert [(n, c) for n, _, c in left] == [(n, c) for n, _, c in right], key
        for (_, box_a, _), (_, box_b, _) in zip(left, right):
            assert np.allclose(box_a, box_b, rtol=0, atol=tolerance), (key, box_a, box_b)


def test_coco_voc_coco_keeps_every_image_box_and_class(tmp_path: Path) -> None:
    source = _odd_coco(tmp_path / "coco")
    voc = _convert(source, "coco", "voc", tmp_path / "voc")
    assert (voc / "labels.txt").read_text() == "four/4\ntwelve\n"  # the labels' order (COCO ids sorted)
    back = _convert(voc, "voc", "coco", tmp_path / "back")
    _same(_objects(source), _objects(back), 1e-9)  # the crowd box too: crowd -> difficult -> crowd
    categories = json.loads((back / "annotations" / "instances_train.json").read_text())["categories"]
    assert [(c["id"], c["name"]) for c in categories] == [(1, "four/4"), (2, "twelve")]  # ids 1..C


def test_coco_yolo_coco_keeps_every_image_box_and_class(tmp_path: Path) -> None:
    source = _odd_coco(tmp_path / "coco")
    yolo = _convert(source, "coco", "yolo", tmp_path / "yolo")
    assert (yolo / "labels" / "train" / "empty.txt").read_text() == ""  # a negative
    assert (yolo / "images" / "train" / "sub" / "b.jpg").read_bytes() == (
        source / "train" / "sub" / "b.jpg"
    ).read_bytes()
    back = _convert(yolo, "yolo", "coco", tmp_path / "back")
    _same(_objects(source), _objects(back), 1e-6, crowd=False)  # YOLO has no crowd flag: left out


def test_fashiondet_round_trips_are_exact(fashiondet_small_root: Path, tmp_path: Path) -> None:
    for layout in ("voc", "yolo"):
        converted = _convert(fashiondet_small_root, "coco", layout, tmp_path / layout)
        back = _convert(converted, layout, "coco", tmp_path / f"{layout}_back")
        for split in ("train", "val", "test"):
            strip = (lambda k: k.split("_", 1)[1]) if layout == "voc" else (lambda k: k)  # VOC: split_ prefix
            _same(
                _objects(fashiondet_small_root, split),
                {strip(k): v for k, v in _objects(back, split).items()},
                0.0,
            )


def test_convert_refuses_a_folder_in_use(fashiondet_small_root: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        _convert(fashiondet_small_root, "coco", "voc", tmp_path / "out")


# ------------------------------------------------------------------ the same training from any layout
@pytest.fixture
def _offline(tmp_path: Path) -> Iterator[None]:
    with isolated_environ(tmp_path):
        yield


def _overrides(data: str, root: Path, log_dir: Path, *extra: str) -> list[str]:
    """`tiny` without the FashionDet generator: ten batches of four, the loss logged every step."""
    shared = [o for o in tiny(root, log_dir, limits=False) if not o.startswith("data.generate")]
    return [
        f"data={data}",
        *shared,
        *QUIET,
        "data.num_workers=0",
        "seed=3",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=10",
        "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=1",
        "model.detector.score_thresh=0.0",
        "task_name=" + data,
        *extra,
    ]


def _losses(run_dir: Path) -> list[float]:
    return [float(r["train/loss"]) for r in csv_rows(run_dir) if r.get("train/loss")]


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.usefixtures("_offline")
def test_fashiondet_trains_and_scores_the_same_from_every_layout(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    roots = {"coco": fashiondet_small_root}
    for layout in ("voc", "yolo"):
        roots[layout] = _convert(fashiondet_small_root, "coco", layout, tmp_path / layout)
    losses, runs = {}, {}
    for layout, root in roots.items():
        test = "test=true" if layout == "coco" else "test=false"
        # no data.num_classes: it comes from the data (COCO categories, VOC labels.txt, YOLO data.yaml)
        runs[layout], _ = train_in_process(_overrides(layout, root, tmp_path / "logs", test))
        losses[layout] = _losses(runs[layout])
    assert len(losses["coco"]) == 10
    for layout in ("voc", "yolo"):
        assert np.allclose(losses[layout], losses["coco"], rtol=0, atol=1e-4), (layout, losses)
    trained = read_metrics(runs["coco"])
    checkpoint = trained["best_checkpoint"]
    from detection import pipelines
    from detection.runtime.launch import job

    scored = {"coco": trained["test/mAP"]}
    for layout in ("voc", "yolo"):
        overrides = [
            f"data={layout}",
            f"data.root={roots[layout]}",
            f"ckpt_path={checkpoint}",
            f"paths.log_dir={tmp_path / 'eval_logs'}",
            "data.print_summary=false",
            "data.num_workers=0",
            "data.eval_batch_size=4",
            "trainer.enable_progress_bar=false",
            "extras.num_threads=1",
            "extras.print_config=false",
        ]
        with hydra_job(overrides, config_name="eval") as cfg:
            metrics = job(pipelines.evaluate)(cfg)
        scored[layout] = metrics["test/mAP"]
        assert math.isclose(metrics["test/mAP"], trained["test/mAP"], rel_tol=0, abs_tol=1e-4), layout
        assert math.isclose(metrics["test/mAR_100"], trained["test/mAR_100"], rel_tol=0, abs_tol=1e-4), layout
    gaps = {k: float(np.abs(np.subtract(losses[k], losses["coco"])).max()) for k in ("voc", "yolo")}
    print("losses", losses["coco"], "largest gaps", gaps, "test/mAP", scored)
