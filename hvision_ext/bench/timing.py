"""Timing of zero-argument callables on CPU and CUDA: warm-up, then repeats within a time budget,
reporting every sample (the median is the figure to quote)."""

import contextlib
import ctypes
import dataclasses
import functools
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


@dataclasses.dataclass
class Timing:
    """The samples of one implementation, in seconds, and its peak memory if measured."""

    samples_s: list[float]
    peak_bytes: int | None = None
    tensor_peak_bytes: int | None = None

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
    tensor_peak: bool = False,
) -> Timing:
    """Times ``fn``: warm-up calls for a fifth of the budget (at least one), then timed calls
    until ``budget_s`` of wall time has passed and there are ``min_runs`` samples, or there are
    ``max_runs``. A ``slow`` callable runs exactly once, without warm-up.

    Also records the peak memory the timed calls allocated beyond what was already allocated
    before them (inputs shared by all implementations are not counted): on CUDA from the caching
    allocator, on a Linux CPU from the first timed call's peak resident memory. With
    ``tensor_peak``, also the peak of the tensors alone (``cpu_tensor_peak_bytes`` on the CPU, in
    an extra untimed call; the caching allocator's peak on CUDA).
    """
    on_cuda = device.type == "cuda"
    measure_cpu_peak = not on_cuda and cpu_peak_supported()
    cpu_tensor_peak = cpu_tensor_peak_bytes(fn) if tensor_peak and not on_cuda else None
    if not slow:
        _warm_up(fn, device, budget_s / 5)
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    if measure_cpu_peak:
        sample, cpu_peak = _time_with_cpu_peak(fn, device)
        samples = [sample]
    else:
        samples, cpu_peak = [time_call(fn, device)], None
    while (
        not slow
        and len(samples) < max_runs
        and (len(samples) < min_runs or time.perf_counter() - start < budget_s)
    ):
        samples.append(time_call(fn, device))
    peak = torch.cuda.max_memory_allocated(device) - allocated_before if on_cuda else cpu_peak
    return Timing(samples, peak, (peak if on_cuda else cpu_tensor_peak) if tensor_peak else None)


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Sends file descriptor 2 to /dev/null: the profiler's C++ side logs its start and stop (and,
    in a CUDA build on a machine without a GPU, an error) on every call."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_tensor_peak_bytes(fn: Callable[[], object]) -> int:
    """The most bytes of CPU tensors alive at once during one call of ``fn``, beyond those alive
    before it, from the allocations and frees the profiler records: the CPU counterpart of the
    caching allocator's peak on CUDA. Unlike resident memory it does not depend on which freed
    pages malloc happens to reuse (resident peaks of one training step varied by a third between
    calls), and it leaves out memory that is not a tensor (BLAS buffers, kernels' scratch)."""
    with (
        _stderr_silenced(),
        torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as profile,
    ):
        fn()
    events = [e for e in profile.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        _CLEAR_REFS.write_text("5")
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def cpu_peak_supported() -> bool:
    """Whether CPU peak memory can be measured here: it needs Linux's resettable resident
    high-water mark (VmHWM) and glibc's malloc_trim."""
    return _glibc() is not None


def _resident_bytes(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _PROC_STATUS.read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024


def _time_with_cpu_peak(fn: Callable[[], object], device: torch.device) -> tuple[float, int]:
    """One timed call, and the most resident memory it added to what was resident before it."""
    # malloc keeps freed blocks resident for reuse; releasing its free pages first makes every
    # byte the call allocates show up as new resident memory.
    _glibc().malloc_trim(0)
    before = _resident_bytes("VmRSS")
    _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident size
    seconds = time_call(fn, device)
    return seconds, max(0, _resident_bytes("VmHWM") - before)


def _warm_up(
    fn: Callable[[], object], device: torch.device, duration_s: float, max_calls: int = 5
) -> None:
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
