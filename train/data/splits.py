"""Class-incremental splits: a labelled set cut into tasks of disjoint classes, in a seeded class
order (the benchmarks of iCaRL, PyCIL and Avalanche's ``SplitCIFAR*``)."""

from dataclasses import dataclass

import torch

from .sources import ImageTensorDataset


@dataclass(frozen=True)
class ClassIncrementalSplit:
    """Tasks of ``classes_per_task`` classes each. Labels are renumbered by the class order:
    task t holds labels [t·k, (t + 1)·k), so the classes seen after task t are the first
    (t + 1)·k outputs; ``class_order[label]`` is the original class of a label."""

    train: tuple[ImageTensorDataset, ...]
    test: tuple[ImageTensorDataset, ...]
    class_order: tuple[int, ...]
    classes_per_task: int

    @property
    def n_tasks(self) -> int:
        return len(self.train)

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train[0].image_shape

    def seen_classes(self, task: int) -> int:
        """Classes seen once task ``task`` (0-based) has been learned."""
        return (task + 1) * self.classes_per_task


def class_order(num_classes: int, seed: int) -> tuple[int, ...]:
    """A seeded permutation of the classes (the same on every machine)."""
    return tuple(
        torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    )


def concat(datasets: list[ImageTensorDataset]) -> ImageTensorDataset:
    """One in-memory set holding every image of ``datasets`` (which share their classes)."""
    return ImageTensorDataset(
        torch.cat([d.images for d in datasets]),
        torch.cat([d.labels for d in datasets]),
        datasets[0].classes,
    )


def label_range(dataset: ImageTensorDataset, start: int, stop: int) -> ImageTensorDataset:
    """The items with start <= label < stop, labels unchanged."""
    keep = (dataset.labels >= start) & (dataset.labels < stop)
    return ImageTensorDataset(dataset.images[keep], dataset.labels[keep], dataset.classes)


def split_by_class(
    train: ImageTensorDataset, test: ImageTensorDataset, n_tasks: int, seed: int
) -> ClassIncrementalSplit:
    """Cuts both splits into ``n_tasks`` tasks of equally many classes in the seeded order."""
    num_classes = len(train.classes)
    if n_tasks < 1 or num_classes % n_tasks:
        raise ValueError(f"n_tasks: expected a divisor of the {num_classes} classes, got {n_tasks}")
    order = class_order(num_classes, seed)
    k = num_classes // n_tasks

    def tasks(dataset: ImageTensorDataset) -> tuple[ImageTensorDataset, ...]:
        renumbered = dataset.subset_classes(order)
        return tuple(label_range(renumbered, t * k, (t + 1) * k) for t in range(n_tasks))

    return ClassIncrementalSplit(tasks(train), tasks(test), order, k)
