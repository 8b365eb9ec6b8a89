"""The registry of benchmark cases.

Each operator's bench module registers its cases with ``@bench_case``; a case builder takes the
device and dtype to run on and returns a ``BenchCase``: the inputs already allocated, and one
zero-argument callable per implementation that runs the problem once.
"""

import dataclasses
from collections.abc import Callable, Iterable
from typing import Literal

import torch

Impl = Callable[[], object]
Mode = Literal["fwd", "fwd+bwd"]

# The implementation every other one is compared against; it must come first in ``impls``.
HVISION = "hvision"


@dataclasses.dataclass
class BenchCase:
    """One problem, timed under several implementations.

    Attributes:
        shape: the problem size, for people (e.g. "batch 2, dim 256, L 1024, N 16").
        impls: name -> zero-argument callable that runs the problem once; "hvision" first, then
            "reference" and any anchors. Leave out an implementation whose requirements are
            missing (e.g. a package that is not installed) rather than adding a failing one.
        mode: what one call runs: the forward pass, or forward and backward.
        bytes_moved: the fewest bytes any implementation must read and write per call; gives an
            achieved-bandwidth figure on CUDA.
        slow: names of implementations too slow to repeat; they run once, without warm-up.
        notes: anything a reader of the results should know.
    """

    shape: str
    impls: dict[str, Impl]
    mode: Mode
    bytes_moved: int | None = None
    slow: frozenset[str] = frozenset()
    notes: str = ""

    def __post_init__(self) -> None:
        if next(iter(self.impls), None) != HVISION:
            raise ValueError(
                f"BenchCase: the first implementation must be {HVISION!r}, got {list(self.impls)}"
            )
        if self.mode not in ("fwd", "fwd+bwd"):
            raise ValueError(f"BenchCase: mode must be 'fwd' or 'fwd+bwd', got {self.mode!r}")


CaseBuilder = Callable[[torch.device, torch.dtype], BenchCase]


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """A registered case: where it applies and how to build it."""

    op: str
    name: str
    devices: tuple[str, ...]
    build: CaseBuilder

    @property
    def title(self) -> str:
        return f"{self.op}/{self.name}"


_CASES: dict[tuple[str, str], CaseSpec] = {}


def bench_case(
    *, op: str, name: str, devices: Iterable[str] = ("cpu", "cuda")
) -> Callable[[CaseBuilder], CaseBuilder]:
    """Registers the decorated ``(device, dtype) -> BenchCase`` function as case ``op/name``."""

    def register(build: CaseBuilder) -> CaseBuilder:
        if (op, name) in _CASES:
            raise ValueError(f"bench case {op}/{name} is registered twice")
        _CASES[(op, name)] = CaseSpec(op, name, tuple(devices), build)
        return build

    return register


def all_cases() -> list[CaseSpec]:
    """Every registered case, in registration order."""
    return list(_CASES.values())


def select_cases(
    device: str, ops: Iterable[str] | None = None, names: Iterable[str] | None = None
) -> list[CaseSpec]:
    """The cases that run on ``device``, restricted to the given ops and case names if any.

    Raises ValueError for an op or case name that no registered case has, so a typo is not
    mistaken for an empty selection.
    """
    ops, names = set(ops or ()), set(names or ())
    _check_known("op", ops, {case.op for case in _CASES.values()})
    _check_known("case", names, {case.name for case in _CASES.values()})
    return [
        case
        for case in _CASES.values()
        if device in case.devices
        and (not ops or case.op in ops)
        and (not names or case.name in names)
    ]


def _check_known(what: str, wanted: set[str], known: set[str]) -> None:
    if wanted - known:
        raise ValueError(
            f"unknown bench {what}(s) {sorted(wanted - known)}; known: {sorted(known)}"
        )
