"""Results of a bench run: the table and speed-up summary printed to people, and the JSON record."""

import dataclasses
import json
import platform
from pathlib import Path

import torch

from .registry import HVISION
from .timing import Timing


@dataclasses.dataclass
class Result:
    """One implementation of one case: its timing, or the error that stopped it."""

    op: str
    case: str
    shape: str
    mode: str
    impl: str
    timing: Timing | None
    error: str | None = None
    bytes_moved: int | None = None
    notes: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.op, self.case)


@dataclasses.dataclass
class RunInfo:
    """Where and how the results were taken."""

    device: str
    device_name: str
    dtype: str
    torch_version: str
    threads: int
    copy_bandwidth: float | None  # bytes/s of a device-to-device copy; CUDA only
    instruction_sets: dict[str, object] | None = None  # CPU only: what bench.isa.describe() says


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_instruction_sets(sets: dict[str, object]) -> str:
    limits = sets["library_limits"] or "none"
    return (
        f"instruction sets: hvision {sets['hvision_cpu_isa']} (CPU: {sets['cpu_isa_native']}), "
        f"tile GEMM {sets['hvision_cpu_gemm']}; ATen {sets['aten_cpu_capability']}, "
        f"BLAS {sets['blas']}; library limits: {limits}"
    )


def speedup(result: Result, results: list[Result]) -> float | None:
    """How many times faster hvision ran than ``result``'s implementation on the same case."""
    hvision = next((r for r in results if r.key == result.key and r.impl == HVISION), None)
    if result.timing is None or hvision is None or hvision.timing is None:
        return None
    return result.timing.median_s / hvision.timing.median_s


def bandwidth(result: Result) -> float | None:
    """Achieved bytes/s of the case's minimum traffic, when the case declares it."""
    if result.timing is None or result.bytes_moved is None:
        return None
    return result.bytes_moved / result.timing.median_s


def format_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.3f}"


def format_speedup(factor: float | None) -> str:
    return "" if factor is None else f"{factor:.1f}x" if factor >= 10 else f"{factor:.2f}x"


def table_rows(results: list[Result], info: RunInfo) -> list[list[str]]:
    on_cuda = info.device == "cuda"
    header = ["op", "case", "mode", "impl", "median ms", "runs", "hvision speed-up", "peak MiB"]
    if on_cuda:
        header += ["GB/s", "% of copy"]
    rows = [header]
    for result in results:
        row = [result.op, result.case, result.mode, result.impl]
        if result.timing is None:
            rows.append(row + ["error"] + [""] * (len(header) - len(row) - 1))
            continue
        factor = None if result.impl == HVISION else speedup(result, results)
        peak = result.timing.peak_bytes
        row += [
            format_ms(result.timing.median_s),
            str(len(result.timing.samples_s)),
            format_speedup(factor),
            "" if peak is None else f"{peak / 2**20:.0f}",
        ]
        if on_cuda:
            achieved = bandwidth(result)
            row.append("" if achieved is None else f"{achieved / 1e9:.0f}")
            row.append(
                ""
                if achieved is None or not info.copy_bandwidth
                else f"{100 * achieved / info.copy_bandwidth:.0f}%"
            )
        rows.append(row)
    return rows


def format_table(rows: list[list[str]]) -> str:
    """The rows (the first is the header) with columns padded to their widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def speedup_summary(results: list[Result]) -> list[str]:
    """One line per case: hvision's speed-up over every other implementation that ran."""
    lines = []
    for key in dict.fromkeys(r.key for r in results):
        case_results = [r for r in results if r.key == key]
        factors = [
            f"{format_speedup(speedup(r, results))} vs {r.impl}"
            for r in case_results
            if r.impl != HVISION and speedup(r, results) is not None
        ]
        if factors:
            lines.append(
                f"  {'/'.join(key)} ({case_results[0].mode}): hvision is " + ", ".join(factors)
            )
    return lines


def write_json(path: Path, results: list[Result], info: RunInfo) -> None:
    records = []
    for result in results:
        record = {
            "op": result.op,
            "case": result.case,
            "shape": result.shape,
            "mode": result.mode,
            "impl": result.impl,
            "notes": result.notes,
            "error": result.error,
            "bytes_moved": result.bytes_moved,
        }
        if result.timing is not None:
            record |= {
                "median_s": result.timing.median_s,
                "samples_s": result.timing.samples_s,
                "peak_bytes": result.timing.peak_bytes,
                "bandwidth_Bps": bandwidth(result),
                "hvision_speedup": None if result.impl == HVISION else speedup(result, results),
            }
        records.append(record)
    document = {
        "device": info.device,
        "device_name": info.device_name,
        "dtype": info.dtype,
        "torch_version": info.torch_version,
        "threads": info.threads,
        "copy_bandwidth_Bps": info.copy_bandwidth,
        "instruction_sets": info.instruction_sets,
        "results": records,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
