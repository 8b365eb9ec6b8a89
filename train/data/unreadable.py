"""Data sets of files that skip the ones they cannot read (a corrupt image, a truncated video,
a FIFO named like a video): each skip is warned about once per item and counted across the
loader's worker processes (``take_skipped``). In training the next readable item takes an
unreadable one's place, so that batches keep their size; in evaluation the item is None, which
``collate_readable`` drops, so that nothing is scored in its place."""

import stat
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

# Slots of the shared skip counter: one per loader worker, one for the main process.
MAX_WORKERS = 64
# What a path that is not a regular file is, by the first letter of ``stat.filemode``.
FILE_KINDS = {
    "d": "a directory",
    "p": "a FIFO",
    "c": "a character device",
    "b": "a block device",
    "s": "a socket",
}


class UnreadableError(RuntimeError):
    """A file of a data set that cannot be opened or decoded."""


class SkippedFileWarning(UserWarning):
    """A data set skipped an unreadable file."""


def check_regular_file(path: Path, error: type[UnreadableError]) -> None:
    """Raises ``error`` naming ``path`` unless it is a regular file (links followed): reading a
    FIFO or a device blocks or never ends, in every decoder."""
    try:
        mode = path.stat().st_mode
    except OSError as problem:
        raise error(f"{path}: cannot open ({problem.strerror})") from problem
    if not stat.S_ISREG(mode):
        kind = FILE_KINDS.get(stat.filemode(mode)[0], "a special file")
        raise error(f"{path}: expected a regular file, found {kind}")


class SkipCounter:
    """Unreadable items skipped, counted across loader worker processes (shared memory, one
    slot per process, so no two processes write the same number)."""

    def __init__(self) -> None:
        self._counts = torch.zeros(MAX_WORKERS + 1, dtype=torch.int64).share_memory_()

    def add(self) -> None:
        worker = get_worker_info()
        self._counts[0 if worker is None else 1 + worker.id % MAX_WORKERS] += 1

    def take(self) -> int:
        """The count since the last call; resets it."""
        total = int(self._counts.sum())
        self._counts.zero_()
        return total


class SkipsUnreadable(Dataset):
    """The skipping of unreadable items for a data set of files: a subclass implements
    ``_load(position)``, which raises ``UnreadableError`` (naming the file) when it cannot, and
    ``__len__``; ``skipped_warning`` is the warning category of its skips."""

    skipped_warning: type[SkippedFileWarning] = SkippedFileWarning

    def __init__(self, train: bool):
        self.train = train
        self.reset_skips()

    def _load(self, position: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        """Item ``index``; an unreadable one is skipped (counted, one warning): in training the
        next readable one is returned instead, in evaluation None."""
        for attempt in range(len(self) if self.train else 1):
            position = (index + attempt) % len(self)
            try:
                return self._load(position)
            except UnreadableError as error:
                self._skip(position, error)
        if not self.train:
            return None
        raise UnreadableError(f"none of the {len(self)} files of the data set can be read")

    def take_skipped(self) -> int:
        """Items skipped since the last call (every loader worker's), and reset the count."""
        return self.skipped.take()

    def reset_skips(self) -> None:
        """A count and warnings of its own (for a copy that holds other items)."""
        self.skipped = SkipCounter()
        self._warned: set[int] = set()

    def _skip(self, position: int, error: UnreadableError) -> None:
        self.skipped.add()
        if position not in self._warned:
            self._warned.add(position)
            warnings.warn(
                f"skipped an unreadable file: {error}", self.skipped_warning, stacklevel=3
            )


def collate_readable(items: list[Any]) -> Any:
    """``default_collate`` of the items that are not None (unreadable evaluation items); None
    when no item is left."""
    items = [item for item in items if item is not None]
    return default_collate(items) if items else None


def readable_batches(loader: Iterable[Any]) -> Iterator[Any]:
    """The batches of an evaluation loader, without the None of a batch whose every item was
    unreadable (``collate_readable``): what every evaluation loop iterates."""
    return (batch for batch in loader if batch is not None)
