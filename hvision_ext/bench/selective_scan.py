"""Bench cases for ``selective_scan``: the scans of a Vision Mamba block (variable B and C, D, a z
gate, delta bias and softplus), against the per-step reference, a loop in the shape of
mamba_ssm's ``selective_scan_ref`` (what CPU users of mamba_ssm run) and, on CUDA, mamba_ssm's
own kernel when it is installed."""

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reference
from ..ops import selective_scan
from .registry import BenchCase, Impl, Mode, bench_case

Scan = Callable[..., Tensor]


def make_inputs(
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    dim: int,
    length: int,
    state: int,
    *,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Inputs as a Mamba layer produces them: A from the S4D-real initialisation (-1 … -N),
    delta_bias the inverse softplus of step sizes log-uniform in [1e-3, 1e-1], small delta.
    A, D and delta_bias are float32 (as in mamba_ssm); the rest are ``dtype``."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int, dtype: torch.dtype = dtype, scale: float = 1.0) -> Tensor:
        return (scale * torch.randn(*shape, generator=gen, device=device)).to(dtype)

    step = torch.exp(
        torch.rand(dim, generator=gen, device=device) * (math.log(1e-1) - math.log(1e-3))
        + math.log(1e-3)
    )
    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length, scale=0.1),
        "A": -torch.arange(1, state + 1, dtype=torch.float32, device=device).repeat(dim, 1),
        "B": randn(batch, state, length),
        "C": randn(batch, state, length),
        "D": torch.ones(dim, device=device),
        "z": randn(batch, dim, length),
        "delta_bias": step + torch.log(-torch.expm1(-step)),  # softplus⁻¹(step)
    }


def sliced_loop_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """The scan written the way mamba_ssm's ``selective_scan_ref`` is (variable B, C only): the
    full (batch, dim, L, N) decay and drive tensors are built up front and step i slices
    ``[:, :, i]`` out of them. The backward of every slice writes a zero-filled gradient of the
    full tensor, so the backward is O(L²): the cost this style of loop has on CPU."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    B, C = B.float(), C.float()
    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_B_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = A.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = delta_A[:, :, i] * x + delta_B_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype_in)


def mamba_ssm_scan() -> Scan | None:
    """mamba_ssm's CUDA ``selective_scan_fn``, or None when mamba_ssm cannot be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def scan_call(scan: Scan, inputs: dict[str, Tensor], mode: Mode, cotangent: Tensor) -> Impl:
    """One call of ``scan`` with delta_softplus; for fwd+bwd, also the backward of
    ``(out * cotangent).sum()`` to every input (``torch.autograd.grad``, so nothing accumulates
    between calls)."""
    if mode == "fwd":
        return lambda: scan(**inputs, delta_softplus=True)
    leaves = list(inputs.values())

    def forward_backward() -> Sequence[Tensor]:
        out = scan(**inputs, delta_softplus=True)
        return torch.autograd.grad(out, leaves, cotangent)

    return forward_backward


def scan_case(
    device: torch.device,
    dtype: torch.dtype,
    mode: Mode,
    sizes: dict[str, int],
    *,
    sliced_loop: bool = True,
    bytes_moved: Callable[[dict[str, Tensor]], int] | None = None,
) -> BenchCase:
    """A case of the Vision Mamba scan at ``sizes`` (batch, dim, length, state), with the impls
    that apply on ``device``."""
    inputs = make_inputs(device, dtype, **sizes)
    for tensor in inputs.values():
        tensor.requires_grad_(mode == "fwd+bwd")
    gen = torch.Generator(device=device).manual_seed(1)
    cotangent = torch.randn(inputs["u"].shape, generator=gen, device=device).to(dtype)
    scans: dict[str, Scan] = {"hvision": selective_scan, "reference": reference.selective_scan}
    if sliced_loop:
        scans["sliced-loop"] = sliced_loop_scan
    mamba = mamba_ssm_scan() if device.type == "cuda" else None
    if mamba is not None:
        scans["mamba_ssm"] = mamba
    return BenchCase(
        shape="batch {batch}, dim {dim}, L {length}, N {state}".format(**sizes),
        impls={name: scan_call(scan, inputs, mode, cotangent) for name, scan in scans.items()},
        mode=mode,
        bytes_moved=bytes_moved(inputs) if bytes_moved else None,
        # The sliced loop's backward is O(L²); its forward is as fast as the reference's.
        slow=frozenset({"sliced-loop"}) if sliced_loop and mode == "fwd+bwd" else frozenset(),
        notes="variable B/C (batch, N, L), D, z, delta_bias, delta_softplus",
    )


VIM_CPU = {"batch": 2, "dim": 256, "length": 1024, "state": 16}
VIM_GPU = {"batch": 8, "dim": 1536, "length": 2048, "state": 16}


def fwd_bwd_min_bytes(inputs: dict[str, Tensor]) -> int:
    """The fewest bytes a forward plus a backward pass must move, each pass one kernel that
    touches every tensor once:
      forward reads u, delta, z, B, C, A, D, delta_bias and writes out (like u);
      backward reads them all again plus dout (like u), and writes du, ddelta, dz (like u),
      dB, dC (like B, C) and dA, dD, ddelta_bias (like A, D, delta_bias).
    States saved for the backward are an implementation's choice and not counted."""
    inputs_bytes = sum(tensor.nbytes for tensor in inputs.values())
    out_bytes = inputs["u"].nbytes
    forward = inputs_bytes + out_bytes
    backward = inputs_bytes + out_bytes + inputs_bytes  # inputs and dout; one gradient per input
    return forward + backward


@bench_case(op="selective_scan", name="vim-cpu", devices=("cpu", "cuda"))
def vim_cpu(device: torch.device, dtype: torch.dtype) -> BenchCase:
    return scan_case(device, dtype, "fwd+bwd", VIM_CPU)


@bench_case(op="selective_scan", name="vim-cpu-fwd", devices=("cpu", "cuda"))
def vim_cpu_fwd(device: torch.device, dtype: torch.dtype) -> BenchCase:
    return scan_case(device, dtype, "fwd", VIM_CPU)


@bench_case(op="selective_scan", name="vim-gpu", devices=("cuda",))
def vim_gpu(device: torch.device, dtype: torch.dtype) -> BenchCase:
    # No sliced loop: its O(L²) backward would move some 20 TB here, spending scarce GPU time on
    # an anchor GPU users do not run (they have mamba_ssm's kernel).
    return scan_case(
        device, dtype, "fwd+bwd", VIM_GPU, sliced_loop=False, bytes_moved=fwd_bwd_min_bytes
    )
