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

from .. import distributed
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

DATASETS = ("shapes", "shape_patterns", "cifar10", "cifar100", "fashion_mnist", "folder")


@dataclass
class DataSplits:
    train: Dataset
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
) -> DataSplits:
    """The train and test splits of a named data set ("folder": ``data_dir``/train and /test,
    each with one sub-folder of images per class)."""
    root = Path(data_dir)
    if dataset == "shapes":
        train, test = (
            load_shapes(split, shapes_train_size, shapes_test_size, seed) for split in (True, False)
        )
    elif dataset == "shape_patterns":
        sizes = (shapes_train_size, shapes_test_size, seed)
        train, test = (load_shape_patterns(split, *sizes) for split in (True, False))
    elif dataset in ("cifar10", "cifar100"):
        train, test = (
            load_cifar(root, split, int(dataset[5:]), download) for split in (True, False)
        )
    elif dataset == "fashion_mnist":
        train, test = (load_fashion_mnist(root, split, download) for split in (True, False))
    elif dataset == "folder":
        train, test = (
            ImageFolder(root / "train", image_size, train=True),
            ImageFolder(root / "test", image_size, train=False),
        )
        if train.classes != test.classes:
            raise ValueError(f"{root}: train and test have different class folders")
    else:
        raise ValueError(f"unknown dataset {dataset!r}; known: {DATASETS}")
    mean, std = train.channel_stats()
    return DataSplits(train, test, train.classes, train.image_shape, mean, std)


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
    "load_splits",
    "make_loader",
    "mix_batch",
    "read_frames",
    "read_json_split",
    "read_rawframe_list",
    "read_video_list",
    "sample_frame_indices",
    "video_info",
]
