"""Experience replay: a fixed-capacity buffer of past (image, label) pairs, sampled into the
training batches of later tasks."""

import torch
from torch import Tensor

REPLAY_MODES = ("reservoir", "class_balanced")


class ReplayBuffer:
    """A buffer of at most ``capacity`` items, filled by ``add`` and read by ``sample``.

    - ``reservoir`` (Vitter's algorithm R): the n-th item seen (counting from 1) enters while
      the buffer has room, and later replaces a uniformly chosen slot with probability
      capacity / n, so every item of the stream is kept with the same probability.
    - ``class_balanced``: while there is room every item enters; once full, an item of a class
      that does not hold the most slots evicts a random item of the largest class (ties: the
      lowest label), and an item of a largest class replaces a random item of its own class with
      probability (its class's slots) / (items of its class seen), a reservoir per class.

    Items are stored as given (on the CPU). Choices draw from the buffer's own generator
    (seeded by ``seed``, saved in ``state_dict``), so filling is reproducible.

    Args:
        capacity: items kept, ≥ 1.
        mode: ``reservoir`` or ``class_balanced``.
        seed: seed of the buffer's generator.
    """

    def __init__(self, capacity: int, mode: str = "reservoir", seed: int = 0):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity: expected an int >= 1, got {capacity!r}")
        if mode not in REPLAY_MODES:
            raise ValueError(f"mode: expected one of {REPLAY_MODES}, got {mode!r}")
        self.capacity = capacity
        self.mode = mode
        self.generator = torch.Generator().manual_seed(seed)
        self.images: Tensor | None = None
        self.labels = torch.zeros(0, dtype=torch.long)
        self.seen = 0
        self.seen_per_class: dict[int, int] = {}

    def __len__(self) -> int:
        return self.labels.numel()

    @torch.no_grad()
    def add(self, images: Tensor, labels: Tensor) -> None:
        """Offers a batch of items, in order, to the buffer."""
        if labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels: expected one label per image ({images.shape[0]}), got shape "
                f"{tuple(labels.shape)}"
            )
        images, labels = images.detach().cpu(), labels.detach().cpu().long()
        if self.images is None:
            self.images = images.new_empty((0, *images.shape[1:]))
        elif images.shape[1:] != self.images.shape[1:]:
            raise ValueError(
                f"images: expected items of shape {tuple(self.images.shape[1:])}, got "
                f"{tuple(images.shape[1:])}"
            )
        if self.mode == "reservoir":
            self._add_reservoir(images, labels)
        else:
            for image, label in zip(images, labels.tolist()):
                self._add_class_balanced(image, label)

    def _add_reservoir(self, images: Tensor, labels: Tensor) -> None:
        room = min(self.capacity - len(self), images.shape[0])
        self.images = torch.cat([self.images, images[:room]])
        self.labels = torch.cat([self.labels, labels[:room]])
        self.seen += room
        rest = images.shape[0] - room
        if rest == 0:
            return
        # Item number n (1-based) draws a slot uniformly from [0, n); a slot < capacity is
        # replaced. Several items may hit one slot: the last of them is what remains.
        numbers = torch.arange(self.seen + 1, self.seen + rest + 1, dtype=torch.float64)
        slots = (torch.rand(rest, generator=self.generator, dtype=torch.float64) * numbers).long()
        self.seen += rest
        hit = slots < self.capacity
        order = torch.arange(rest)
        last = torch.full((self.capacity,), -1, dtype=torch.long)
        last.scatter_reduce_(0, slots[hit], order[hit], reduce="amax")
        replaced = (last >= 0).nonzero().squeeze(1)
        self.images[replaced] = images[room:][last[replaced]]
        self.labels[replaced] = labels[room:][last[replaced]]

    def _add_class_balanced(self, image: Tensor, label: int) -> None:
        self.seen += 1
        self.seen_per_class[label] = self.seen_per_class.get(label, 0) + 1
        if len(self) < self.capacity:
            self.images = torch.cat([self.images, image[None]])
            self.labels = torch.cat([self.labels, torch.tensor([label])])
            return
        counts = torch.bincount(self.labels, minlength=label + 1)
        largest = int(counts.argmax())
        if counts[label] < counts[largest]:
            slot = self._random_slot_of(largest)
        else:
            keep = counts[label].item() / self.seen_per_class[label]
            if torch.rand((), generator=self.generator).item() >= keep:
                return
            slot = self._random_slot_of(label)
        self.images[slot] = image
        self.labels[slot] = label

    def _random_slot_of(self, label: int) -> int:
        slots = (self.labels == label).nonzero().squeeze(1)
        return int(slots[torch.randint(slots.numel(), (), generator=self.generator)])

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """min(n, len(self)) distinct items drawn uniformly (from ``generator``, or torch's
        global generator), as (images, labels)."""
        if n < 0:
            raise ValueError(f"n: expected >= 0, got {n}")
        if self.images is None:
            raise RuntimeError("sample: the buffer is empty; add items first")
        picks = torch.randperm(len(self), generator=generator)[:n]
        return self.images[picks], self.labels[picks]

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "capacity": self.capacity,
            "images": self.images,
            "labels": self.labels,
            "seen": self.seen,
            "seen_per_class": self.seen_per_class,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["mode"], state["capacity"]) != (self.mode, self.capacity):
            raise ValueError(
                f"state: a {state['mode']} buffer of {state['capacity']} items, this one is a "
                f"{self.mode} buffer of {self.capacity}"
            )
        self.images, self.labels = state["images"], state["labels"]
        self.seen = state["seen"]
        self.seen_per_class = dict(state["seen_per_class"])
        self.generator.set_state(state["generator"])
