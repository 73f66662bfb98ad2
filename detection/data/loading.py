"""How batches are drawn: collate, samplers, and the training loader that resumes mid-epoch.

- `collate_detection`: (image, target) pairs -> (list of images, list of targets), plain tensors.
- `GroupedBatchSampler` batches images of one aspect-ratio group; `eval_sampler` splits an eval set
  across DDP ranks without padding (each image counts once in mAP).
- `loader_options`: the DataLoader's workers and pinned memory, ``"auto"`` chosen from the run's
  accelerator and the CPUs each of its processes has.
- `ResumableDataLoader`: Lightning 2.x restarts an interrupted epoch by iterating the loader afresh
  and running only the remaining number of batches. A plain DataLoader then starts a new order
  from its first batch: with a fixed order the epoch's first batches run twice and its last ones
  never; with a fresh shuffle the rest of the epoch is a random subset. Lightning saves and
  restores any train loader that has `state_dict`/`load_state_dict`; this one records how many
  batches of the epoch were handed out and its shuffle seed, and on resume draws the same order
  and skips the batches already trained (by index, without loading their images). The order is a
  function of (seed, epoch) through `set_epoch`, which Lightning calls on `loader.sampler` and
  `loader.batch_sampler.sampler` each epoch; under DDP Lightning swaps in its DistributedSampler
  (also seeded by epoch) and the same skip applies per rank. The pipeline always attaches
  `LoaderStateCallback`, which hands the saved position over.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler


def _pure(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_subclass(torch.Tensor) if isinstance(tensor, torch.Tensor) else tensor


def collate_detection(
    batch: Sequence[tuple[Any, Mapping[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict]]:
    """(image, target) pairs -> (list of images, list of targets) with plain tensors (no tv_tensors)."""
    images = [_pure(image) for image, _ in batch]
    targets = [{key: _pure(value) for key, value in target.items()} for _, target in batch]
    return images, targets


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


AUTO = "auto"
# Loader workers per GPU process at most: more rarely help a detector's small batches and each one
# holds a copy of what the dataset does not share (the cached canvases are shared on fork).
MAX_AUTO_WORKERS = 8


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: what SLURM or taskset granted)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_options(
    num_workers: int | str | None,
    pin_memory: bool | str | None,
    persistent_workers: bool | str | None,
    trainer: Any = None,
) -> dict[str, Any]:
    """DataLoader ``num_workers``, ``pin_memory``, ``persistent_workers``; ``"auto"`` (or None) chooses.

    On a CUDA run (the `trainer`'s root device; without a trainer, none): ``num_workers`` = the
    process's CPUs shared by the machine's processes of the run (``trainer.num_devices``), one kept
    for the training process itself, at most `MAX_AUTO_WORKERS`; memory pinned; workers kept
    between epochs. On the CPU: no workers and no pinning, since loader processes take the cores
    the model's own threads compute on. A number or a bool is taken as given (pinning only where
    CUDA exists: elsewhere it is a no-op that warns).
    """
    cuda = trainer is not None and getattr(trainer.strategy.root_device, "type", "cpu") == "cuda"
    if num_workers is None or num_workers == AUTO:
        processes = max(1, int(getattr(trainer, "num_devices", 1) or 1)) if cuda else 1
        workers = min(MAX_AUTO_WORKERS, max(0, available_cpus() // processes - 1)) if cuda else 0
    else:
        workers = int(num_workers)
    pin = cuda if pin_memory is None or pin_memory == AUTO else bool(pin_memory)
    persistent = (
        cuda if persistent_workers is None or persistent_workers == AUTO else bool(persistent_workers)
    )
    return {
        "num_workers": workers,
        "pin_memory": pin and torch.cuda.is_available(),
        "persistent_workers": persistent and workers > 0,
    }


class EpochRandomSampler(RandomSampler):
    """A random permutation per epoch drawn from (seed, epoch), not from the global generator.

    A RandomSampler subclass, so Lightning still sees a shuffled loader (and under DDP replaces it
    by its DistributedSampler). The default seed is `torch.initial_seed()`: the run's seed after
    `seed_everything`, and random for unseeded runs; a mid-epoch checkpoint carries it.
    """

    def __init__(self, data_source: Sized, seed: int | None = None) -> None:
        super().__init__(data_source)
        self.seed = int(torch.initial_seed() if seed is None else seed) % 2**63
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class EpochSequentialSampler(SequentialSampler):
    """Data set order, knowing its epoch (so a resumed loader can tell a new epoch from the stopped one)."""

    def __init__(self, data_source: Sized) -> None:
        super().__init__(data_source)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class _SkipFirst:
    """The loader's index sampler (sampler or batch sampler) without the first `loader._skip` items
    of this epoch: indices are dropped before any image is read."""

    def __init__(self, inner: Iterable[Any], loader: ResumableDataLoader) -> None:
        self.inner = inner
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        # The DataLoader iterator may call this more than once while starting an epoch; each call
        # starts the inner order afresh, so skipping the same count each time is right.
        return itertools.islice(iter(self.inner), self.loader._skip, None)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


class ResumableDataLoader(DataLoader):
    """A DataLoader whose place in the epoch goes into Lightning checkpoints.

    `state_dict()` -> {"batches": batches handed out in the current epoch, "epoch" and "seed" of
    the order}; `load_state_dict()` makes the next iteration of that same epoch skip those batches.
    Lightning loads the state only when it resumes an unfinished epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = 0
        self._skip = 0
        self._pending: dict[str, Any] | None = None

    @property
    def _index_sampler(self) -> Any:  # read by the DataLoader iterator when it starts an epoch
        return _SkipFirst(super()._index_sampler, self)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: its body runs at the first batch, after Lightning's set_epoch.
        self._skip = self._resume_skip()
        self._batches_done = self._skip
        if self._skip:
            # Starting an iterator draws the workers' base seed from the global generator, which an
            # uninterrupted run drew at the epoch start, not here: put the generator back, so the
            # resumed epoch draws the same augmentations (exactly so with num_workers=0).
            rng = torch.get_rng_state()
            iterator = super().__iter__()
            torch.set_rng_state(rng)
        else:
            iterator = super().__iter__()
        # Counted at the hand-over, not in the sampler: worker processes prefetch indices ahead.
        for batch in iterator:
            self._batches_done += 1
            yield batch

    def _resume_skip(self) -> int:
        pending, self._pending = self._pending, None
        if not pending:
            return 0
        skip, epoch = int(pending.get("batches", 0)), pending.get("epoch")
        current = getattr(self._order_sampler(), "epoch", None)
        if skip >= len(self) or (epoch is not None and current is not None and int(epoch) != current):
            return 0  # the saved epoch was complete, or this is already a later epoch
        return skip

    def state_dict(self) -> dict[str, Any]:
        sampler = self._order_sampler()
        state: dict[str, Any] = {"batches": int(self._batches_done)}
        for key in ("seed", "epoch"):
            if getattr(sampler, key, None) is not None:
                state[key] = int(getattr(sampler, key))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)
        sampler = self._order_sampler()
        if "seed" in state_dict and hasattr(sampler, "seed"):
            sampler.seed = int(state_dict["seed"])

    def _order_sampler(self) -> Any:
        batch_sampler = self.batch_sampler
        inner = getattr(batch_sampler, "sampler", None) if batch_sampler is not None else None
        return inner if inner is not None else self.sampler
