"""``selective_scan``: the Mamba SSM scan as a fused operator (CPU and CUDA kernels)."""

import torch
from torch import Tensor

from .. import reference
from .._C import SCAN_CHUNK, SCAN_MAX_STATE
from .._dtype import accumulation_dtype
from .._switch import switchable
from ._meta import FLOATING, Checks, Output, register_meta, validate

_check = Checks("selective_scan")
_LIKE_U = "(batch, dim, L)"
_fwd = torch.ops.hvision.selective_scan_fwd.default
_bwd = torch.ops.hvision.selective_scan_bwd.default


@switchable(reference.selective_scan)
def selective_scan(return_last_state, **scan):
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
    validate(_fwd_meta, **scan)
    scan["B"], scan["C"] = (_step_major(scan[name], scan["u"]) for name in ("B", "C"))
    out, last_state, _ = _fwd(**scan)
    return (out, last_state) if return_last_state else out


def _step_major(projection: Tensor, u: Tensor) -> Tensor:
    """A variable B or C laid out as the kernels read it, (batch, [G,] N, L) stored as (L, N)
    rows in the accumulation dtype: a scan step updates its N states as one vector (see
    projection_rows in csrc/selective_scan/selective_scan.h). The scan's one copy of B and C,
    made here so that the backward pass reads the saved copy and autograd hands dB and dC back
    through the transposes as views. A fixed (dim, N) projection is read as it is."""
    if projection.dim() == 2:
        return projection
    acc = accumulation_dtype(u.dtype)
    rows = projection.transpose(-1, -2)
    if projection.dtype == u.dtype != acc:  # a 16-bit projection: widened in the same copy
        rows = torch.empty_like(rows, dtype=acc, memory_format=torch.contiguous_format).copy_(rows)
    return rows.contiguous().transpose(-1, -2)


def _check_projection(name, t, u, A):
    """B or C: fixed (dim, N) in A's dtype, variable (batch, N, L) or grouped (batch, G, N, L)
    in u's or A's dtype, G dividing dim."""
    batch, dim, length = u.shape
    state = A.shape[1]
    _check.same_device("u", u, **{name: t})
    if t.dim() == 2:
        _check.dtype(name, t, (A.dtype,))
        _check.shape(name, t, (dim, state), "(dim, N)")
        return
    _check.dim(name, t, (3, 4), "(dim, N), (batch, N, L) or (batch, G, N, L)")
    _check.dtype(name, t, (u.dtype, A.dtype))
    if t.dim() == 3:
        _check.shape(name, t, (batch, state, length), "(batch, N, L)")
        return
    groups = t.shape[1]
    _check.range(
        groups >= 1 and dim % groups == 0,
        f"the number of groups G of {name} to divide dim = {dim}",
        f"G = {groups}",
    )
    _check.shape(name, t, (batch, groups, state, length), "(batch, G, N, L)")


def _check_parameter(name, t, u, shape, meaning):
    """An optional per-channel or per-state tensor in the accumulation dtype."""
    if t is None:
        return
    _check.same_device("u", u, **{name: t})
    _check.dtype(name, t, (accumulation_dtype(u.dtype),))
    _check.shape(name, t, shape, meaning)


@register_meta("selective_scan_fwd")
def _fwd_meta(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse):
    _check.dim("u", u, (3,), _LIKE_U)
    _check.dtype("u", u, FLOATING)
    _check.like("delta", delta, u, "u", _LIKE_U)
    batch, dim, length = u.shape
    acc = accumulation_dtype(u.dtype)
    _check.same_device("u", u, A=A)
    _check.dtype("A", A, (acc,))
    _check.range(
        A.dim() == 2 and A.shape[0] == dim,
        f"A of shape (dim, N) with dim = {dim}",
        tuple(A.shape),
    )
    state = A.shape[1]
    _check.size("the state size N (A.shape[1])", state, SCAN_MAX_STATE)
    _check_projection("B", B, u, A)
    _check_projection("C", C, u, A)
    _check_parameter("D", D, u, (dim,), "(dim,)")
    _check_parameter("delta_bias", delta_bias, u, (dim,), "(dim,)")
    _check_parameter("initial_state", initial_state, u, (batch, dim, state), "(batch, dim, N)")
    if z is not None:
        _check.like("z", z, u, "u", _LIKE_U)
    chunks = (length + SCAN_CHUNK - 1) // SCAN_CHUNK
    return (
        Output(u, u.shape),
        Output(u, (batch, dim, state), acc),
        Output(u, (batch, dim, chunks, state), acc),
    )


@register_meta("selective_scan_bwd")
def _bwd_meta(dout, dlast_state, *scan_and_checkpoints):
    *scan, checkpoints = scan_and_checkpoints
    like_u, last_state, saved = _fwd_meta(*scan)
    u, _, A, B, C, _, z = scan[:7]
    _check.like("dout", dout, u, "u", _LIKE_U)
    if dlast_state is not None:
        _check.output("dlast_state", dlast_state, last_state, "u", "(batch, dim, N)")
    _check.output(
        "checkpoints",
        checkpoints,
        saved,
        "u",
        "(batch, dim, num_chunks, N) (saved by the forward pass)",
    )
    per_channel = Output(A, A.shape[:1])
    return (
        like_u,
        like_u,
        Output(A, A.shape),
        Output(B, B.shape, transposed=B.dim() > 2),
        Output(C, C.shape, transposed=C.dim() > 2),
        per_channel,
        like_u if z is not None else Output(u, (0,)),
        per_channel,
        last_state,
    )


def _setup_context(ctx, inputs, output):
    *tensors, delta_softplus, initial_state, reverse = inputs
    ctx.delta_softplus, ctx.reverse = delta_softplus, reverse
    if any(ctx.needs_input_grad):
        ctx.save_for_backward(*tensors, initial_state, output[2])


def _backward(ctx, dout, dlast_state, _dcheckpoints):
    *tensors, initial_state, checkpoints = ctx.saved_tensors
    grads = _bwd(
        dout,
        dlast_state,
        *tensors,
        ctx.delta_softplus,
        initial_state,
        ctx.reverse,
        checkpoints,
    )
    # The inputs' order: u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
    # reverse; the gradients': the same without the two flags.
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state = grads
    per_input = (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, None, dinitial_state, None)
    return tuple(g if needed else None for g, needed in zip(per_input, ctx.needs_input_grad))


torch.library.register_autograd(
    "hvision::selective_scan_fwd", _backward, setup_context=_setup_context
)
