"""Classification crops of a detection set's boxes (FashionCrops when the set is FashionDet).

Each box becomes a square crop centred on it, of side ``max(w, h) * (1 + 2 * margin)`` (the item
with a little of its background, as a detector's RoI sees it), zero-padded where it leaves the
image and resized to ``image_size``. Labels are the boxes' classes. Crowd / difficult boxes are
not cropped (they are left out of detection training too).

`FashionCrops` takes its train and val crops from the detection set's *training* images (val: a
seeded share of whole images, so no item is in both) and its test crops from the detection set's
*val* images. The detection test split is never read, so pretraining on the crops cannot leak a
test item into a detector trained afterwards.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from detection.data.dataset import DetectionDataset

__all__ = ["crop_boxes", "split_images"]


def crop_boxes(
    dataset: DetectionDataset, image_indices: np.ndarray, image_size: int = 32, margin: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops of every box of images `image_indices`: (uint8 [N,3,S,S], int64 [N])."""
    if image_size < 8:
        raise ValueError(f"crop image_size must be >= 8 px, got {image_size}")
    if margin < 0:
        raise ValueError(f"crop margin must be >= 0, got {margin}")
    crops: list[torch.Tensor] = []
    labels: list[np.ndarray] = []
    for index in image_indices:
        boxes = dataset.index.boxes[int(index)]
        if len(boxes) == 0:
            continue
        image = dataset.load_image(int(index)).float()
        height, width = image.shape[-2:]
        for x0, y0, x1, y1 in boxes:
            side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
            cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
            left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
            size = max(int(round(side)), 1)
            # pad so that a crop reaching past the border keeps the item centred
            pad = (max(-left, 0), max(left + size - width, 0), max(-top, 0), max(top + size - height, 0))
            window = F.pad(image, pad)[
                :, top + pad[2] : top + pad[2] + size, left + pad[0] : left + pad[0] + size
            ]
            resized = F.interpolate(
                window[None],
                size=(image_size, image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0]
            crops.append(resized.round().clamp(0, 255).to(torch.uint8))
        labels.append(dataset.index.labels[int(index)])
    if not crops:
        raise ValueError(f"{dataset.ann_file}: no boxes to crop in the {len(image_indices)} images chosen")
    return torch.stack(crops), torch.from_numpy(np.concatenate(labels).astype(np.int64))


def split_images(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) image indices: a seeded `val_fraction` of `count` images held out whole."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(count)
    held_out = max(int(round(count * val_fraction)), 1)
    return np.sort(order[held_out:]), np.sort(order[:held_out])
