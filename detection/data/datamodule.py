"""DetectionDataModule: COCO, Pascal VOC or YOLO splits (FashionDet by default) -> Lightning loaders.

Batches are (images: list[Tensor float32 [3,H,W] in [0,1]], targets: list[{"boxes": float32
[N,4] XYXY, "labels": int64 [N], "image_id": int}]); prediction batches are (images, [{"path",
"image_id"}]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from detection.data.dataset import DetectionDataset
from detection.data.fashiondet import make_fashiondet
from detection.data.folder import ImageFolder
from detection.data.formats import make_reader
from detection.data.loading import (
    EpochRandomSampler,
    EpochSequentialSampler,
    GroupedBatchSampler,
    ResumableDataLoader,
    aspect_ratio_groups,
    collate_detection,
    eval_sampler,
    loader_options,
)
from detection.data.records import DetectionStats, check_class_names
from detection.data.transforms import build_eval_transforms, build_train_transforms

__all__ = ["DetectionDataModule", "summary_table"]

SPLITS = ("train", "val", "test")
_NEEDED = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


def _absolute(path: str | Path) -> Path:
    # Under Hydra, relative paths mean the directory the command was started from.
    try:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(str(path)))
    except ImportError:  # pragma: no cover - hydra is a dependency
        return Path(path).expanduser().resolve()


def summary_table(
    stats: Mapping[str, DetectionStats],
    class_names: Sequence[str],
    max_class_rows: int = 30,
    source: str = "",
) -> Table:
    """One table: a column per split; images, boxes, negatives, crowd, clipped, refused, boxes per class."""
    table = Table(title=f"Detection data{f' ({source})' if source else ''}", title_justify="left")
    table.add_column("")
    for split in stats:
        table.add_column(split, justify="right")
    rows = [
        ("images", "images"),
        ("boxes", "boxes"),
        ("negatives (no box)", "negatives"),
        ("crowd / difficult (left out)", "crowd"),
        ("clipped", "clipped"),
        ("refused", "refused"),
    ]
    for label, key in rows:
        table.add_row(label, *(str(getattr(s, key)) for s in stats.values()))
    if len(class_names) <= max_class_rows:
        for label, name in enumerate(class_names):
            table.add_row(f"  {name}", *(str(s.boxes_per_class[label]) for s in stats.values()))
    else:
        table.add_row(
            "classes without boxes",
            *(str(sum(1 for n in s.boxes_per_class if n == 0)) for s in stats.values()),
        )
    return table


class DetectionDataModule(L.LightningDataModule):
    """Train/val/test splits under `root` in one of `formats.FORMATS`, plus a folder of images to predict.

    Layouts under `root` (`detection.data.formats`): coco (FashionDet's) annotations/
    instances_<split>.json + <split>/; voc ImageSets/Main/<split>.txt + Annotations/ + JPEGImages/;
    yolo images/<split>/ + labels/<split>/ + data.yaml. Other places: `<split>_ann` and
    `<split>_images` per split (relative to `root`, or absolute).

    Args:
        root: the data set folder (relative paths are resolved against the launch directory).
        format: a name in `detection.data.formats.FORMATS`: "coco", "voc" or "yolo" built in.
        num_classes: expected number of classes; checked against the data (None: take it).
        class_names: VOC's class list (names or a file of names) when the root has no labels.txt;
            for COCO and YOLO, checked against the data's.
        generate: FashionDet generator arguments (`make_fashiondet`): the set is written under
            `root` on first use and reused while these parameters stay the same.
        batch_size, eval_batch_size: per-process batch sizes (eval defaults to batch_size).
        num_workers, pin_memory, persistent_workers: DataLoader settings; ``"auto"`` chooses from
            the run (`loading.loader_options`): on CUDA, workers from the CPUs per process, pinned
            memory and persistent workers; on the CPU, none of them.
        group_aspect_ratio: k > 0 batches training images of similar width/height (2k+2 groups).
        cache_images: decode every image once into memory (uint8); for small sets.
        invalid_boxes: "error" or "drop" (counted as refused) for non-finite/empty/outside boxes.
        check_files: check that all image files of a COCO file exist at setup (VOC and YOLO
            readers find every image as they read).
        train_transforms, eval_transforms: keyword arguments of build_train_transforms /
            build_eval_transforms.
        predict_dir: folder of images for predict_dataloader.
        shuffle, drop_last: for the training loader.
        print_summary: print the per-split summary table once, at the first setup (rank 0).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        num_classes: int | None = None,
        format: str = "coco",
        class_names: Sequence[str] | str | None = None,
        generate: Mapping[str, Any] | None = None,
        train_ann: str | None = None,
        val_ann: str | None = None,
        test_ann: str | None = None,
        train_images: str | None = None,
        val_images: str | None = None,
        test_images: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int | str | None = 0,
        pin_memory: bool | str | None = False,
        persistent_workers: bool | str | None = False,
        group_aspect_ratio: int = 0,
        cache_images: bool = False,
        invalid_boxes: str = "error",
        check_files: bool = True,
        train_transforms: Mapping[str, Any] | None = None,
        eval_transforms: Mapping[str, Any] | None = None,
        predict_dir: str | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        print_summary: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = _absolute(root) if root is not None else None
        self.generate = dict(generate) if generate is not None else None
        files = {
            "train": (train_ann, train_images),
            "val": (val_ann, val_images),
            "test": (test_ann, test_images),
        }
        self.reader = make_reader(format, self.root, files, class_names, invalid_boxes)
        self.num_classes = num_classes
        self.class_names: list[str] | None = None
        # class name -> the first file it is in (train split first): what a class mismatch names
        self.class_sources: dict[str, str] = {}
        self.datasets: dict[str, DetectionDataset] = {}
        self.stats: dict[str, DetectionStats] = {}
        self.train_transforms = build_train_transforms(**(train_transforms or {}))
        self.eval_transforms = build_eval_transforms(**(eval_transforms or {}))
        self.predict_dir = _absolute(predict_dir) if predict_dir else None
        self._summary_printed = False

    # ------------------------------------------------------------------ preparation
    def prepare_data(self) -> None:
        if self.generate is None:
            return
        if self.root is None:
            raise ValueError("data.generate needs data.root: the folder to write the FashionDet set to")
        kwargs = dict(self.generate)
        if kwargs.get("data_dir"):
            kwargs["data_dir"] = str(_absolute(kwargs["data_dir"]))
        make_fashiondet(self.root, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        self._load(prepare=stage != "predict")
        for split in _NEEDED.get(stage, ()) if stage else ():
            if split not in self.datasets:
                raise FileNotFoundError(self.reader.missing_message(split, f"for stage {stage!r}"))
        if stage == "predict" and self.predict_dir is None:
            raise ValueError("Prediction needs data.predict_dir: a folder of images")

    def check_splits(self, splits: Sequence[str], hints: Mapping[str, str] | None = None) -> None:
        """Find, read and validate every split now (before a run trains); `splits` must be there.

        A missing one raises FileNotFoundError with the reason and its hint in `hints` (what the
        run can do without it), as does a root without any split. `num_classes` and
        `class_names` are the data's afterwards.
        """
        self._load()
        for split in splits:
            if split not in self.datasets:
                hint = (hints or {}).get(split)
                message = self.reader.missing_message(split, "by this run")
                raise FileNotFoundError(f"{message}{'. ' + hint if hint else ''}")
        if not self.datasets:
            raise FileNotFoundError(
                f"No split found under {self.root} (data.format={self.reader.format}); the layout is "
                f"{self.reader.layout('train')} (likewise val, test)"
            )

    def _load(self, prepare: bool = True) -> None:
        if not self.datasets:
            if prepare:
                # Cheap when the set exists; lets the module work without a Trainer calling prepare_data.
                self.prepare_data()
            self._load_splits()

    def _load_splits(self) -> None:
        for split in SPLITS:
            if not self.reader.exists(split):
                continue
            self.datasets[split] = self.reader.dataset(
                split,
                self.train_transforms if split == "train" else self.eval_transforms,
                check_files=self.hparams.check_files,
                cache_images=self.hparams.cache_images,
            )
            self.stats[split] = self.datasets[split].stats
        if not self.datasets:
            return
        first_split, first = next(iter(self.datasets.items()))
        for dataset in self.datasets.values():
            if (dataset.category_ids, dataset.class_names) != (first.category_ids, first.class_names):
                theirs = list(zip(dataset.category_ids, dataset.class_names))
                ours = list(zip(first.category_ids, first.class_names))
                raise self.reader.error(
                    f"{dataset.ann_file}: categories {theirs} differ from those of the {first_split} split "
                    f"({first.ann_file}): {ours}. All splits must list the same categories"
                )
        counts, sources = {}, dict(first.index.class_sources)
        for label, name in enumerate(first.class_names):
            with_boxes = [d for d in self.datasets.values() if d.stats.boxes_per_class[label]]
            counts[name] = sum(d.stats.boxes_per_class[label] for d in with_boxes)
            if with_boxes and with_boxes[0] is not first:  # no box in the first split: a later one's file
                sources[name] = with_boxes[0].index.class_sources[name]
        expected = self.reader.expected_classes()
        check_class_names(first.ann_file, first.class_names, expected, self.num_classes, sources, counts)
        self.num_classes = first.num_classes
        self.class_names = first.class_names
        self.class_sources = sources
        if self.hparams.print_summary and not self._summary_printed and rank_zero_only.rank == 0:
            Console().print(self.summary())
        self._summary_printed = True

    def summary(self) -> Table:
        """The per-split summary table of the splits read so far."""
        source = f"{self.reader.format}: {self.root}" if self.root is not None else self.reader.format
        return summary_table(self.stats, self.class_names or [], source=source)

    # ------------------------------------------------------------------ loaders
    def _loader(
        self, dataset: Any, batch_size: int, loader_class: type[DataLoader] = DataLoader, **kwargs: Any
    ) -> DataLoader:
        hp = self.hparams
        return loader_class(
            dataset,
            collate_fn=collate_detection,
            **loader_options(hp.num_workers, hp.pin_memory, hp.persistent_workers, self.trainer),
            **({"batch_size": batch_size} if "batch_sampler" not in kwargs else {}),
            **kwargs,
        )

    def _dataset(self, split: str) -> DetectionDataset:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        batch_size = int(self.hparams.batch_size)
        k = int(self.hparams.group_aspect_ratio)
        # Order drawn from (seed, epoch) and the place in the epoch saved with mid-epoch checkpoints,
        # so a resumed epoch repeats and skips no batch (detection/data/resumable.py).
        sampler = EpochRandomSampler(dataset) if self.hparams.shuffle else EpochSequentialSampler(dataset)
        if k > 0:
            groups = aspect_ratio_groups(dataset.aspect_ratios(), k)
            batch_sampler = GroupedBatchSampler(sampler, groups, batch_size, drop_last=self.hparams.drop_last)
            return self._loader(
                dataset, batch_size, loader_class=ResumableDataLoader, batch_sampler=batch_sampler
            )
        return self._loader(
            dataset,
            batch_size,
            loader_class=ResumableDataLoader,
            sampler=sampler,
            drop_last=bool(self.hparams.drop_last),
        )

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        batch_size = int(self.hparams.eval_batch_size or self.hparams.batch_size)
        return self._loader(dataset, batch_size, shuffle=False, sampler=eval_sampler(dataset))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dir is None:
            raise ValueError("Prediction needs data.predict_dir: a folder of images")
        dataset = ImageFolder(self.predict_dir, transforms=self.eval_transforms)
        batch_size = int(self.hparams.eval_batch_size or self.hparams.batch_size)
        return self._loader(dataset, batch_size, shuffle=False)
