"""Splits of labelled sets: a validation set held out per class (``hold_out``), and
class-incremental tasks of disjoint classes in a seeded class order (the benchmarks of iCaRL,
PyCIL and Avalanche's ``SplitCIFAR*``)."""

import copy
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

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


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded split of the positions of ``labels`` into (kept, held out): ``fraction`` of each
    class held out (rounded, at least one item of every class with two or more), so both parts
    keep the class proportions."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction: expected a number in [0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    kept, held_out = [], []
    for label in labels.unique().tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = round(fraction * len(members))
        if fraction > 0 and len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        held_out.append(members[:count])
        kept.append(members[count:])
    return torch.cat(kept).sort().values, torch.cat(held_out).sort().values


def labels_of(dataset: Dataset) -> Tensor:
    """The label of every item of an in-memory set or of a set of files (``samples``)."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.labels
    return torch.tensor([label for _, label in dataset.samples])


def subset(dataset: Dataset, indices: Tensor, train: bool) -> Dataset:
    """The items at ``indices`` as a data set of the same kind; a set of files skips its
    unreadable ones as a training (``train``) or evaluation set, with a skip count of its own."""
    if isinstance(dataset, ImageTensorDataset):
        return ImageTensorDataset(dataset.images[indices], dataset.labels[indices], dataset.classes)
    part = copy.copy(dataset)
    part.samples = [dataset.samples[i] for i in indices.tolist()]
    part.train = train
    part.reset_skips()
    return part


def hold_out(
    train: Dataset, fraction: float, seed: int, val: Dataset | None = None
) -> tuple[Dataset, Dataset | None]:
    """(training, validation) sets: ``val`` when given, else ``fraction`` of ``train`` held out
    per class (seeded); no validation set when ``fraction`` is 0 and none is given."""
    if val is not None:
        if fraction > 0:
            raise ValueError(
                f"val_split: expected 0 with a validation set of its own, got {fraction}"
            )
        return train, val
    if fraction == 0:
        return train, None
    kept, held_out = stratified_indices(labels_of(train), fraction, seed)
    return subset(train, kept, train=True), subset(train, held_out, train=False)
