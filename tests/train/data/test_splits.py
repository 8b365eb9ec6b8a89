"""Validation sets held out per class; class-incremental splits: disjoint tasks in a seeded class
order, labels renumbered by it."""

import pytest
import torch
from PIL import Image

from train.data import ImageTensorDataset, load_splits
from train.data.splits import class_order, concat, split_by_class, stratified_indices


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


def test_the_validation_split_is_stratified_disjoint_and_seeded():
    splits = load_splits("shapes", shapes_train_size=1000, shapes_test_size=100, val_split=0.2)
    train_labels, val_labels = splits.train.labels, splits.val.labels
    assert len(splits.train) + len(splits.val) == 1000
    whole = load_splits("shapes", shapes_train_size=1000, shapes_test_size=100)
    assert whole.val is None and len(whole.train) == 1000
    rows = {tuple(image.flatten().tolist()) for image in splits.train.images}
    assert not any(tuple(image.flatten().tolist()) in rows for image in splits.val.images)
    per_class = whole.train.labels.bincount()
    assert torch.equal(val_labels.bincount(), (per_class * 0.2).round().long())
    assert torch.equal(train_labels.bincount() + val_labels.bincount(), per_class)
    again = load_splits("shapes", shapes_train_size=1000, shapes_test_size=100, val_split=0.2)
    assert torch.equal(again.val.images, splits.val.images)
    other_seed = load_splits(
        "shapes", shapes_train_size=1000, shapes_test_size=100, val_split=0.2, seed=1
    )
    assert not torch.equal(other_seed.val.labels, splits.val.labels)


def test_every_class_with_two_items_keeps_one_on_each_side():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    kept, held_out = stratified_indices(labels, 0.1, seed=0)
    assert sorted(labels[held_out].tolist()) == [0, 1]
    assert sorted(torch.cat([kept, held_out]).tolist()) == list(range(6))


def test_a_folder_validation_set_replaces_the_held_out_split(tmp_path):
    for split in ("train", "test", "val"):
        for name in ("a", "b"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(folder / f"{k}.png")
    splits = load_splits(
        "folder", str(tmp_path), image_size=8, val_split=0.0, val_dir=str(tmp_path / "val")
    )
    assert (len(splits.train), len(splits.val)) == (6, 6) and not splits.val.train
    with pytest.raises(ValueError, match="val_split: expected 0 with a validation set"):
        load_splits(
            "folder", str(tmp_path), image_size=8, val_split=0.1, val_dir=str(tmp_path / "val")
        )
    held = load_splits("folder", str(tmp_path), image_size=8, val_split=0.4)
    assert (len(held.train), len(held.val)) == (4, 2) and held.train.train and not held.val.train
    assert {label for _, label in held.val.samples} == {0, 1}
