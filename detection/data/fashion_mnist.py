"""Find and read the Fashion-MNIST IDX files (Zalando's 28x28 greyscale clothing items).

Searched in order: the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist),
the folder named by $FASHION_MNIST_DIR, `<data_dir>/FashionMNIST/raw` (torchvision's layout), and
last a torchvision download when `download=True`. Files may be gzipped or not.
"""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path
from typing import Literal

import numpy as np

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHION_MNIST_DIR"
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 2051  # IDX: 0x0000 0803 = unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # IDX: 0x0000 0801 = unsigned bytes, 1 dimension

_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
_cache_lock = threading.Lock()


class FashionMNISTNotFoundError(FileNotFoundError):
    """None of the places Fashion-MNIST may live holds its files."""


def _file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _split_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    images = _file(folder, f"{_PREFIX[split]}-images-idx3-ubyte")
    labels = _file(folder, f"{_PREFIX[split]}-labels-idx1-ubyte")
    return (images, labels) if images is not None and labels is not None else None


def _candidates(data_dir: str | Path | None, debian_dir: str | Path | None) -> list[Path]:
    folders: list[Path] = []
    if debian_dir is not None:
        folders.append(Path(debian_dir))
    env = os.environ.get(ENV_VAR)
    if env:
        # The variable may name the folder of the files or a torchvision-style root above it.
        folders += [Path(env), Path(env) / "FashionMNIST" / "raw"]
    if data_dir is not None:
        folders.append(Path(data_dir) / "FashionMNIST" / "raw")
    return folders


def find_fashion_mnist(
    split: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    debian_dir: str | Path | None = DEBIAN_DIR,
) -> tuple[Path, Path]:
    """Paths of the (images, labels) IDX files of `split`; downloads only when asked and not found."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    for folder in _candidates(data_dir, debian_dir):
        found = _split_files(folder, split)
        if found is not None:
            return found
    if download:
        root = Path(data_dir) if data_dir is not None else Path("data")
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=split == "train", download=True)
        found = _split_files(root / "FashionMNIST" / "raw", split)
        if found is not None:
            return found
    searched = "\n".join(f"    {p}" for p in _candidates(data_dir, debian_dir)) or "    (nowhere)"
    raise FashionMNISTNotFoundError(
        f"Fashion-MNIST ({split}) was not found. Searched:\n{searched}\n"
        "Get it one of three ways:\n"
        "  1. Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist\n"
        "     (installs the files in /usr/share/datasets/fashion-mnist)\n"
        "  2. put the IDX files in the torchvision layout <data_dir>/FashionMNIST/raw/\n"
        f"     (or point ${ENV_VAR} at them)\n"
        "  3. when online, download through torchvision: pass download=True (config: data.download=true)"
    )


def _read_idx(path: Path, magic: int, dims: tuple[int, ...], expected: int) -> np.ndarray:
    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as exc:
        raise ValueError(
            f"{path}: cannot read Fashion-MNIST IDX file ({exc}); delete it and fetch it again"
        ) from exc
    header_len = 4 * (1 + len(dims))
    if len(data) < header_len:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header; the file is truncated")
    header = np.frombuffer(data[:header_len], dtype=">u4")
    if int(header[0]) != magic:
        raise ValueError(
            f"{path}: IDX magic number {int(header[0])} where {magic} was expected; this is not the "
            "right Fashion-MNIST file (images and labels swapped, or another format)"
        )
    shape = tuple(int(v) for v in header[1:])
    if shape[0] != expected or shape[1:] != dims[1:]:
        raise ValueError(
            f"{path}: holds shape {shape}, expected {(expected, *dims[1:])}; the file is not the "
            "complete Fashion-MNIST split"
        )
    body = np.frombuffer(data, dtype=np.uint8, offset=header_len)
    if body.size != int(np.prod(shape)):
        raise ValueError(
            f"{path}: {body.size} data bytes where {int(np.prod(shape))} were expected; truncated"
        )
    return body.reshape(shape)


def load_fashion_mnist(
    split: Literal["train", "test"],
    data_dir: str | Path | None = None,
    download: bool = False,
    debian_dir: str | Path | None = DEBIAN_DIR,
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N,28,28] and labels int64 [N] of a Fashion-MNIST split (read-only arrays).

    `debian_dir=None` skips the Debian location (tests use it to see the not-found message).
    Arrays are cached per file, so repeated calls cost nothing.
    """
    images_path, labels_path = find_fashion_mnist(split, data_dir, download, debian_dir)
    key = (str(images_path.resolve()), str(labels_path.resolve()))
    with _cache_lock:
        if key not in _cache:
            n = SPLIT_SIZES[split]
            images = _read_idx(images_path, _IMAGES_MAGIC, (n, 28, 28), n)
            labels = _read_idx(labels_path, _LABELS_MAGIC, (n,), n).astype(np.int64)
            if labels.max() >= len(FASHION_MNIST_CLASSES):
                raise ValueError(
                    f"{labels_path}: label {int(labels.max())} outside 0..9; not Fashion-MNIST labels"
                )
            images.setflags(write=False)
            labels.setflags(write=False)
            _cache[key] = (images, labels)
        return _cache[key]
