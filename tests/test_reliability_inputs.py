"""Bad and odd input, beyond the reader's own checks (tests/test_data_coco.py): what a run does with it.

- A training set of real FashionDet canvases stored as 16-bit, greyscale, RGBA and palette PNGs, an
  EXIF-rotated JPEG, a 2048 px JPEG, an image without boxes and a category without instances, with
  a validation split whose annotation list is empty: every file decodes upright to (nearly) the
  canvas it was made from, so the canvas' boxes stay on their objects, and a short training run
  finishes with a finite loss (and mAP -1 for the box-less validation split).
- A detector step on images without any box gives a finite loss and gradients.
- A truncated PNG met at setup and a corrupt JPEG met in the middle of training (in a DataLoader
  worker) stop the run with a message naming the file; through scripts/train.py that message is
  the final line and no traceback is shown.
- An image beyond PIL's decompression-bomb limit is refused with its file named.
- An unknown config key: Hydra names it, no traceback; an unknown head or backbone: one line that
  lists the choices.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from test_reliability_support import CONF_DIR, hydra_job, run_env, script, tiny_overrides

from detection.data import CocoFormatError, DetectionDataModule
from detection.runtime.launch import is_user_error, user_message

EXIF_ORIENTATION = 0x0112
BIG = 16  # the large image: a 128 px canvas scaled 16 times, 2048 x 2048


def _odd_set(source: Path, root: Path) -> Path:
    """root/annotations/instances_{train,val}.json + images: FashionDet canvases in odd encodings."""
    data = json.loads((source / "annotations" / "instances_train.json").read_text())
    categories = data["categories"] + [{"id": 99, "name": "unused"}]  # a category without instances
    kinds = ["uint16", "grey", "rgba", "palette", "exif", "big", "negative", "rgb", "rgb"]
    images, annotations = [], []
    (root / "train").mkdir(parents=True)
    for record, kind in zip(data["images"], kinds):
        rgb = Image.open(source / "train" / record["file_name"]).convert("RGB")
        name = f"{record['id']:06d}_{kind}.{'jpg' if kind in ('exif', 'big') else 'png'}"
        path = root / "train" / name
        scale = BIG if kind == "big" else 1
        if kind == "uint16":
            Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).save(path)
        elif kind == "grey":
            rgb.convert("L").save(path)
        elif kind == "rgba":
            rgba = rgb.copy()
            rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
            rgba.save(path)
        elif kind == "palette":
            rgb.quantize(64).save(path, transparency=0)
        elif kind == "exif":
            # Stored turned 90 degrees; EXIF orientation 6 turns it upright for display. The record's
            # size and boxes are those of the upright image, as an annotation tool shows it.
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = 6
            rgb.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), quality=95)
        elif kind == "big":
            rgb.resize((128 * BIG, 128 * BIG), Image.Resampling.BILINEAR).save(path, quality=90)
        else:
            rgb.save(path)
        images.append({"id": record["id"], "file_name": name, "width": 128 * scale, "height": 128 * scale})
        if kind != "negative":
            for ann in (a for a in data["annotations"] if a["image_id"] == record["id"]):
                box = [v * scale for v in ann["bbox"]]
                annotations.append(
                    {
                        "id": ann["id"],
                        "image_id": ann["image_id"],
                        "category_id": ann["category_id"],
                        "bbox": box,
                    }
                )
    (root / "annotations").mkdir()
    train = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(train))
    # validation: three plain canvases and an empty annotation list
    val = json.loads((source / "annotations" / "instances_val.json").read_text())
    (root / "val").mkdir()
    for record in val["images"][:3]:
        shutil.copy(source / "val" / record["file_name"], root / "val" / record["file_name"])
    empty = {"images": val["images"][:3], "annotations": [], "categories": categories}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(empty))
    return root


@pytest.fixture(scope="module")
def odd_root(fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _odd_set(fashiondet_small_root, tmp_path_factory.mktemp("odd"))


def _module(root: Path, **kwargs: Any) -> DetectionDataModule:
    options: dict[str, Any] = {"root": root, "num_classes": 11, "batch_size": 3, "print_summary": False}
    options.update(kwargs)
    datamodule = DetectionDataModule(**options)
    datamodule.setup("fit")
    return datamodule


def test_odd_encodings_decode_to_the_source_canvas(odd_root: Path, fashiondet_small_root: Path) -> None:
    """Each file decodes to (nearly) the canvas it was made from, upright and at its size, so the
    canvas' boxes, which the records carry, still frame their objects."""
    datamodule = _module(odd_root)
    train = datamodule.datasets["train"]
    assert datamodule.class_names[-1] == "unused" and train.stats.boxes_per_class[-1] == 0
    assert datamodule.stats["val"].boxes == 0 and datamodule.stats["val"].negatives == 3
    source = fashiondet_small_root / "train"
    for index, record in enumerate(train.images):
        image = train.load_image(index).int()
        kind = record["file_name"].split("_")[1].split(".")[0]
        canvas = Image.open(source / f"{record['id']:06d}.png")
        rgb = torch.from_numpy(np.asarray(canvas.convert("RGB"))).permute(2, 0, 1).int()
        grey = torch.from_numpy(np.asarray(canvas.convert("L"))).int().expand(3, -1, -1)
        if kind == "big":
            image = torch.nn.functional.avg_pool2d(image[None].float(), BIG)[0].round().int()
        expected, tolerance = {
            "uint16": (grey, 0.0),  # 16 bits mapped onto 8, not clipped to white
            "grey": (grey, 0.0),
            "rgba": (rgb, 0.0),  # alpha dropped, colours kept
            "palette": (rgb, 6.0),  # 64 colours
            "exif": (rgb, 3.0),  # upright again; JPEG loses a little
            "big": (rgb, 6.0),
        }.get(kind, (rgb, 0.0))
        assert image.shape == expected.shape, record["file_name"]
        assert (image - expected).abs().float().mean() <= tolerance, record["file_name"]


