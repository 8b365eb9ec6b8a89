"""Data for the training jobs: image data sets (``sources``), the built-in shapes (``shapes``),
tensor augmentations (``augment``), video decoding, sampling and data sets (``video``,
``annotations``), the built-in video set (``moving_shapes``), clip augmentations
(``clip_augment``), weighted sampling for unequal domains (``sampling``), the skipping of
unreadable files (``unreadable``) and loaders."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..engine import distributed
from .annotations import (
    AnnotationError,
    VideoRecord,
    read_json_split,
    read_rawframe_list,
    read_video_list,
)
from .augment import BatchTransform, mix_batch
from .clip_augment import ClipTransform
from .moving_shapes import ensure_moving_shapes, load_moving_shapes
from .sampling import WeightedDistributedSampler, domain_balance_weights
from .sources import (
    ImageFolder,
    ImageReadError,
    ImageTensorDataset,
    load_cifar,
    load_fashion_mnist,
    load_shape_patterns,
    load_shapes,
)
from .splits import hold_out, labels_of, stratified_indices, subset
from .unreadable import SkippedFileWarning, UnreadableError, collate_readable, readable_batches
from .video import (
    SelectFields,
    VideoDataset,
    VideoReadError,
    collate_clips,
    read_frames,
    sample_frame_indices,
    video_info,
)

DATASETS = ("shapes", "shape_patterns", "cifar10", "cifar100", "fashion_mnist", "rafdb", "folder")


@dataclass
class DataSplits:
    """A data set's training, validation (None when none was asked for) and test sets."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_splits(
    dataset: str,
    data_dir: str = "data",
    download: bool = True,
    image_size: int = 32,
    shapes_train_size: int = 10000,
    shapes_test_size: int = 2000,
    seed: int = 0,
    val_split: float = 0.0,
    val_dir: str | None = None,
) -> DataSplits:
    """The splits of a named data set ("folder": ``data_dir``/train and /test, each with one
    sub-folder of images per class). The validation set is ``val_dir`` (class sub-folders) when
    given, else ``val_split`` of the training set held out per class, seeded by ``seed``; the
    normalisation statistics are the remaining training set's."""
    train, test = _train_and_test(
        dataset, Path(data_dir), download, image_size, shapes_train_size, shapes_test_size, seed
    )
    val = ImageFolder(Path(val_dir), image_size, train=False) if val_dir else None
    if val is not None and val.classes != train.classes:
        raise ValueError(f"val_data: {val_dir} has other class folders than the training set")
    train, val = hold_out(train, val_split, seed, val)
    mean, std = train.channel_stats()
    return DataSplits(train, val, test, train.classes, train.image_shape, mean, std)


def _train_and_test(
    dataset: str,
    root: Path,
    download: bool,
    image_size: int,
    shapes_train_size: int,
    shapes_test_size: int,
    seed: int,
) -> tuple[Dataset, Dataset]:
    if dataset == "shapes":
        sizes = (shapes_train_size, shapes_test_size, seed)
        return load_shapes(True, *sizes), load_shapes(False, *sizes)
    if dataset == "shape_patterns":
        sizes = (shapes_train_size, shapes_test_size, seed)
        return load_shape_patterns(True, *sizes), load_shape_patterns(False, *sizes)
    if dataset in ("cifar10", "cifar100"):
        classes = int(dataset[5:])
        return load_cifar(root, True, classes, download), load_cifar(root, False, classes, download)
    if dataset == "fashion_mnist":
        return load_fashion_mnist(root, True, download), load_fashion_mnist(root, False, download)
    if dataset == "rafdb":
        from .rafdb import load_rafdb

        return load_rafdb(root, True, image_size), load_rafdb(root, False, image_size)
    if dataset == "folder":
        train = ImageFolder(root / "train", image_size, train=True)
        test = ImageFolder(root / "test", image_size, train=False)
        if train.classes != test.classes:
            raise ValueError(f"{root}: train and test have different class folders")
        return train, test
    raise ValueError(f"unknown dataset {dataset!r}; known: {DATASETS}")


class ShardSampler(Sampler[int]):
    """Evaluation order for one process: every world_size-th index, no padding or repeats, so
    that sums reduced over the processes count every sample exactly once."""

    def __init__(self, length: int):
        self.indices = range(distributed.rank(), length, distributed.world_size())

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int,
    seed: int,
    collate_fn: Callable | None = None,
    sample_weights: Tensor | None = None,
) -> DataLoader:
    """Training: shuffled per epoch (``sampler.set_epoch``), sharded across processes, last
    partial batch dropped; with ``sample_weights`` (one per sample, e.g.
    ``domain_balance_weights``), len(dataset) indices drawn per epoch with replacement by those
    weights instead. Evaluation: every sample once across the processes. Workers persist
    across epochs; batches go to pinned memory when a GPU is present. ``collate_fn`` as in
    ``DataLoader`` (e.g. ``SelectFields(("frames", "label"))`` for video clips); by default
    ``collate_readable``, which drops the None of unreadable evaluation items."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=_sampler(dataset, train, seed, sample_weights),
        drop_last=train,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn or collate_readable,
    )


def _sampler(
    dataset: Dataset, train: bool, seed: int, sample_weights: Tensor | None
) -> Sampler[int]:
    if sample_weights is not None:
        if not train:
            raise ValueError("sample_weights: weighted sampling is for training loaders only")
        if len(sample_weights) != len(dataset):
            raise ValueError(
                f"sample_weights: expected one weight per sample ({len(dataset)}), "
                f"got {len(sample_weights)}"
            )
        return WeightedDistributedSampler(sample_weights, len(dataset), seed=seed)
    if train:
        return DistributedSampler(
            dataset,
            num_replicas=distributed.world_size(),
            rank=distributed.rank(),
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
    return ShardSampler(len(dataset))


__all__ = [
    "AnnotationError",
    "BatchTransform",
    "ClipTransform",
    "DATASETS",
    "DataSplits",
    "ImageFolder",
    "ImageReadError",
    "ImageTensorDataset",
    "SelectFields",
    "ShardSampler",
    "SkippedFileWarning",
    "UnreadableError",
    "VideoDataset",
    "VideoReadError",
    "VideoRecord",
    "WeightedDistributedSampler",
    "collate_clips",
    "collate_readable",
    "readable_batches",
    "domain_balance_weights",
    "ensure_moving_shapes",
    "load_cifar",
    "load_fashion_mnist",
    "load_moving_shapes",
    "load_shape_patterns",
    "load_shapes",
    "hold_out",
    "labels_of",
    "load_splits",
    "make_loader",
    "mix_batch",
    "read_frames",
    "read_json_split",
    "read_rawframe_list",
    "read_video_list",
    "sample_frame_indices",
    "stratified_indices",
    "subset",
    "video_info",
]
