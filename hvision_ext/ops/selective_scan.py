"""``selective_scan``: the Mamba SSM scan as a fused operator (CPU and CUDA kernels)."""

import torch
from torch import Tensor

from .. import reference
from .._switch import switchable
from ._checks import check_same_device

# Steps between the states the forward pass saves for the backward pass (kScanChunk in
# csrc/common/step_math.h).
SCAN_CHUNK = 64

_fwd = torch.ops.hvision.selective_scan_fwd.default
_bwd = torch.ops.hvision.selective_scan_bwd.default


@switchable(reference.selective_scan)
def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
    reverse: bool = False,
):
    """Selective scan, compatible with ``mamba_ssm``'s ``selective_scan_fn``.

    Args:
        u, delta: (batch, dim, L), fp32/fp16/bf16 (float64 for gradcheck), same dtype.
        A: (dim, N) float32 (float64 with float64 u), N ≤ 256.
        B, C: fixed (dim, N) float32, variable (batch, N, L) or grouped (batch, G, N, L) with
            dim % G == 0, in u's dtype or float32.
        D, delta_bias: (dim,) float32, optional.
        z: (batch, dim, L) like u, optional gate: out = (y + D u) · silu(z).
        delta_softplus: apply softplus to delta + delta_bias.
        return_last_state: also return the final state (batch, dim, N), float32.
        initial_state: (batch, dim, N) float32 state before the first step (zeros if None).
        reverse: scan t = L-1 … 0 (as flipping every L-axis input, scanning and flipping back).

    Returns ``out`` (like u), or ``(out, last_state)``. Gradients flow to every tensor input,
    including through ``last_state``. See ``hvision_ext.reference.selective_scan``.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)
    )
    out, last_state, _ = _fwd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse, needs_grad
    )
    return (out, last_state) if return_last_state else out


@torch.library.register_fake("hvision::selective_scan_fwd")
def _fwd_fake(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse, save_checkpoints
):
    check_same_device(
        "selective_scan",
        "u",
        u,
        delta=delta,
        A=A,
        B=B,
        C=C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        initial_state=initial_state,
    )
    batch, dim, length = u.shape
    state = A.shape[1]
    chunks = -(-length // SCAN_CHUNK)
    checkpoints_shape = (batch, dim, chunks, state) if save_checkpoints else (0,)
    return (
        torch.empty_like(u, memory_format=torch.contiguous_format),
        u.new_empty((batch, dim, state), dtype=A.dtype),
        u.new_empty(checkpoints_shape, dtype=A.dtype),
    )


@torch.library.register_fake("hvision::selective_scan_bwd")
def _bwd_fake(
    dout,
    dlast_state,
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    delta_softplus,
    initial_state,
    reverse,
    checkpoints,
):
    check_same_device(
        "selective_scan",
        "u",
        u,
        dout=dout,
        dlast_state=dlast_state,
        delta=delta,
        A=A,
        B=B,
        C=C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        initial_state=initial_state,
        checkpoints=checkpoints,
    )
    batch, dim, _ = u.shape
    like_u = lambda: torch.empty_like(u, memory_format=torch.contiguous_format)  # noqa: E731
    return (
        like_u(),
        like_u(),
        torch.empty_like(A),
        B.new_empty(B.shape),
        C.new_empty(C.shape),
        A.new_empty((dim,)),
        like_u() if z is not None else u.new_empty((0,)),
        A.new_empty((dim,)),
        A.new_empty((batch, dim, A.shape[1])),
    )


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, output[2])
    ctx.delta_softplus = delta_softplus
    ctx.reverse = reverse


def _backward(ctx, dout, dlast_state, _dcheckpoints):
    u, delta, A, B, C, D, z, delta_bias, initial_state, checkpoints = ctx.saved_tensors
    if checkpoints.dim() != 4:
        raise RuntimeError(
            "selective_scan: backward needs the checkpoints of a forward pass run with "
            "save_checkpoints=True (hvision_ext.ops.selective_scan sets it when a gradient is needed)"
        )
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state = _bwd(
        dout,
        dlast_state,
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        ctx.delta_softplus,
        initial_state,
        ctx.reverse,
        checkpoints,
    )
    given = lambda tensor, grad: grad if tensor is not None else None  # noqa: E731
    return (
        du,
        ddelta,
        dA,
        dB,
        dC,
        given(D, dD),
        given(z, dz),
        given(delta_bias, ddelta_bias),
        None,
        given(initial_state, dinitial_state),
        None,
        None,
    )


torch.library.register_autograd(
    "hvision::selective_scan_fwd", _backward, setup_context=_setup_context
)
