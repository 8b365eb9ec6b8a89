"""Timing of zero-argument callables on CPU and CUDA: warm-up, then repeats within a time budget,
reporting every sample (the median is the figure to quote)."""

import contextlib
import ctypes
import dataclasses
import functools
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping
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


# Implementations timed together take their timed calls in this many rounds, each giving every
# one an equal share of its budget.
_ROUNDS = 5


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
    """Times ``fn`` alone (``time_impls`` with one implementation); raises what ``fn`` raises."""
    (result,) = time_impls(
        {"": fn},
        device,
        budget_s=budget_s,
        min_runs=min_runs,
        max_runs=max_runs,
        slow={""} if slow else (),
        tensor_peak=tensor_peak,
    ).values()
    if isinstance(result, Exception):
        raise result
    return result


def time_impls(
    impls: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    budget_s: float = 1.0,
    min_runs: int = 1,
    max_runs: int = 50,
    slow: Collection[str] = (),
    tensor_peak: bool = False,
) -> dict[str, Timing | Exception]:
    """Times implementations of one computation together. Each is warmed up for a fifth of the
    budget (at least one call) and timed once with its memory measured; then their timed calls
    are interleaved, ``_ROUNDS`` rounds of ``budget_s / _ROUNDS`` each (at least one call), and
    continue until each has ``min_runs`` samples, none beyond ``max_runs``. A slow spell of a
    shared machine then falls on all of them, not on whichever ran at the time. A ``slow`` one
    runs exactly once, without warm-up. One that raises gets the exception in place of its
    Timing and runs no more.

    Memory is the peak the first timed call allocated beyond what was already allocated before
    it (inputs shared by all implementations are not counted): on CUDA from the caching
    allocator, on a Linux CPU from peak resident memory. With ``tensor_peak``, also the peak of
    the tensors alone (``cpu_tensor_peak_bytes`` on the CPU, in an extra untimed call after the
    warm-up, not for a slow one; the caching allocator's peak on CUDA).
    """
    results: dict[str, Timing | Exception] = {}
    for name, fn in impls.items():
        try:
            results[name] = _first_timing(fn, device, budget_s, name in slow, tensor_peak)
        except Exception as err:  # reported in place of the timing; the others still run
            results[name] = err

    def timed(name: str, runs: int) -> bool:
        result = results[name]
        return isinstance(result, Timing) and name not in slow and len(result.samples_s) < runs

    def add_samples(name: str, seconds: float, runs: int) -> None:
        timing = results[name]
        start = time.perf_counter()
        try:
            timing.samples_s.append(time_call(impls[name], device))
            while len(timing.samples_s) < runs and time.perf_counter() - start < seconds:
                timing.samples_s.append(time_call(impls[name], device))
        except Exception as err:  # as above
            results[name] = err

    for _ in range(_ROUNDS):
        for name in [name for name in impls if timed(name, max_runs)]:
            add_samples(name, budget_s / _ROUNDS, max_runs)
    for name in [name for name in impls if timed(name, min_runs)]:
        add_samples(name, math.inf, min_runs)
    return results


def _first_timing(
    fn: Callable[[], object], device: torch.device, budget_s: float, slow: bool, tensor_peak: bool
) -> Timing:
    """The warm-up and the first timed call of ``fn``, with its memory (see ``time_impls``)."""
    on_cuda = device.type == "cuda"
    if not slow:
        _warm_up(fn, device, budget_s / 5)
    measure_tensors = tensor_peak and not on_cuda and not slow
    cpu_tensor_peak = cpu_tensor_peak_bytes(fn) if measure_tensors else None
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
        sample = time_call(fn, device)
        peak = torch.cuda.max_memory_allocated(device) - allocated_before
        return Timing([sample], peak, peak if tensor_peak else None)
    if cpu_peak_supported():
        sample, peak = _time_with_cpu_peak(fn, device)
    else:
        sample, peak = time_call(fn, device), None
    return Timing([sample], peak, cpu_tensor_peak)


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
