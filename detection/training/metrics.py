"""Detection metrics: their names, the mAP dictionary a task logs, and the DDP gather of mAP states.

Names: ``<prefix>/mAP``, ``<prefix>/mAP_50``, ... (`MAP_KEYS`) and ``<prefix>/AP/<class name>``
(`class_metric_key`, the one place class keys are made).

`gather_map_states`: torchmetrics (1.9) syncs these list states element by element, one collective
per image, so ranks holding different numbers of images (the non-padding eval sampler splits 23
images 12 + 11) call mismatched collectives: the run fails with absurd allocations or hangs. Here
each rank's lists travel whole with `all_gather_object`, and the images are put back in data set
order (the sampler deals images out in turn: rank r holds r, r + world, ...), so the result equals a
single-process evaluation. The metric must be built with `sync_on_compute=False`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["MAP_KEYS", "class_metric_key", "gather_map_states", "map_metrics"]

# torchmetrics key -> our metric name
MAP_KEYS = {
    "map": "mAP",
    "map_50": "mAP_50",
    "map_75": "mAP_75",
    "map_small": "mAP_small",
    "map_medium": "mAP_medium",
    "map_large": "mAP_large",
    "mar_1": "mAR_1",
    "mar_10": "mAR_10",
    "mar_100": "mAR_100",
}


def class_metric_key(prefix: str, class_name: str) -> str:
    """``<prefix>/AP/<class name>``; a "/" in the name ("T-shirt/top") becomes "-", since it would
    nest the metric one level deeper in the loggers."""
    return f"{prefix}/AP/{class_name.replace('/', '-')}"


def map_metrics(
    result: Mapping[str, Any], class_names: Sequence[str], prefix: str
) -> dict[str, torch.Tensor]:
    """Our named metrics from a `MeanAveragePrecision.compute()` result (class_metrics=True)."""
    values = {f"{prefix}/{ours}": result[key].float() for key, ours in MAP_KEYS.items()}
    classes = result["classes"].reshape(-1).tolist()
    per_class = result["map_per_class"].reshape(-1).tolist()
    if len(per_class) == len(classes):
        for label, ap in zip(classes, per_class):
            name = class_names[label] if 0 <= label < len(class_names) else str(label)
            values[class_metric_key(prefix, name)] = torch.tensor(float(ap))
    return values


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


def gather_to_rank_zero(items: Sequence[Any]) -> list[Any] | None:
    """Every rank's `items` (picklable objects) concatenated on global rank 0, rank by rank; None on
    the other ranks. Call on every rank; in a single process, `items` as a list."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    rank = dist.get_rank()
    shares: list[Any] | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(list(items), shares, dst=0)
    return None if shares is None else [item for share in shares for item in share]
