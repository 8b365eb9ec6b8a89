"""Weighted sampling for training data whose groups (e.g. video domains) are unequal in size:
``domain_balance_weights`` gives every domain the same total weight, and
``WeightedDistributedSampler`` draws by those weights, sharded across processes."""

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ..engine import distributed


def domain_balance_weights(domains: Sequence[int] | Tensor) -> Tensor:
    """float64 weights, one per sample: 1 / the number of samples of its domain, so that every
    domain (the unknown domain, -1, counting as one more) is drawn equally often."""
    domains = torch.as_tensor(domains)
    if domains.dim() != 1 or len(domains) == 0 or domains.is_floating_point():
        raise ValueError(
            f"domains must be a non-empty sequence of integer domain indices, got a "
            f"{domains.dtype} tensor of shape {tuple(domains.shape)}"
        )
    _, group, counts = domains.unique(return_inverse=True, return_counts=True)
    return 1.0 / counts[group].double()


class WeightedDistributedSampler(Sampler[int]):
    """Draws ``num_samples`` indices per epoch with replacement, index i with probability
    ∝ ``weights[i]``. The draw is seeded by ``seed`` + the epoch (``set_epoch``), so iterating
    twice in one epoch gives the same order (a mid-epoch resume relies on it). Across
    ``num_replicas`` processes, like ``DistributedSampler``, each takes every
    ``num_replicas``-th index of one shared draw of ⌈num_samples / num_replicas⌉ ·
    num_replicas indices.

    Args:
        weights: (N,) non-negative, finite, not all zero; need not sum to 1.
        num_samples: indices drawn per epoch over all processes (default N).
        num_replicas, rank: the process group (default: the current one).
        seed: shared by every process.
    """

    def __init__(
        self,
        weights: Tensor | Sequence[float],
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ):
        self.weights = _check_weights(torch.as_tensor(weights, dtype=torch.float64))
        num_samples = len(self.weights) if num_samples is None else num_samples
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_replicas = distributed.world_size() if num_replicas is None else num_replicas
        self.rank = distributed.rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")
        self.num_samples = -(-num_samples // self.num_replicas)  # per process
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(
            self.weights, self.num_samples * self.num_replicas, True, generator=generator
        )
        return iter(draws[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def _check_weights(weights: Tensor) -> Tensor:
    if weights.dim() != 1 or len(weights) == 0:
        raise ValueError(
            f"weights must be a non-empty 1-D tensor, got shape {tuple(weights.shape)}"
        )
    if not weights.isfinite().all() or (weights < 0).any():
        raise ValueError(
            f"weights must be finite and non-negative, got values in "
            f"[{weights.min().item()}, {weights.max().item()}]"
        )
    if weights.sum() == 0:
        raise ValueError(f"weights must not all be zero ({len(weights)} zeros)")
    return weights
