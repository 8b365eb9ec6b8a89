"""``hopfield_retrieval``: modern Hopfield retrieval with every update step in one fused kernel
(CPU and CUDA)."""

import math
from numbers import Real

import torch
from torch import Tensor

from .. import reference
from .._C import HOPFIELD_MAX_DIM, HOPFIELD_MAX_STEPS
from .._dtype import accumulation_dtype
from .._switch import switchable
from ._meta import FLOATING, Checks, Output, register_meta, validate

_check = Checks("hopfield_retrieval")
_fwd = torch.ops.hvision.hopfield_retrieval_fwd.default
_bwd = torch.ops.hvision.hopfield_retrieval_bwd.default


def resolve_beta(query: Tensor, beta: float | None) -> float:
    """beta as the kernels take it: 1/sqrt(d) by default (d = 0 is the meta function's error to
    name)."""
    if beta is None:
        d = query.shape[-1] if query.dim() > 0 else 0
        return 1.0 / math.sqrt(d) if d > 0 else 1.0
    _check.type(
        isinstance(beta, Real) and not isinstance(beta, bool),
        "beta to be a float or None",
        type(beta).__name__,
    )
    return float(beta)


@switchable(reference.hopfield_retrieval)
def hopfield_retrieval(query, stored, values, beta, n_steps, max_saved_bytes):
    """Modern Hopfield retrieval: ``n_steps`` updates ξ ← softmax(β ξ Xᵀ) X of the query, the
    last one reading the values.

    Args:
        query: (batch, heads, Q, d), fp32/fp16/bf16 (float64 for gradcheck); d ≤ 256.
        stored: the patterns X, (batch, heads, M, d), or (heads, M, d) shared across the batch
            (read in place, never expanded); same dtype as query; M ≥ 1.
        values: V, like stored with last dim dv ≤ 256, or None for V = X.
        beta: inverse temperature, > 0; default 1/sqrt(d).
        n_steps: number of updates, 1 to ``HOPFIELD_MAX_STEPS`` (1024); 1 is attention with scale
            beta.
        max_saved_bytes: how many bytes of softmax probabilities the CPU kernels may keep from the
            forward pass for the backward pass, which otherwise recomputes them (one product a
            step more): they are kept when every step's fit (n_steps · batch · heads · Q · M in
            the accumulation dtype), and only when a gradient is wanted. Default 128 MiB; 0
            always recomputes, as the CUDA kernels do. Results do not depend on it.

    Returns out (batch, heads, Q, dv) in query's dtype, computed in float32 (float64 for float64
    inputs). Gradients flow to query, stored and values through every step. See
    ``hvision_ext.reference.hopfield_retrieval``.
    """
    args = (query, stored, values, resolve_beta(query, beta), n_steps)
    validate(_fwd_meta, *args, max_saved_bytes)
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, stored, values)
    )
    return _fwd(*args, max_saved_bytes if wants_grad else 0)[0]


def _check_patterns(name: str, t: Tensor, query: Tensor, shared: bool, width) -> None:
    """stored or values: (batch, heads, M, width), or (heads, M, width) shared across the
    batch, with M that of stored."""
    batch, heads = query.shape[:2]
    _check.same_device("query", query, **{name: t})
    _check.dtype(name, t, (query.dtype,))
    if shared:
        _check.shape(name, t, (heads, *width), "(heads, M, d) shared across the batch")
    else:
        _check.shape(name, t, (batch, heads, *width), "(batch, heads, M, d)")


def _kept_probabilities(query: Tensor, patterns, n_steps: int, max_saved_bytes: int) -> tuple:
    """The shape of the probabilities a forward pass keeps: every step's on the CPU when they fit
    in max_saved_bytes, else none, (0,)."""
    shape = (n_steps, *query.shape[:3], patterns)
    size = math.prod(shape) * accumulation_dtype(query.dtype).itemsize
    return shape if query.device.type == "cpu" and size <= max_saved_bytes else (0,)