def test_short_training_on_odd_set(odd_root: Path, tmp_path: Path) -> None:
    from detection import pipelines

    overrides = tiny_overrides(
        odd_root,
        tmp_path / "logs",
        "data.generate=null",
        "data.num_classes=11",
        "data.batch_size=3",
        "data.cache_images=false",
        "trainer.max_epochs=1",
        "test=false",
    )
    with hydra_job(overrides) as cfg:
        pipelines.train(cfg)
        run_dir = Path(cfg.paths.output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    assert np.isfinite(metrics["train/loss"])
    assert metrics["val/mAP"] == -1.0  # no ground truth to score: -1, not a crash
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_detector_step_on_images_without_boxes() -> None:
    from detection.models import build_detector

    torch.manual_seed(0)
    detector = build_detector(
        "fcos",
        num_classes=3,
        backbone={"name": "efficientnet_lite0", "weights": None},
        neck={"out_channels": 16},
    )
    detector.train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = detector([torch.rand(3, 96, 96), torch.rand(3, 96, 96)], [empty, empty])
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in detector.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------------------ broken files
def _broken_copy(source: Path, root: Path, damage: str) -> Path:
    """A copy of the small FashionDet set with one training image damaged; returns that file."""
    shutil.copytree(source, root)
    ann_file = root / "annotations" / "instances_train.json"
    data = json.loads(ann_file.read_text())
    record = data["images"][5]
    path = root / "train" / record["file_name"]
    if damage == "corrupt_jpeg":
        jpeg = path.with_suffix(".jpg")
        Image.open(path).convert("RGB").save(jpeg, quality=90)
        raw = jpeg.read_bytes()
        garbage = np.random.default_rng(0).integers(0, 256, len(raw) - len(raw) // 3, dtype=np.uint8)
        jpeg.write_bytes(raw[: len(raw) // 3] + garbage.tobytes())  # a damaged transfer: header fine
        path.unlink()
        record["file_name"] = jpeg.name
        ann_file.write_text(json.dumps(data))
        return jpeg
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated PNG
    return path


def test_truncated_png_stops_setup_naming_the_file(fashiondet_small_root: Path, tmp_path: Path) -> None:
    path = _broken_copy(fashiondet_small_root, tmp_path / "set", "truncated_png")
    with pytest.raises(CocoFormatError) as info:
        _module(tmp_path / "set", num_classes=10, cache_images=True)  # decoded at setup
    assert str(path) in str(info.value) and "cannot read image" in str(info.value)
    assert is_user_error(info.value)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_corrupt_jpeg_mid_training_final_line_names_the_file(
    fashiondet_small_root: Path, tmp_path: Path
) -> None:
    path = _broken_copy(fashiondet_small_root, tmp_path / "set", "corrupt_jpeg")
    overrides = tiny_overrides(
        tmp_path / "set",
        tmp_path / "logs",
        "data.generate=null",
        "data.cache_images=false",  # met when a worker reads it, inside the first epoch
        "data.num_workers=1",
        "data.shuffle=false",
        "trainer.max_epochs=1",
        "test=false",
    )
    result = subprocess.run(
        [*script("train"), *overrides],
        cwd=tmp_path,
        env=run_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"CocoFormatError: {path}: cannot read image"), result.stderr[-3000:]
    assert "Fix:" in last_line
    assert "Traceback" not in result.stderr + result.stdout


def _huge_png(path: Path, width: int, height: int) -> None:
    """A PNG header announcing width x height pixels (no pixel data is needed to be refused)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_refused_naming_the_file(tmp_path: Path) -> None:
    from detection.data import make_reader

    (tmp_path / "images").mkdir()
    _huge_png(tmp_path / "images" / "huge.png", 20_000, 20_000)  # 400 M pixels, 1.2 GB decoded
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "huge.png", "width": 20_000, "height": 20_000}],
                "annotations": [],
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )
    with pytest.raises(CocoFormatError) as info:
        make_reader("coco", tmp_path, {"train": ("instances.json", "images")}).dataset("train")[0]
    message = str(info.value)
    assert str(tmp_path / "images" / "huge.png") in message and "DecompressionBombError" in message


# ------------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.detector.head=yolo", "unknown head 'yolo'; choose one of ('faster_rcnn', 'fcos'"),
        ("model.backbone.name=resnet19", "unknown backbone 'resnet19'; choose one of resnet18"),
    ],
)
def test_unknown_head_or_backbone_lists_the_choices(override: str, expected: str) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[override, "paths.output_dir=/tmp/unused"])
    with pytest.raises(Exception) as info:
        instantiate(cfg.model.task, _recursive_=False)
    assert is_user_error(info.value)
    message = user_message(info.value)
    assert message.startswith("ValueError: ") and expected in message and "\n" not in message


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_unknown_config_key_named_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [*script("train"), "trainer.max_epoch=3", f"paths.log_dir={tmp_path}"],  # max_epochs, misspelt
        cwd=tmp_path,
        env=run_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 1
    assert "Could not override 'trainer.max_epoch'" in result.stderr
    assert "Key 'max_epoch' is not in struct" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
