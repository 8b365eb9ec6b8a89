"""``hopfield_retrieval``: modern Hopfield retrieval with every update step in one fused kernel
(CPU and CUDA)."""

import math
from numbers import Real

import torch
from torch import Tensor

from .. import reference
from .._switch import switchable
from ._checks import check_same_device

_OP = "hopfield_retrieval"
_fwd = torch.ops.hvision.hopfield_retrieval_fwd.default
_bwd = torch.ops.hvision.hopfield_retrieval_bwd.default


def resolve_beta(query: Tensor, beta: float | None) -> float:
    """beta as the kernels take it: 1/sqrt(d) by default; raises for one that is not a finite
    positive number (the kernels' wording)."""
    if beta is None:
        d = query.shape[-1] if query.dim() > 0 else 0
        return 1.0 / math.sqrt(d) if d > 0 else 1.0  # d = 0 is the kernels' error to name
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise TypeError(f"{_OP}: expected beta to be a float or None, got {type(beta).__name__}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"{_OP}: expected beta > 0 and finite, got {beta}")
    return float(beta)


def check_n_steps(n_steps: int) -> None:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int):
        raise TypeError(f"{_OP}: expected n_steps to be an int, got {type(n_steps).__name__}")
    if n_steps < 1:
        raise ValueError(f"{_OP}: expected n_steps >= 1, got {n_steps}")


@switchable(reference.hopfield_retrieval)
def hopfield_retrieval(
    query: Tensor,
    stored: Tensor,
    values: Tensor | None = None,
    *,
    beta: float | None = None,
    n_steps: int = 1,
) -> Tensor:
    """Modern Hopfield retrieval: ``n_steps`` updates ξ ← softmax(β ξ Xᵀ) X of the query, the
    last one reading the values.

    Args:
        query: (batch, heads, Q, d), fp32/fp16/bf16 (float64 for gradcheck); d ≤ 256.
        stored: the patterns X, (batch, heads, M, d), or (heads, M, d) shared across the batch
            (read in place, never expanded); same dtype as query; M ≥ 1.
        values: V, like stored with last dim dv ≤ 256, or None for V = X.
        beta: inverse temperature, > 0; default 1/sqrt(d).
        n_steps: number of updates, ≥ 1 (1 is attention with scale beta).

    Returns out (batch, heads, Q, dv) in query's dtype, computed in float32 (float64 for float64
    inputs). Gradients flow to query, stored and values through every step. See
    ``hvision_ext.reference.hopfield_retrieval``.
    """
    beta = resolve_beta(query, beta)
    check_n_steps(n_steps)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, stored, values)
    )
    out, _, _ = _fwd(query, stored, values, beta, n_steps, needs_grad)
    return out


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("hvision::hopfield_retrieval_fwd")
def _fwd_fake(query, stored, values, beta, n_steps, save_states):
    check_same_device(_OP, "query", query, stored=stored, values=values)
    if query.dim() != 4:
        raise ValueError(
            f"{_OP}: expected query of shape (batch, heads, Q, d), got {tuple(query.shape)}"
        )
    batch, heads, queries, dim = query.shape
    value_dim = dim if values is None else values.shape[-1]
    acc = _acc_dtype(query.dtype)
    out = query.new_empty((batch, heads, queries, value_dim))
    if not save_states:
        return out, query.new_empty((0,), dtype=acc), query.new_empty((0,), dtype=acc)
    states = query.new_empty((n_steps - 1, batch, heads, queries, dim), dtype=acc)
    return out, states, query.new_empty((n_steps, batch, heads, queries), dtype=acc)


@torch.library.register_fake("hvision::hopfield_retrieval_bwd")
def _bwd_fake(dout, query, stored, values, out, states, lse, beta, n_steps):
    check_same_device(
        _OP,
        "query",
        query,
        dout=dout,
        stored=stored,
        values=values,
        out=out,
        states=states,
        lse=lse,
    )
    dvalues = values.new_empty(values.shape) if values is not None else query.new_empty((0,))
    return query.new_empty(query.shape), stored.new_empty(stored.shape), dvalues


def _setup_context(ctx, inputs, output):
    query, stored, values, beta, n_steps, _ = inputs
    _, states, lse = output
    ctx.save_for_backward(query, stored, values, output[0], states, lse)
    ctx.beta = beta
    ctx.n_steps = n_steps


def _backward(ctx, dout, _dstates, _dlse):
    query, stored, values, out, states, lse = ctx.saved_tensors
    if lse.dim() != 4:
        raise RuntimeError(
            f"{_OP}: backward needs the states of a forward pass run with save_states=True "
            "(hvision_ext.ops.hopfield_retrieval sets it when a gradient is needed)"
        )
    dquery, dstored, dvalues = _bwd(
        dout, query, stored, values, out, states, lse, ctx.beta, ctx.n_steps
    )
    return dquery, dstored, dvalues if values is not None else None, None, None, None


torch.library.register_autograd(
    "hvision::hopfield_retrieval_fwd", _backward, setup_context=_setup_context
)
