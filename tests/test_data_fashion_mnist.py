"""Fashion-MNIST source: the Debian files, the torchvision layout, and the not-found message."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detection.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from detection.data.classification import FashionMNISTDataset
from detection.data.fashion_mnist import DEBIAN_DIR, ENV_VAR, FashionMNISTNotFoundError

needs_debian = pytest.mark.skipif(
    not (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed"
)


@needs_debian
def test_debian_files_load_with_expected_shapes() -> None:
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60_000,) and labels.dtype == np.int64
    test_images, test_labels = load_fashion_mnist("test")
    assert test_images.shape == (10_000, 28, 28)
    assert sorted(np.unique(test_labels)) == list(range(len(FASHION_MNIST_CLASSES))) == list(range(10))
    assert np.bincount(labels).tolist() == [6000] * 10
    assert not images.flags.writeable  # shared cache: nobody may change it


def _torchvision_layout(root: Path, gz: bool) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        if gz:
            shutil.copy(DEBIAN_DIR / f"{stem}.gz", raw / f"{stem}.gz")
        else:
            with gzip.open(DEBIAN_DIR / f"{stem}.gz", "rb") as src, open(raw / stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return raw


@needs_debian
@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_layout_under_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gz: bool) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    _torchvision_layout(tmp_path, gz)
    images, labels = load_fashion_mnist("test", data_dir=tmp_path, debian_dir=None)
    debian_images, debian_labels = load_fashion_mnist("test")
    assert np.array_equal(images, debian_images) and np.array_equal(labels, debian_labels)


@needs_debian
def test_environment_variable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _torchvision_layout(tmp_path, gz=True)
    monkeypatch.setenv(ENV_VAR, str(raw))
    images, _ = load_fashion_mnist("test", debian_dir=None)
    assert images.shape == (10_000, 28, 28)


def test_not_found_names_all_three_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FashionMNISTNotFoundError) as info:
        load_fashion_mnist("train", data_dir=tmp_path, debian_dir=None)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "download=True" in message


def _write_idx(path: Path, magic: int, shape: tuple[int, ...], body: bytes) -> None:
    header = np.array([magic, *shape], dtype=">u4").tobytes()
    path.write_bytes(header + body)


@pytest.mark.parametrize(
    "case, expected",
    [("swapped", "magic number 2049"), ("short", "shape (9999, 28, 28)"), ("truncated", "truncated")],
)
def test_bad_idx_files_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, expected: str
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = raw / "t10k-images-idx3-ubyte"
    if case == "swapped":
        _write_idx(images, 2049, (10_000,), bytes(10_000))
    elif case == "short":
        _write_idx(images, 2051, (9_999, 28, 28), bytes(9_999 * 784))
    else:
        _write_idx(images, 2051, (10_000, 28, 28), bytes(100))
    _write_idx(raw / "t10k-labels-idx1-ubyte", 2049, (10_000,), bytes(10_000))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte") as info:
        load_fashion_mnist("test", data_dir=tmp_path, debian_dir=None)
    assert expected in str(info.value)


@needs_debian
def test_items_are_resized_once_as_each_item_would_be() -> None:
    images, labels = load_fashion_mnist("test")
    indices = np.array([5, 0, 9_999])
    dataset = FashionMNISTDataset(images, labels, indices, image_size=32, hflip_prob=0.0)
    assert dataset.images.shape == (3, 1, 32, 32) and dataset.images.dtype == torch.uint8
    for position, source in enumerate(indices):
        image, label = dataset[position]
        item = torch.from_numpy(images[source].astype(np.float32) / 255.0)[None, None]
        expected = F.interpolate(item, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        assert image.shape == (3, 32, 32) and int(label) == labels[source]
        assert torch.equal(image[0], image[2])  # grey in 3 channels
        assert (image[0] - expected[0, 0]).abs().max() <= 1.5 / 255  # uint8 rounding only
    flipped = FashionMNISTDataset(images, labels, indices, image_size=32, hflip_prob=1.0)
    assert torch.equal(flipped[1][0], dataset[1][0].flip(-1))
    native = FashionMNISTDataset(images, labels, indices, image_size=28)
    assert torch.equal(native[0][0][0], torch.from_numpy(images[5].astype(np.float32) / 255.0))


@needs_debian
def test_max_shift_moves_items_within_a_black_border() -> None:
    images, labels = load_fashion_mnist("test")
    still = FashionMNISTDataset(images, labels, np.array([7]), image_size=32)[0][0]
    shifted = FashionMNISTDataset(images, labels, np.array([7]), image_size=32, max_shift=2)
    padded = F.pad(still, [2, 2, 2, 2])
    offsets = [(top, left) for top in range(5) for left in range(5)]
    windows = {(top, left): padded[:, top : top + 32, left : left + 32] for top, left in offsets}
    seen = set()
    for _ in range(200):
        image = shifted[0][0]
        assert image.shape == (3, 32, 32)
        seen |= {offset for offset, window in windows.items() if torch.equal(image, window)}
    assert len(seen) >= 20  # 25 offsets, each an exact copy of the item moved by up to 2 px
    with pytest.raises(ValueError, match="max_shift"):
        FashionMNISTDataset(images, labels, np.array([7]), image_size=32, max_shift=-1)


def test_max_shift_is_refused_for_fashion_crops() -> None:
    from detection.data import ClassificationDataModule

    with pytest.raises(ValueError, match="Fashion-MNIST only"):
        ClassificationDataModule(source="fashion_crops", crops={"root": "nowhere"}, max_shift=2)
