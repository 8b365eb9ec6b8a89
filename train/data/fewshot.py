"""Few-shot data, two ways. Episodes over any labelled image data set: each episode draws
``n_way`` classes, then ``n_shot`` support and ``n_query`` query images of each, from a seeded
generator (as easyfsl's ``TaskSampler``), so the same seed gives the same episodes everywhere.
And the whole label set at once: ``draw_shots`` picks K seeded images of every class to train
on (``FewShotCIFAR10``/``FewShotCIFAR100``: those of CIFAR, or its test split to test on)."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler

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


def draw_shots(
    labels: Tensor, n_shot: int, seed: int, draws: int = 1, class_names: Sequence[str] = ()
) -> list[Tensor]:
    """``draws`` disjoint sets of data-set positions, each with ``n_shot`` images of every class
    in ``labels`` (sorted positions), from a generator seeded by ``seed``. A class with fewer
    than ``draws · n_shot`` images is an error naming it."""
    if n_shot < 1:
        raise ValueError(f"n_shot: expected >= 1, got {n_shot}")
    generator = torch.Generator().manual_seed(seed)
    sets: list[list[Tensor]] = [[] for _ in range(draws)]
    for label in labels.unique().tolist():
        members = torch.nonzero(labels == label).flatten()
        if len(members) < draws * n_shot:
            name = f"{class_names[label]!r} ({label})" if class_names else str(label)
            raise ValueError(
                f"n_shot: class {name} has {len(members)} images, fewer than {draws} × "
                f"n_shot={n_shot}"
            )
        chosen = members[torch.randperm(len(members), generator=generator)[: draws * n_shot]]
        for draw, part in enumerate(chosen.split(n_shot)):
            sets[draw].append(part)
    return [torch.cat(parts).sort().values for parts in sets]


class FewShotCIFAR10(Dataset):
    """CIFAR-10 for few-shot learning over a whole label set: with ``train``, ``n_shot`` labelled
    images of each of ``n_way`` classes (a seeded choice from the training split); without, the
    test split of those classes, to test on. The classes are a seeded choice of ``n_way`` (all
    of them by default, in order) relabelled 0 … n_way - 1. Items are (uint8 image (3, S, S),
    label) with S = ``image_size``: the 32² images are resized (bilinear, antialiased) as they
    are read. The official tarball is read from ``root`` (downloaded when missing and
    ``download``).

    Args:
        root: folder of ``cifar-10-python.tar.gz``.
        n_way: classes (None: every class).
        n_shot: training images per class.
        image_size: side the images are resized to.
        train: the K shots (True) or the test split (False).
        seed: seed of the choice of classes and shots.
        download: download a missing tarball.
    """

    num_classes = 10

    def __init__(
        self,
        root: str | Path = "./data",
        n_way: int | None = None,
        n_shot: int = 5,
        image_size: int = 224,
        train: bool = True,
        seed: int = 0,
        download: bool = False,
    ):
        n_way = self.num_classes if n_way is None else n_way
        if not 1 <= n_way <= self.num_classes:
            raise ValueError(f"n_way: expected 1 … {self.num_classes} classes, got {n_way}")
        if image_size < 1:
            raise ValueError(f"image_size: expected >= 1, got {image_size}")
        source = load_cifar(Path(root), train, self.num_classes, download)
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(self.num_classes, generator=generator)[:n_way].sort().values
        source = source.subset_classes(tuple(chosen.tolist()))
        if train:
            (shots,) = draw_shots(source.labels, n_shot, seed, class_names=source.classes)
            source = ImageTensorDataset(source.images[shots], source.labels[shots], source.classes)
        self.source = source
        self.n_way, self.n_shot, self.image_size = n_way, n_shot, image_size

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    @property
    def labels(self) -> Tensor:
        return self.source.labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.source.image_shape[0], self.image_size, self.image_size)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.source.channel_stats()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.source[index]
        if image.shape[-1] != self.image_size:
            size = (self.image_size, self.image_size)
            resized = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)
            image = resized[0].round().clamp(0, 255).to(torch.uint8)
        return image, label


class FewShotCIFAR100(FewShotCIFAR10):
    """CIFAR-100 (fine labels) for few-shot learning over a whole label set, as
    ``FewShotCIFAR10``."""

    num_classes = 100
