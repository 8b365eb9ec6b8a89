"""Data for the training jobs: data sets (``sources``), the built-in shapes (``shapes``), tensor
augmentations (``augment``) and loaders."""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .. import distributed
from .augment import BatchTransform, mix_batch
from .sources import (
    ImageFolder,
    ImageTensorDataset,
    load_cifar,
    load_fashion_mnist,
    load_shape_patterns,
    load_shapes,
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
        train, test = (load_shapes(split, shapes_train_size, shapes_test_size, seed) for split in (True, False))
    elif dataset == "shape_patterns":
        sizes = (shapes_train_size, shapes_test_size, seed)
        train, test = (load_shape_patterns(split, *sizes) for split in (True, False))
    elif dataset in ("cifar10", "cifar100"):
        train, test = (load_cifar(root, split, int(dataset[5:]), download) for split in (True, False))
    elif dataset == "fashion_mnist":
        train, test = (load_fashion_mnist(root, split, download) for split in (True, False))
    elif dataset == "folder":
        train, test = ImageFolder(root / "train", image_size), ImageFolder(root / "test", image_size)
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


def make_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int, seed: int) -> DataLoader:
    """Training: shuffled per epoch (``sampler.set_epoch``), sharded across processes, last
    partial batch dropped. Evaluation: every sample once across the processes."""
    if train:
        sampler = DistributedSampler(
            dataset, num_replicas=distributed.world_size(), rank=distributed.rank(), shuffle=True, seed=seed, drop_last=True
        )
    else:
        sampler = ShardSampler(len(dataset))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


__all__ = [
    "BatchTransform",
    "DATASETS",
    "DataSplits",
    "ImageFolder",
    "ImageTensorDataset",
    "ShardSampler",
    "load_cifar",
    "load_fashion_mnist",
    "load_shape_patterns",
    "load_shapes",
    "load_splits",
    "make_loader",
    "mix_batch",
]
