"""The built-in 30-class data set, its class split and the few-shot episodes."""

import hashlib

import numpy as np
import pytest
import torch

from tests.train.test_data import accept_as_official, write_cifar10
from train.data import ImageTensorDataset, load_splits
from train.data.fewshot import EpisodeSampler, FewShotCIFAR10, FewShotEpisodes, draw_shots
from train.data.shapes import (
    BASE_PATTERN_CLASSES,
    NOVEL_PATTERN_CLASSES,
    PATTERN_CLASSES,
    generate_shape_patterns,
    generate_shapes,
)


def test_the_shapes_data_set_is_unchanged_bit_for_bit():
    # The main job's published results were measured on exactly these images.
    images, labels = generate_shapes(64, seed=0)
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    assert digest == "013c1a2f0ccb102dc9997f8a6e12fb6f7c4e2a4fddf8f9ee21f3e6c06ca0ac74"


def test_shape_patterns_are_seeded_and_cover_thirty_classes():
    images, labels = generate_shape_patterns(600, seed=3)
    again, _ = generate_shape_patterns(600, seed=3)
    assert torch.equal(images, again)
    assert images.shape == (600, 3, 32, 32) and images.dtype == torch.uint8
    assert len(PATTERN_CLASSES) == 30 and set(labels.tolist()) == set(range(30))
    assert PATTERN_CLASSES[:3] == ("solid disk", "striped disk", "checked disk")


def test_the_class_split_sees_every_shape_and_fill_among_the_base_classes():
    assert len(BASE_PATTERN_CLASSES) == 20 and len(NOVEL_PATTERN_CLASSES) == 10
    assert not set(BASE_PATTERN_CLASSES) & set(NOVEL_PATTERN_CLASSES)
    base_words = {word for c in BASE_PATTERN_CLASSES for word in PATTERN_CLASSES[c].split()}
    novel_words = {word for c in NOVEL_PATTERN_CLASSES for word in PATTERN_CLASSES[c].split()}
    assert novel_words <= base_words


def test_subset_classes_relabels_in_the_given_order():
    splits = load_splits("shape_patterns", shapes_train_size=300, shapes_test_size=30)
    subset = splits.train.subset_classes((7, 2))
    assert subset.classes == (PATTERN_CLASSES[7], PATTERN_CLASSES[2])
    originals = splits.train.labels[(splits.train.labels == 7) | (splits.train.labels == 2)]
    assert torch.equal(subset.labels, (originals == 2).long())


def tiny_dataset(per_class: list[int]) -> ImageTensorDataset:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    images = labels.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).to(torch.uint8).contiguous()
    return ImageTensorDataset(images, labels, tuple(f"c{c}" for c in range(len(per_class))))


def test_episodes_have_the_right_classes_and_counts():
    dataset = tiny_dataset([9, 8, 7, 10, 6, 12])
    episodes = FewShotEpisodes(
        dataset, n_way=3, n_shot=2, n_query=4, episodes=20, seed=5, classes=(0, 1, 3, 5)
    )
    seen = set()
    for episode in episodes:
        assert len(set(episode.classes)) == 3 and set(episode.classes) <= {0, 1, 3, 5}
        assert episode.support_labels.tolist() == [0, 0, 1, 1, 2, 2]
        assert episode.query_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        # The images' values are their data-set labels: each episode label is its class.
        classes = torch.tensor(episode.classes)
        assert torch.equal(
            episode.support_images[:, 0, 0, 0].long(), classes[episode.support_labels]
        )
        assert torch.equal(episode.query_images[:, 0, 0, 0].long(), classes[episode.query_labels])
        seen |= set(episode.classes)
    assert seen == {0, 1, 3, 5}


def test_episodes_are_seeded_and_support_and_query_never_share_an_image():
    labels = torch.arange(60) % 6
    first = list(EpisodeSampler(labels, 4, 3, 5, episodes=10, seed=1))
    assert first == list(EpisodeSampler(labels, 4, 3, 5, episodes=10, seed=1))
    assert first != list(EpisodeSampler(labels, 4, 3, 5, episodes=10, seed=2))
    assert all(len(set(episode)) == 4 * 8 for episode in first)


def test_too_few_images_and_bad_arguments_are_named():
    dataset = tiny_dataset([9, 4, 9])
    with pytest.raises(ValueError, match=r"n_shot \+ n_query: class 'c1' \(1\) has 4 images"):
        FewShotEpisodes(dataset, n_way=2, n_shot=5, n_query=1)
    with pytest.raises(ValueError, match="n_way: expected at most 3 classes, got 4"):
        FewShotEpisodes(dataset, n_way=4, n_shot=1, n_query=1)
    with pytest.raises(ValueError, match="n_shot: expected >= 1, got 0"):
        FewShotEpisodes(dataset, n_way=2, n_shot=0, n_query=1)


@pytest.fixture
def cifar10_archive(tmp_path, monkeypatch):
    batches = write_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=100)
    accept_as_official(monkeypatch, tmp_path / "cifar-10-python.tar.gz")
    return tmp_path, batches


def test_few_shot_cifar10_holds_seeded_shots_of_every_class_resized(cifar10_archive):
    root, batches = cifar10_archive
    shots = FewShotCIFAR10(root=root, n_way=10, n_shot=5, image_size=48)
    assert len(shots) == 50 and shots.classes == tuple(f"class{i}" for i in range(10))
    assert torch.bincount(shots.labels).tolist() == [5] * 10
    image, label = shots[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.uint8 and shots.image_shape[1] == 48
    again = FewShotCIFAR10(root=root, n_shot=5, image_size=48)
    other = FewShotCIFAR10(root=root, n_shot=5, image_size=48, seed=1)
    assert torch.equal(again.source.images, shots.source.images)
    assert not torch.equal(other.source.images, shots.source.images)
    # Every shot is one of the training split's images of its class.
    training = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    for picture, label in zip(shots.source.images, shots.labels):
        found = (training == picture.flatten().numpy()).all(1)
        assert found.any() and labels[found.argmax()] == label


def test_few_shot_cifar10_test_split_and_a_subset_of_classes(cifar10_archive):
    root, batches = cifar10_archive
    test = FewShotCIFAR10(root=root, n_way=4, image_size=32, train=False, seed=3)
    chosen = [int(name[5:]) for name in test.classes]
    assert len(chosen) == 4 and chosen == sorted(chosen)
    expected = np.isin(batches["test_batch"][b"labels"], chosen).sum()
    assert len(test) == expected and set(test.labels.tolist()) <= set(range(4))
    assert torch.equal(test[0][0], test.source.images[0])  # 32² stays as it is


def test_few_shot_cifar_arguments_are_checked(cifar10_archive):
    root, _ = cifar10_archive
    with pytest.raises(ValueError, match="n_way: expected 1 … 10 classes, got 11"):
        FewShotCIFAR10(root=root, n_way=11)
    with pytest.raises(ValueError, match=r"n_shot: class 'class\d' \(\d\) has \d+ images"):
        FewShotCIFAR10(root=root, n_shot=500)


def test_draw_shots_gives_disjoint_seeded_sets_of_k_per_class():
    labels = torch.arange(40) % 4
    first, second = draw_shots(labels, 3, seed=2, draws=2)
    assert torch.bincount(labels[first]).tolist() == [3] * 4
    assert torch.bincount(labels[second]).tolist() == [3] * 4
    assert not set(first.tolist()) & set(second.tolist())
    assert torch.equal(first, draw_shots(labels, 3, seed=2)[0])
    assert not torch.equal(first, draw_shots(labels, 3, seed=5)[0])
