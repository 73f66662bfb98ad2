"""Samplers: aspect-ratio grouped batches for training, non-padding distributed eval sampling."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, Sampler


def aspect_ratio_groups(aspect_ratios: Sequence[float], k: int = 3) -> list[int]:
    """Group id per image by width/height into 2k+2 bins on a log scale (as torchvision's references)."""
    if k < 1:
        raise ValueError(f"aspect ratio grouping needs k >= 1, got {k}")
    bins = [2.0 ** (i / k) for i in range(-k, k + 1)]
    return [bisect.bisect_right(bins, ratio) for ratio in aspect_ratios]


class GroupedBatchSampler(BatchSampler):
    """Batches whose images share an aspect-ratio group, so padding to a common size wastes little.

    Yields exactly as many batches as a plain BatchSampler over `sampler` would: each group's full
    batches as they fill, then the leftovers of all groups together. Subclasses BatchSampler with a
    `sampler` argument so that Lightning can put its distributed sampler underneath.
    """

    def __init__(
        self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int, drop_last: bool = False
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.group_ids = list(group_ids)

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            group = self.group_ids[index]
            buffers[group].append(index)
            if len(buffers[group]) == self.batch_size:
                yield buffers.pop(group)
        leftovers = [i for group in sorted(buffers) for i in buffers[group]]
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch


def eval_sampler(dataset: Any) -> Sampler[int] | None:
    """Under torch.distributed, a sampler that splits `dataset` across ranks without padding, so
    every image is evaluated exactly once (ranks may differ by one batch); None otherwise."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world = torch.distributed.get_world_size()
    if world <= 1:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(
        dataset, num_replicas=world, rank=torch.distributed.get_rank(), shuffle=False
    )
