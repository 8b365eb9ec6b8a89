"""``python -m hvision_ext.bench.scan_states``: selective_scan's CPU kernels alone at several state
sizes N, in ns per (channel, step): how the cost of a step grows with N.

The forward and backward kernels (``torch.ops.hvision.selective_scan_fwd`` / ``_bwd``) run on the
inputs of the ``vim-cpu`` case (variable B/C, D, z, delta_bias, softplus) with only N changed.
Each figure is the fastest of ``--repeats`` runs, interleaved over N, the least disturbed by
other work on the machine. ``HVISION_CPU_ISA=avx2`` holds the kernels to AVX2.

OMP_NUM_THREADS=1 python -m hvision_ext.bench.scan_states --states 4 8 16
"""

import argparse
import time
from collections.abc import Callable, Sequence

import torch

from .. import cpu_isa
from .selective_scan import VIM_CPU, make_inputs


def kernel_calls(batch: int, dim: int, length: int, state: int) -> tuple[Callable, Callable]:
    """The forward and the backward kernel call of one scan, ready to repeat."""
    x = make_inputs(torch.device("cpu"), torch.float32, batch, dim, length, state)
    # B, C as the op hands them to the kernels: (L, N) rows in memory.
    B, C = (x[name].transpose(-1, -2).contiguous().transpose(-1, -2) for name in "BC")
    args = (x["u"], x["delta"], x["A"], B, C, x["D"], x["z"], x["delta_bias"], True, None, False)
    out, _, checkpoints = torch.ops.hvision.selective_scan_fwd(*args)
    dout = torch.randn_like(out)
    return (
        lambda: torch.ops.hvision.selective_scan_fwd(*args),
        lambda: torch.ops.hvision.selective_scan_bwd(dout, None, *args, checkpoints),
    )


def time_states(
    states: Sequence[int], *, batch: int, dim: int, length: int, repeats: int
) -> dict[int, tuple[float, float]]:
    """Per N: the fastest forward and backward call, in ns per (channel, step)."""
    calls = {state: kernel_calls(batch, dim, length, state) for state in states}
    best = {state: [float("inf"), float("inf")] for state in states}
    for _ in range(repeats):
        for state, pair in calls.items():
            for i, call in enumerate(pair):
                start = time.perf_counter()
                call()
                best[state][i] = min(best[state][i], time.perf_counter() - start)
    per_step = 1e9 / (batch * dim * length)
    return {state: (fwd * per_step, bwd * per_step) for state, (fwd, bwd) in best.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hvision_ext.bench.scan_states")
    parser.add_argument("--states", type=int, nargs="+", default=[4, 8, 16], metavar="N")
    parser.add_argument("--repeats", type=int, default=20)
    for size in ("batch", "dim", "length"):
        parser.add_argument(f"--{size}", type=int, default=VIM_CPU[size])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = {"batch": args.batch, "dim": args.dim, "length": args.length}
    print(f"selective_scan kernels, {cpu_isa()}, 1 thread, ns per (channel, step), {sizes}")
    for state, (fwd, bwd) in time_states(args.states, **sizes, repeats=args.repeats).items():
        print(f"N {state:3d}: fwd {fwd:6.2f}  bwd {bwd:6.2f}  fwd+bwd {fwd + bwd:6.2f}")


if __name__ == "__main__":
    main()
