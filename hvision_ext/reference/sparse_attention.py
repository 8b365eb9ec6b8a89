"""Reference sparse attention: the boolean mask of the pattern, built in full, and dense
``scaled_dot_product_attention``. O(L²) memory: the definition, not a way to run long sequences."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .._dtype import accumulation_dtype


def sparse_attention_mask(
    length: int,
    *,
    window: int | None = None,
    stride: int | None = None,
    num_global: int = 0,
    causal: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """(L, L) bool, True where query i may attend key j: (not causal or j <= i) and any of
    |i - j| <= window, (i - j) % stride == 0, i < num_global or j < num_global; all True (but
    for causal) when no term is set."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    if window is None and stride is None and num_global == 0:
        allowed = torch.ones(length, length, dtype=torch.bool, device=device)
    else:
        allowed = (i < num_global) | (j < num_global)
        if window is not None:
            allowed |= (i - j).abs() <= window
        if stride is not None:
            allowed |= (i - j) % stride == 0
    if causal:
        allowed &= j <= i
    return allowed


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int | None = None,
    stride: int | None = None,
    num_global: int = 0,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Attention of q, k, v (batch, heads, L, head_dim) restricted to the pattern of
    ``sparse_attention_mask``; softmax(scale · q kᵀ) v with scale = 1/sqrt(head_dim) by default.
    Computed in float32 (float64 for float64 inputs); returns q's dtype."""
    acc = accumulation_dtype(q.dtype)
    mask = sparse_attention_mask(
        q.shape[-2],
        window=window,
        stride=stride,
        num_global=num_global,
        causal=causal,
        device=q.device,
    )
    out = F.scaled_dot_product_attention(
        q.to(acc), k.to(acc), v.to(acc), attn_mask=mask, scale=scale
    )
    return out.to(q.dtype)


def strided_attention(q: Tensor, k: Tensor, v: Tensor, stride: int, causal: bool = False) -> Tensor:
    """Sparse Transformer's strided pattern: the local band |i - j| < stride plus every key
    (i - j) % stride == 0."""
    return sparse_attention(q, k, v, window=stride - 1, stride=stride, causal=causal)


def local_global_attention(q: Tensor, k: Tensor, v: Tensor, window: int, num_global: int) -> Tensor:
    """Longformer/BigBird-style: the band |i - j| <= window plus num_global symmetric global tokens
    (the first num_global rows attend everything and are attended by everything)."""
    return sparse_attention(q, k, v, window=window, num_global=num_global)
