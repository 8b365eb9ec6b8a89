"""Class-incremental splits: disjoint tasks in a seeded class order, labels renumbered by it."""

import pytest
import torch

from train.data import ImageTensorDataset
from train.data.splits import class_order, concat, split_by_class


def labelled(count: int, classes: int) -> ImageTensorDataset:
    labels = torch.arange(count) % classes
    images = labels.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).to(torch.uint8).contiguous()
    return ImageTensorDataset(images, labels, tuple(f"c{c}" for c in range(classes)))


def test_tasks_hold_disjoint_classes_in_the_seeded_order():
    split = split_by_class(labelled(100, 10), labelled(50, 10), n_tasks=5, seed=3)
    assert split.class_order == class_order(10, 3) != tuple(range(10))
    assert split.num_classes == 10 and split.classes_per_task == 2 and split.n_tasks == 5
    for task, (train, test) in enumerate(zip(split.train, split.test)):
        assert set(train.labels.tolist()) == set(test.labels.tolist()) == {2 * task, 2 * task + 1}
        # the image still shows its original class: label → class_order[label]
        original = torch.tensor(split.class_order)[train.labels]
        assert torch.equal(train.images[:, 0, 0, 0].long(), original)
    assert split.seen_classes(2) == 6
    assert len(concat(list(split.train))) == 100


def test_the_number_of_tasks_must_divide_the_classes():
    with pytest.raises(ValueError, match="n_tasks: expected a divisor of the 10 classes, got 4"):
        split_by_class(labelled(20, 10), labelled(20, 10), n_tasks=4, seed=0)
