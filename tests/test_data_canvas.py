"""FashionDet generator: determinism, split separation, exact boxes, caching, COCO compatibility."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detection.data import FASHION_MNIST_CLASSES, FASHIONDET_PRESETS, load_fashion_mnist, make_fashiondet
from detection.data.fashiondet import PARAMS_FILE, render_records, resolve_params
from detection.data.fashiondet.compose import Layer, load_photo, photo_regions, render_canvas
from detection.data.fashiondet.params import ITEM_POOLS, SPLITS

REPO = Path(__file__).resolve().parents[1]


def _digests(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _by_image(coco: dict) -> dict[int, list[dict]]:
    anns: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        anns[ann["image_id"]].append(ann)
    return anns


def test_layout_and_counts(fashiondet_small_root: Path) -> None:
    root = fashiondet_small_root
    sizes = FASHIONDET_PRESETS["small"]
    for split in SPLITS:
        coco = _load(root, split)
        assert len(coco["images"]) == sizes[f"num_{split}"]
        assert [c["name"] for c in coco["categories"]] == list(FASHION_MNIST_CLASSES)
        assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
        for image in coco["images"]:
            assert (root / split / image["file_name"]).is_file()
            assert (image["width"], image["height"]) == (128, 128)
        per_image = _by_image(coco)
        assert all(1 <= len(anns) <= 6 for anns in per_image.values())
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and ann["area"] == w * h
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
            assert ann["visible_pixels"] > 0
            assert 16 <= ann["long_side"] <= 64
    params = json.loads((root / PARAMS_FILE).read_text())
    assert params["params"]["num_train"] == sizes["num_train"] and params["params"]["seed"] == 0


def test_same_seed_same_bytes_any_worker_count(fashiondet_small_root: Path, tmp_path: Path) -> None:
    again = make_fashiondet(tmp_path / "again", preset="small", seed=0, workers=2)
    assert _digests(again) == _digests(fashiondet_small_root)
    other = make_fashiondet(tmp_path / "other", preset="small", seed=1, num_train=4, num_val=2, num_test=2)
    first = (fashiondet_small_root / "train" / "000001.png").read_bytes()
    assert (other / "train" / "000001.png").read_bytes() != first


def test_split_separation(fashiondet_small_root: Path) -> None:
    used: dict[str, set[int]] = {}
    crops: dict[str, list[tuple[str, list[int]]]] = {}
    for split in SPLITS:
        coco = _load(fashiondet_small_root, split)
        source, first, end = ITEM_POOLS[split]
        _, labels = load_fashion_mnist(source)
        for ann in coco["annotations"]:
            assert ann["source_split"] == source
            assert first <= ann["source_index"] < end
            # the category is the real Fashion-MNIST label of the item used
            assert ann["category_id"] == int(labels[ann["source_index"]]) + 1
        used[split] = {ann["source_index"] for ann in coco["annotations"]}
        for image in coco["images"]:
            assert image["photo_region"] == split
            height, width = load_photo(image["photo"]).shape[:2]
            rx0, ry0, rx1, ry1 = photo_regions(height, width, 0.7)[split]
            x0, y0, x1, y1 = image["photo_box"]
            assert rx0 <= x0 < x1 <= rx1 and ry0 <= y0 < y1 <= ry1
        crops[split] = [(image["photo"], image["photo_box"]) for image in coco["images"]]
    assert FASHIONDET_PRESETS["small"]["num_train"] == len(crops["train"])
    assert not used["val"] & used["test"]
    # no train crop touches a val or test crop of the same photo
    for photo, (a0, b0, a1, b1) in crops["train"]:
        for split in ("val", "test"):
            for other, (c0, d0, c1, d1) in crops[split]:
                assert other != photo or min(a1, c1) <= max(a0, c0) or min(b1, d1) <= max(b0, d0)


def test_boxes_are_tight_boxes_of_visible_pixels(fashiondet_small_root: Path) -> None:
    params = json.loads((fashiondet_small_root / PARAMS_FILE).read_text())["params"]
    threshold = params["visible_alpha"]
    occluded = 0
    for split in ("train", "val"):
        coco = _load(fashiondet_small_root, split)
        per_image = _by_image(coco)
        for record in coco["images"][:12]:
            anns = per_image[record["id"]]
            image, shares, _ = render_records(record, anns, params)
            # the records describe exactly the image on disk ...
            on_disk = np.asarray(
                Image.open(fashiondet_small_root / split / record["file_name"]).convert("RGB")
            )
            assert np.array_equal(image, on_disk)
            for ann, share in zip(anns, shares):
                visible = share >= threshold
                rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
                x, y, w, h = ann["bbox"]
                # ... and each box is the tight box of what is visible of its item in that image
                assert [x, y, w, h] == [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
                assert int(visible.sum()) == ann["visible_pixels"]
                _, alone, _ = render_records(record, [ann], params)
                if (alone[0] >= threshold).sum() > visible.sum():
                    occluded += 1
    assert occluded > 0  # the check above covered items that others partly hide


def test_occlusion_shrinks_the_hidden_items_box() -> None:
    background = np.zeros((32, 32, 3), np.float32)
    opaque = np.ones((10, 10), np.float32)
    colour = np.full((10, 10, 3), 200, np.float32)
    below = Layer(opaque, colour, x=2, y=2)  # covers x 2..11, y 2..11
    above = Layer(np.ones((14, 10), np.float32), np.zeros((14, 10, 3), np.float32), x=7, y=0)
    _, _, boxes = render_canvas(background, [below, above], visible_alpha=0.5)
    assert boxes[0] == (2, 2, 7, 12)  # x 7..11 hidden
    assert boxes[1] == (7, 0, 17, 14)
    # half-transparent cover: the lower item still gives 0.5 of the colour, so it stays visible
    glass = Layer(np.full((10, 10), 0.5, np.float32), colour, x=7, y=0)
    _, _, boxes = render_canvas(background, [below, glass], visible_alpha=0.5)
    assert boxes[0] == (2, 2, 12, 12)
    # fully covered: no box at all
    _, _, boxes = render_canvas(
        background,
        [below, Layer(np.ones((14, 14), np.float32), np.zeros((14, 14, 3), np.float32), 0, 0)],
        0.5,
    )
    assert boxes[0] is None


def test_items_are_tinted(fashiondet_small_root: Path) -> None:
    tints = np.array([ann["tint"] for ann in _load(fashiondet_small_root, "train")["annotations"]])
    saturation = tints.max(axis=1) - tints.min(axis=1)
    assert (saturation > 0.1).mean() > 0.6
    hues = {tuple(np.round(t, 1)) for t in tints}
    assert len(hues) > 20


def test_pycocotools_loads_and_scores_ground_truth_as_perfect(fashiondet_small_root: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for split in SPLITS:
        gt = COCO(str(fashiondet_small_root / "annotations" / f"instances_{split}.json"))
        assert len(gt.getImgIds()) == FASHIONDET_PRESETS["small"][f"num_{split}"]
        assert len(gt.getCatIds()) == 10
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt.dataset["annotations"]
    ]
    evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_cached_until_a_parameter_changes(tmp_path: Path) -> None:
    tiny = {"num_train": 3, "num_val": 2, "num_test": 2}
    root = make_fashiondet(tmp_path, **tiny)
    png = root / "train" / "000001.png"
    stamp = (png.stat().st_mtime_ns, (root / PARAMS_FILE).stat().st_mtime_ns)
    make_fashiondet(tmp_path, **tiny)
    assert (png.stat().st_mtime_ns, (root / PARAMS_FILE).stat().st_mtime_ns) == stamp
    make_fashiondet(tmp_path, **{**tiny, "num_train": 2})  # changed: written again, stale files gone
    assert sorted(p.name for p in (root / "train").iterdir()) == ["000001.png", "000002.png"]
    assert json.loads((root / PARAMS_FILE).read_text())["params"]["num_train"] == 2
    (root / "val" / "000002.png").unlink()  # incomplete set: written again
    make_fashiondet(tmp_path, **{**tiny, "num_train": 2})
    assert (root / "val" / "000002.png").is_file()


def test_parameter_errors_say_what_is_valid() -> None:
    with pytest.raises(ValueError, match="Unknown FashionDet parameter.*bogus.*valid"):
        resolve_params(bogus=1)
    with pytest.raises(ValueError, match="preset 'huge'.*default.*small"):
        resolve_params("huge")
    with pytest.raises(ValueError, match="min_objects <= max_objects"):
        resolve_params(min_objects=3, max_objects=2)
    assert resolve_params("small", num_val=None)["num_val"] == FASHIONDET_PRESETS["small"]["num_val"]
