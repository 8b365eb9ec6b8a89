"""``python -m hvision_ext.demo``: the bidirectional scans of a Vision Mamba block on CPU, with the
fused kernels and with the pure-PyTorch reference: how far apart they are, and how fast.

A Vision Mamba block scans its token sequence forward and backward, each direction with its own
parameters, and averages the two. With ``reverse=True`` the backward scan runs on the tokens in
place, without flipping the sequence.
"""

import argparse
from collections.abc import Callable

import torch
from torch import Tensor

from . import reference
from .bench.selective_scan import make_inputs
from .bench.timing import time_impl
from .ops import selective_scan

Scan = Callable[..., Tensor]


def vim_inputs(batch: int, tokens: int, dim: int, state: int) -> dict[str, Tensor]:
    """u and z shared by both directions; delta, A, B, C, D, delta_bias per direction (the
    backward direction's are suffixed ``_b``), as Vision Mamba's x_proj_b and dt_proj_b make."""
    forward = make_inputs(torch.device("cpu"), torch.float32, batch, dim, tokens, state, seed=0)
    backward = make_inputs(torch.device("cpu"), torch.float32, batch, dim, tokens, state, seed=1)
    inputs = forward | {
        f"{name}_b": backward[name] for name in ("delta", "A", "B", "C", "D", "delta_bias")
    }
    return {name: tensor.requires_grad_() for name, tensor in inputs.items()}


def bidirectional(scan: Scan, x: dict[str, Tensor]) -> Tensor:
    """(forward scan + reverse scan) / 2, both gated by z, as in a Vision Mamba block."""
    common = {"u": x["u"], "z": x["z"], "delta_softplus": True}
    out = scan(
        delta=x["delta"],
        A=x["A"],
        B=x["B"],
        C=x["C"],
        D=x["D"],
        delta_bias=x["delta_bias"],
        **common,
    )
    out_b = scan(
        delta=x["delta_b"],
        A=x["A_b"],
        B=x["B_b"],
        C=x["C_b"],
        D=x["D_b"],
        delta_bias=x["delta_bias_b"],
        reverse=True,
        **common,
    )
    return (out + out_b) / 2


def forward_backward(
    scan: Scan, x: dict[str, Tensor], cotangent: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    out = bidirectional(scan, x)
    return out, torch.autograd.grad(out, list(x.values()), cotangent)


def max_differences(x: dict[str, Tensor], cotangent: Tensor) -> tuple[float, float]:
    """Largest |kernels - reference| over the output, and over every input's gradient."""
    out, grads = forward_backward(selective_scan, x, cotangent)
    ref_out, ref_grads = forward_backward(reference.selective_scan, x, cotangent)
    grad_diff = max((g - r).abs().max().item() for g, r in zip(grads, ref_grads, strict=True))
    return (out - ref_out).abs().max().item(), grad_diff


def median_ms(fn: Callable[[], object], budget_s: float) -> float:
    return time_impl(fn, torch.device("cpu"), budget_s=budget_s).median_s * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hvision_ext.demo",
        description="Vision Mamba bidirectional scans: fused kernels vs the reference, on CPU.",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--tokens", type=int, default=197, help="196 patches of a 224² image + a class token"
    )
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument(
        "--budget", type=float, default=1.0, metavar="SECONDS", help="timing per measurement"
    )
    args = parser.parse_args(argv)

    x = vim_inputs(args.batch, args.tokens, args.dim, args.state)
    cotangent = torch.randn_like(x["u"])
    print("Vision Mamba bidirectional selective scan (forward + reverse=True), CPU, float32")
    print(
        f"  batch {args.batch}, {args.tokens} tokens, dim {args.dim}, state {args.state}; variable B/C, D, "
        f"z gate, delta_bias + softplus; {torch.get_num_threads()} threads"
    )
    out_diff, grad_diff = max_differences(x, cotangent)
    print(f"  max |kernels - reference|: output {out_diff:.2e}, gradients {grad_diff:.2e}")

    print(f"  {'':18s}{'kernels':>12s}{'reference':>12s}{'speed-up':>10s}")
    with torch.no_grad():
        forward = [
            median_ms(lambda scan=scan: bidirectional(scan, x), args.budget)
            for scan in (selective_scan, reference.selective_scan)
        ]
    both = [
        median_ms(lambda scan=scan: forward_backward(scan, x, cotangent), args.budget)
        for scan in (selective_scan, reference.selective_scan)
    ]
    for label, (kernels, ref) in (("forward", forward), ("forward+backward", both)):
        print(f"  {label:18s}{kernels:>9.2f} ms{ref:>9.1f} ms{ref / kernels:>9.1f}x")


if __name__ == "__main__":
    main()