@register_meta("hopfield_retrieval_fwd")
def _fwd_meta(query, stored, values, beta, n_steps, max_saved_bytes):
    _check.dim("query", query, (4,), "(batch, heads, Q, d)")
    _check.dtype("query", query, FLOATING)
    _check.dim("stored", stored, (3, 4), "(batch, heads, M, d) or (heads, M, d)")
    _check.type(
        isinstance(n_steps, int) and not isinstance(n_steps, bool),
        "n_steps to be an int",
        type(n_steps).__name__,
    )
    _check.range(
        1 <= n_steps <= HOPFIELD_MAX_STEPS, f"n_steps in [1, {HOPFIELD_MAX_STEPS}]", n_steps
    )
    _check.range(math.isfinite(beta) and beta > 0, "beta > 0 and finite", beta)
    _check.type(
        isinstance(max_saved_bytes, int) and not isinstance(max_saved_bytes, bool),
        "max_saved_bytes to be an int",
        type(max_saved_bytes).__name__,
    )
    _check.range(max_saved_bytes >= 0, "max_saved_bytes >= 0", max_saved_bytes)
    batch, heads, queries, dim = query.shape
    patterns = stored.shape[-2]
    shared = stored.dim() == 3
    _check.size("the pattern size d (query.shape[-1])", dim, HOPFIELD_MAX_DIM)
    _check.range(
        patterns >= 1, "at least one stored pattern (M = stored.shape[-2])", f"M = {patterns}"
    )
    _check_patterns("stored", stored, query, shared, (patterns, dim))
    value_dim = dim
    if values is not None:
        _check.range(
            values.dim() == stored.dim(),
            f"values with as many dimensions as stored ({stored.dim()})",
            f"shape {tuple(values.shape)}",
        )
        _check_patterns("values", values, query, shared, (patterns, values.shape[-1]))
        value_dim = values.shape[-1]
        _check.size("the value size dv (values.shape[-1])", value_dim, HOPFIELD_MAX_DIM)
    acc = accumulation_dtype(query.dtype)
    rows = (batch, heads, queries)
    return (
        Output(query, (*rows, value_dim)),
        Output(query, (n_steps - 1, *rows, dim), acc),
        Output(query, (n_steps, *rows), acc),
        Output(query, _kept_probabilities(query, patterns, n_steps, max_saved_bytes), acc),
    )


@register_meta("hopfield_retrieval_bwd")
def _bwd_meta(dout, query, stored, values, out, states, lse, probabilities, beta, n_steps):
    saved_out, saved_states, saved_lse, _ = _fwd_meta(query, stored, values, beta, n_steps, 0)
    for name, t in (("dout", dout), ("out", out)):
        _check.output(name, t, saved_out, "query", "(batch, heads, Q, dv)")
    saved = " (saved by the forward pass)"
    _check.output(
        "states", states, saved_states, "query", f"(n_steps - 1, batch, heads, Q, d){saved}"
    )
    _check.output("lse", lse, saved_lse, "query", f"(n_steps, batch, heads, Q){saved}")
    kept = (n_steps, *query.shape[:3], stored.shape[-2]) if probabilities.dim() != 1 else (0,)
    _check.output(
        "probabilities",
        probabilities,
        Output(query, kept, saved_lse.dtype),
        "query",
        f"(n_steps, batch, heads, Q, M) or (0,){saved}",
    )
    dvalues = Output(values, values.shape) if values is not None else Output(query, (0,))
    return Output(query, query.shape), Output(stored, stored.shape), dvalues


def _setup_context(ctx, inputs, output):
    query, stored, values, ctx.beta, ctx.n_steps, _ = inputs
    # The saved outputs get no gradient: no zeros to make for them (the probabilities alone can
    # be tens of MiB).
    ctx.set_materialize_grads(False)
    if any(ctx.needs_input_grad[:3]):
        ctx.save_for_backward(query, stored, values, *output)


def _backward(ctx, dout, _dstates, _dlse, _dprobabilities):
    unused = (None,) * 3  # beta, n_steps, max_saved_bytes
    if dout is None:  # out took no part in the loss
        return (None,) * 3 + unused
    grads = _bwd(dout, *ctx.saved_tensors, ctx.beta, ctx.n_steps)
    return *(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)), *unused


torch.library.register_autograd(
    "hvision::hopfield_retrieval_fwd", _backward, setup_context=_setup_context
)
