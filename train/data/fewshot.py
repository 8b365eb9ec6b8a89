"""Few-shot episodes over any labelled image data set: each episode draws ``n_way`` classes, then
``n_shot`` support and ``n_query`` query images of each, from a seeded generator (as easyfsl's
``TaskSampler``), so the same seed gives the same episodes everywhere."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Sampler

from .sources import ImageTensorDataset, load_cifar


@dataclass
class Episode:
    """One task: images are uint8 (n, C, H, W); labels are episode classes 0 … n_way - 1, which
    stand for ``classes`` (indices into the data set's classes)."""

    support_images: Tensor
    support_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    classes: tuple[int, ...]


class EpisodeSampler(Sampler[list[int]]):
    """Yields ``episodes`` lists of data-set indices: for each of ``n_way`` classes drawn from
    ``classes`` (default: every label present), ``n_shot + n_query`` of its images, class after
    class, support first. A class with fewer images is an error naming n_shot and n_query."""

    def __init__(
        self,
        labels: Tensor,
        n_way: int,
        n_shot: int,
        n_query: int,
        episodes: int,
        seed: int = 0,
        classes: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
    ):
        for name, value in (("n_way", n_way), ("n_shot", n_shot), ("n_query", n_query)):
            if value < 1:
                raise ValueError(f"{name}: expected >= 1, got {value}")
        if episodes < 1:
            raise ValueError(f"episodes: expected >= 1, got {episodes}")
        labels = torch.as_tensor(labels, dtype=torch.long)
        self.classes = tuple(labels.unique().tolist() if classes is None else classes)
        if n_way > len(self.classes):
            raise ValueError(f"n_way: expected at most {len(self.classes)} classes, got {n_way}")
        self.indices = {c: (labels == c).nonzero().squeeze(1) for c in self.classes}
        needed = n_shot + n_query
        for c, indices in self.indices.items():
            if len(indices) < needed:
                name = f"{class_names[c]!r} ({c})" if class_names else str(c)
                raise ValueError(
                    f"n_shot + n_query: class {name} has {len(indices)} images, fewer than "
                    f"n_shot={n_shot} + n_query={n_query}"
                )
        self.n_way, self.n_shot, self.n_query = n_way, n_shot, n_query
        self.episodes = episodes
        self.seed = seed

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed)
        per_class = self.n_shot + self.n_query
        for _ in range(self.episodes):
            chosen = torch.randperm(len(self.classes), generator=gen)[: self.n_way]
            episode = []
            for position in chosen.tolist():
                indices = self.indices[self.classes[position]]
                picked = torch.randperm(len(indices), generator=gen)[:per_class]
                episode += indices[picked].tolist()
            yield episode


class FewShotEpisodes:
    """A few-shot view of an in-memory labelled data set: iterating yields ``Episode``s.

    Args:
        dataset: images and labels (``ImageTensorDataset``).
        n_way, n_shot, n_query: classes per episode, support and query images per class.
        episodes: episodes per pass.
        seed: seed of the episode generator.
        classes: the classes episodes are drawn from (default: all), e.g. a novel split.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        n_way: int = 5,
        n_shot: int = 5,
        n_query: int = 15,
        episodes: int = 600,
        seed: int = 0,
        classes: Sequence[int] | None = None,
    ):
        self.dataset = dataset
        self.sampler = EpisodeSampler(
            dataset.labels, n_way, n_shot, n_query, episodes, seed, classes, dataset.classes
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Episode]:
        sampler = self.sampler
        per_class = sampler.n_shot + sampler.n_query
        for indices in sampler:
            index = torch.tensor(indices).view(sampler.n_way, per_class)
            support, query = index[:, : sampler.n_shot], index[:, sampler.n_shot :]
            classes = tuple(self.dataset.labels[index[:, 0]].tolist())
            way = torch.arange(sampler.n_way)
            yield Episode(
                self.dataset.images[support.flatten()],
                way.repeat_interleave(sampler.n_shot),
                self.dataset.images[query.flatten()],
                way.repeat_interleave(sampler.n_query),
                classes,
            )


class FewShotCIFAR10(FewShotEpisodes):
    """Episodes over a CIFAR-10 split (the test split by default), from the official tarball in
    ``data_dir`` (downloaded when missing and ``download``); ``episode_args`` are
    ``FewShotEpisodes``' (pass ``classes`` for a base/novel split)."""

    num_classes = 10

    def __init__(
        self,
        data_dir: str | Path = "data",
        train: bool = False,
        download: bool = True,
        **episode_args,
    ):
        dataset = load_cifar(Path(data_dir), train, self.num_classes, download)
        super().__init__(dataset, **episode_args)


class FewShotCIFAR100(FewShotCIFAR10):
    """Episodes over a CIFAR-100 split (fine labels), as ``FewShotCIFAR10``."""

    num_classes = 100
