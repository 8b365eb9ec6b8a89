"""Reference modern Hopfield retrieval (Ramsauer et al., "Hopfield Networks is All You Need"):
the update rule ξ ← softmax(β ξ Xᵀ) X, one matmul–softmax–matmul per step."""

import math

import torch
from torch import Tensor

from .._dtype import accumulation_dtype

MAX_SAVED_BYTES = 128 * 2**20
"""The default bound on the probabilities the fused CPU kernels keep for the backward pass."""


def hopfield_retrieval(
    query: Tensor,
    stored: Tensor,
    values: Tensor | None = None,
    *,
    beta: float | None = None,
    n_steps: int = 1,
    max_saved_bytes: int = MAX_SAVED_BYTES,
) -> Tensor:
    """Retrieves from the stored patterns X by ``n_steps`` Hopfield updates.

    query (batch, heads, Q, d); stored X (batch, heads, M, d), or (heads, M, d) shared across the
    batch; values V like stored with last dim dv, or None for V = X. beta defaults to 1/sqrt(d).
    ξ₀ = query;  ξ_s = softmax(β ξ_{s-1} Xᵀ) X for s = 1 … n_steps-1;
    out = softmax(β ξ_{n_steps-1} Xᵀ) V, in the dtype of query (computed in float32, or float64
    for float64 inputs). max_saved_bytes bounds the memory of the fused kernels and changes no
    result: this reference, whose autograd keeps every step's probabilities, ignores it.
    """
    acc = accumulation_dtype(query.dtype)
    if beta is None:
        beta = 1.0 / math.sqrt(query.shape[-1])
    # A shared (heads, M, d) set broadcasts over the batch.
    keys = stored.to(acc)
    targets = keys if values is None else values.to(acc)
    state = query.to(acc)
    for _ in range(n_steps - 1):
        state = torch.softmax(beta * state @ keys.transpose(-1, -2), dim=-1) @ keys
    out = torch.softmax(beta * state @ keys.transpose(-1, -2), dim=-1) @ targets
    return out.to(query.dtype)
