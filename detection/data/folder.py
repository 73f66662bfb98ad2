"""A folder of images for prediction: yields (image, {"path", "image_id"})."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision import tv_tensors

from detection.data.dataset import IMAGE_EXTENSIONS, read_image


class ImageFolder(Dataset):
    """Every image file directly in `folder` (sorted by name); image_id is the position in that order."""

    def __init__(self, folder: str | Path, transforms: Callable[..., Any] | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(
                f"Prediction folder {self.folder} does not exist; set data.predict_dir to a folder of images"
            )
        self.paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.paths:
            raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {self.folder}")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        path = self.paths[index]
        try:
            image = tv_tensors.Image(read_image(path))
        except Exception as exc:  # PIL raises many types; say which file
            raise ValueError(f"{path}: cannot read image: {type(exc).__name__}: {exc}") from None
        if self.transforms is not None:
            image = self.transforms(image)
        return image, {"path": str(path), "image_id": index}
