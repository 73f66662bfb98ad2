"""Gather MeanAveragePrecision's per-image states from DDP ranks that evaluated different numbers of images.

torchmetrics (1.9) syncs these list states element by element, one collective per image, so ranks
holding different numbers of images (the non-padding eval sampler splits 23 images 12 + 11) call
mismatched collectives: the run fails with absurd allocations or hangs. Here each rank's lists
travel whole with `all_gather_object`, and the images are put back in data set order (the
sampler deals images out in turn: rank r holds r, r + world, ...), so the result equals a
single-process evaluation. The metric must be built with `sync_on_compute=False`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["gather_map_states"]

_PER_IMAGE_STATES = (
    "detection_box",
    "detection_scores",
    "detection_labels",
    "detection_mask",
    "groundtruth_box",
    "groundtruth_labels",
    "groundtruth_crowds",
    "groundtruth_area",
    "groundtruth_mask",
)


def gather_map_states(metric: Any) -> None:
    """Replace the metric's per-image lists with those of all ranks, in data set order (no-op alone)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    names = [name for name in _PER_IMAGE_STATES if hasattr(metric, name)]
    local = {name: [_to_cpu(item) for item in getattr(metric, name)] for name in names}
    gathered: list[dict[str, list[Any]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    device = metric.device
    for name in names:
        per_rank = [g[name] for g in gathered if g is not None]
        longest = max((len(items) for items in per_rank), default=0)
        merged = [items[i] for i in range(longest) for items in per_rank if i < len(items)]
        setattr(metric, name, [_to_device(item, device) for item in merged])


def _to_cpu(item: Any) -> Any:
    return item.detach().cpu() if isinstance(item, torch.Tensor) else item


def _to_device(item: Any, device: torch.device) -> Any:
    return item.to(device) if isinstance(item, torch.Tensor) else item
