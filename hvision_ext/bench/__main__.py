"""``python -m hvision_ext.bench``: time the registered cases and print how hvision compares.

python -m hvision_ext.bench --list
python -m hvision_ext.bench --op selective_scan --device cpu
python -m hvision_ext.bench --device cuda --json bench-cuda.json
python -m hvision_ext.bench --device cpu --isa avx2   # everything held to AVX2 (see bench.isa)
"""

import argparse
import sys
from pathlib import Path

import torch

from . import all_cases, isa, select_cases
from .registry import CaseSpec
from .report import (
    Result,
    RunInfo,
    describe_instruction_sets,
    device_name,
    format_table,
    speedup_summary,
    table_rows,
    write_json,
)
from .timing import copy_bandwidth, time_impls

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# What each device's models train in: full precision on CPU, bf16 mixed precision on GPUs.
DEFAULT_DTYPE = {"cpu": "float32", "cuda": "bfloat16"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hvision_ext.bench",
        description="Time the registered cases and compare hvision with the other implementations.",
    )
    parser.add_argument(
        "--op", nargs="+", action="extend", metavar="NAME", help="only these operators"
    )
    parser.add_argument(
        "--case", nargs="+", action="extend", metavar="NAME", help="only these cases"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: cuda when available",
    )
    parser.add_argument("--dtype", choices=DTYPES, help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument(
        "--budget", type=float, default=1.0, metavar="SECONDS", help="time per implementation"
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="write every result and sample here"
    )
    parser.add_argument(
        "--isa",
        choices=isa.LIBRARY_LIMITS,
        help="cpu: run hvision and the libraries the other implementations use as on a CPU with "
        "this instruction set (restarts the bench with their variables set; see bench.isa)",
    )
    parser.add_argument("--list", action="store_true", help="list the registered cases and exit")
    return parser.parse_args(argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_case(
    spec: CaseSpec, device: torch.device, dtype: torch.dtype, budget_s: float
) -> list[Result]:
    """Every implementation of one case, timed together (``time_impls``). A failure (of the
    builder or of one implementation, e.g. out of memory) is recorded as that result's error so
    the other results still come back."""
    try:
        case = spec.build(device, dtype)
    except Exception as err:  # whatever it is (e.g. CUDA out of memory), it is reported
        return [Result(spec.op, spec.name, "", "", "(build)", None, error=describe(err))]
    slow = [name for name in case.impls if name in case.slow]
    progress(
        f"[{spec.title}] {', '.join(case.impls)}"
        + (f" ({', '.join(slow)}: one run)" if slow else "")
    )
    timings = time_impls(case.impls, device, budget_s=budget_s, slow=slow)
    return [
        Result(
            spec.op,
            spec.name,
            case.shape,
            case.mode,
            name,
            None if isinstance(timing, Exception) else timing,
            describe(timing) if isinstance(timing, Exception) else None,
            case.bytes_moved,
            case.notes,
        )
        for name, timing in timings.items()
    ]


def describe(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def list_cases() -> None:
    for spec in all_cases():
        print(f"{spec.title:40s} devices: {', '.join(spec.devices)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        list_cases()
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        progress("hvision_ext.bench: --device cuda, but torch sees no CUDA device")
        return 2
    try:
        specs = select_cases(args.device, args.op, args.case)
    except ValueError as err:
        progress(f"hvision_ext.bench: {err}")
        return 2
    if not specs:
        progress(f"hvision_ext.bench: no selected case runs on {args.device} (see --list)")
        return 2

    if args.device == "cpu" and args.isa:
        isa.restart_under(args.isa, sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    dtype_name = args.dtype or DEFAULT_DTYPE[args.device]
    info = RunInfo(
        device=args.device,
        device_name=device_name(device),
        dtype=dtype_name,
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        copy_bandwidth=copy_bandwidth(device) if device.type == "cuda" else None,
        instruction_sets=isa.describe() if device.type == "cpu" else None,
    )
    print(
        f"hvision_ext.bench on {info.device_name} ({info.device}), {info.dtype}, "
        f"torch {info.torch_version}, {info.threads} threads"
    )
    if info.instruction_sets:
        print(describe_instruction_sets(info.instruction_sets))
    if info.copy_bandwidth:
        print(f"device-to-device copy bandwidth: {info.copy_bandwidth / 1e9:.0f} GB/s")

    results = []
    for spec in specs:
        case_results = run_case(spec, device, DTYPES[dtype_name], args.budget)
        if case_results[0].shape:
            print(f"{spec.title}: {case_results[0].shape}; {case_results[0].notes}")
        results += case_results

    print()
    print(format_table(table_rows(results, info)))
    print()
    print(
        f"hvision speed-up (other implementation's median time / hvision's), {info.device}, {info.dtype}:"
    )
    print("\n".join(speedup_summary(results)))
    errors = [r for r in results if r.error is not None]
    for result in errors:
        print(f"error in {result.op}/{result.case} {result.impl}: {result.error}")
    if args.json:
        write_json(args.json, results, info)
        print(f"results written to {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
