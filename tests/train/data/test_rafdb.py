"""RAF-DB read from a small folder written in its layout."""

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import load_splits
from train.data.rafdb import RAFDB_CLASSES, load_rafdb
from train.data.sources import SkippedImageWarning

# (listed name, label 1–7): two training images of labels 1 and 4, three test images.
LISTED = [
    ("train_00001.jpg", 1),
    ("train_00002.jpg", 4),
    ("train_00003.jpg", 4),
    ("train_00004.jpg", 1),
    ("test_0001.jpg", 7),
    ("test_0002.jpg", 2),
    ("test_0003.jpg", 7),
]


def write_rafdb(root, listed=LISTED):
    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    lines = [f"{name} {label}" for name, label in listed]
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for index, (name, label) in enumerate(listed):
        pixels = np.full((20, 16, 3), (30 * label + index) % 256, dtype=np.uint8)
        aligned = name.replace(".jpg", "_aligned.jpg")
        Image.fromarray(pixels).save(root / "Image" / "aligned" / aligned, quality=100)
    return root


def test_splits_labels_and_class_names(tmp_path):
    root = write_rafdb(tmp_path)
    train, test = load_rafdb(root, True, 12), load_rafdb(root, False, 12)
    assert train.classes == RAFDB_CLASSES == test.classes
    assert [label for _, label in train.samples] == [0, 3, 3, 0]
    assert [label for _, label in test.samples] == [6, 1, 6]
    assert test.samples[0][0] == root / "Image" / "aligned" / "test_0001_aligned.jpg"
    image, label = test[1]
    assert image.shape == (3, 12, 12) and image.dtype == torch.uint8 and label == 1
    assert abs(int(image.float().mean()) - (30 * 2 + 5)) <= 2  # the written grey level
    assert train.image_shape == (3, 12, 12)


def test_load_splits_holds_out_a_validation_set_per_class(tmp_path):
    splits = load_splits("rafdb", str(write_rafdb(tmp_path)), image_size=8, val_split=0.5)
    assert splits.classes == RAFDB_CLASSES
    assert sorted(label for _, label in splits.val.samples) == [0, 3]
    assert sorted(label for _, label in splits.train.samples) == [0, 3]
    assert len(splits.test) == 3


def test_an_incomplete_folder_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"EmoLabel/list_patition_label.txt not found"):
        load_rafdb(tmp_path, True, 8)
    root = write_rafdb(tmp_path / "set")
    (root / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) .* the first .*train_00002_aligned"):
        load_rafdb(root, True, 8)
    assert len(load_rafdb(root, False, 8)) == 3  # the test split is complete


def test_a_bad_label_line_is_named(tmp_path):
    root = write_rafdb(tmp_path, [("train_00001.jpg", 8)])
    with pytest.raises(ValueError, match=r"list_patition_label.txt:1: .* label in 1–7, got"):
        load_rafdb(root, True, 8)


def test_an_unreadable_image_is_skipped_with_a_warning(tmp_path):
    root = write_rafdb(tmp_path)
    (root / "Image" / "aligned" / "test_0002_aligned.jpg").write_bytes(b"not a jpeg")
    test = load_rafdb(root, False, 8)
    with pytest.warns(SkippedImageWarning, match="test_0002_aligned.jpg"):
        assert test[1] is None
    assert test.take_skipped() == 1
