"""Timing of zero-argument callables on CPU and CUDA: warm-up, then repeats within a time budget,
reporting every sample (the median is the figure to quote)."""

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch


@dataclasses.dataclass
class Timing:
    """The samples of one implementation, in seconds, and its peak memory if measured."""

    samples_s: list[float]
    peak_bytes: int | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes; on CUDA, its GPU time between two events."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    start_event = torch.cuda.Event(enable_timing=True)
    end_event = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)  # so nothing queued before is counted
    start_event.record()
    fn()
    end_event.record()
    end_event.synchronize()
    return start_event.elapsed_time(end_event) / 1e3


def time_impl(
    fn: Callable[[], object],
    device: torch.device,
    *,
    budget_s: float = 1.0,
    min_runs: int = 1,
    max_runs: int = 50,
    slow: bool = False,
) -> Timing:
    """Times ``fn``: warm-up calls for a fifth of the budget (at least one), then timed calls
    until ``budget_s`` of wall time has passed and there are ``min_runs`` samples, or there are
    ``max_runs``. A ``slow`` callable runs exactly once, without warm-up.

    On CUDA, also records the peak memory the timed calls allocated beyond what was already
    allocated before them (inputs shared by all implementations are not counted).
    """
    if not slow:
        _warm_up(fn, device, budget_s / 5)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    samples = [time_call(fn, device)]
    while (
        not slow
        and len(samples) < max_runs
        and (len(samples) < min_runs or time.perf_counter() - start < budget_s)
    ):
        samples.append(time_call(fn, device))
    peak = torch.cuda.max_memory_allocated(device) - allocated_before if on_cuda else None
    return Timing(samples, peak)


def _warm_up(fn: Callable[[], object], device: torch.device, duration_s: float, max_calls: int = 5) -> None:
    start = time.perf_counter()
    for _ in range(max_calls):
        time_call(fn, device)
        if time.perf_counter() - start >= duration_s:
            break


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes per second a device-to-device copy of ``nbytes`` achieves, counting the read and the
    write: the practical peak that achieved bandwidths are compared with."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = time_impl(lambda: dst.copy_(src), device, budget_s=0.5)
    return 2 * nbytes / timing.median_s
