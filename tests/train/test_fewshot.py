"""The built-in 30-class data set, its class split and the few-shot episodes."""

import hashlib

import pytest
import torch

from tests.train.test_data import accept_as_official, write_cifar10
from train.data import ImageTensorDataset, load_splits
from train.data.fewshot import EpisodeSampler, FewShotCIFAR10, FewShotEpisodes
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


def test_few_shot_cifar10_reads_the_official_tarball(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=100)
    accept_as_official(monkeypatch, tmp_path / "cifar-10-python.tar.gz")
    episodes = FewShotCIFAR10(tmp_path, n_way=5, n_shot=1, n_query=3, episodes=2, download=False)
    episode = next(iter(episodes))
    assert episode.support_images.shape == (5, 3, 32, 32)
    assert episode.query_images.shape == (15, 3, 32, 32)
