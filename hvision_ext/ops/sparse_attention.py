"""``sparse_attention``: strided and local-global attention as one fused operator (CPU and CUDA
kernels): flash-style tiles over only the key tiles the pattern reaches, memory O(L·head_dim)."""

import torch
from torch import Tensor

from .. import reference
from .._switch import switchable
from ._checks import check_same_device

OP = "sparse_attention"
MAX_HEAD_DIM = 128

_fwd = torch.ops.hvision.sparse_attention_fwd.default
_bwd = torch.ops.hvision.sparse_attention_bwd.default


def _check_pattern(window: int | None, stride: int | None, num_global: int) -> None:
    """The kernels' range checks, raised before anything is traced (the same wording)."""
    if window is not None and window < 0:
        raise ValueError(f"{OP}: expected window >= 0 or None, got {window}")
    if stride is not None and stride < 1:
        raise ValueError(f"{OP}: expected stride >= 1 or None, got {stride}")
    if num_global < 0:
        raise ValueError(f"{OP}: expected num_global >= 0, got {num_global}")


@switchable(reference.sparse_attention)
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
    """Attention restricted to a local / strided / global pattern, without an L×L matrix.

    Args:
        q, k, v: (batch, heads, L, head_dim), same dtype (fp32/fp16/bf16, float64 for
            gradcheck) and device; head_dim ≤ 128. Any strides.
        window: the local band |i − j| ≤ window, or None.
        stride: the strided term (i − j) % stride == 0, or None.
        num_global: the first num_global tokens attend, and are attended by, every token.
        causal: also require j ≤ i.
        scale: the score scale, 1/sqrt(head_dim) by default.

    Query i attends key j iff (not causal or j ≤ i) and any term allows it; with no term set the
    attention is dense. Returns (batch, heads, L, head_dim) in q's dtype. Gradients flow to q, k
    and v. See ``hvision_ext.reference.sparse_attention``.
    """
    _check_pattern(window, stride, num_global)
    out, _ = _fwd(q, k, v, window, stride, num_global, causal, scale)
    return out


@switchable(reference.strided_attention)
def strided_attention(q: Tensor, k: Tensor, v: Tensor, stride: int, causal: bool = False) -> Tensor:
    """Sparse Transformer's strided pattern: the band |i − j| < stride plus every key with
    (i − j) % stride == 0."""
    if stride < 1:
        raise ValueError(f"strided_attention: expected stride >= 1, got {stride}")
    return sparse_attention(q, k, v, window=stride - 1, stride=stride, causal=causal)


@switchable(reference.local_global_attention)
def local_global_attention(q: Tensor, k: Tensor, v: Tensor, window: int, num_global: int) -> Tensor:
    """Longformer/BigBird-style: the band |i − j| ≤ window plus num_global symmetric global
    tokens."""
    return sparse_attention(q, k, v, window=window, num_global=num_global)


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.register_fake("hvision::sparse_attention_fwd")
def _fwd_fake(q, k, v, window, stride, num_global, causal, scale):
    check_same_device(OP, "q", q, k=k, v=v)
    _check_pattern(window, stride, num_global)
    batch, heads, length, _ = q.shape
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        q.new_empty((batch, heads, length), dtype=_lse_dtype(q)),
    )


@torch.library.register_fake("hvision::sparse_attention_bwd")
def _bwd_fake(dout, q, k, v, out, lse, window, stride, num_global, causal, scale):
    check_same_device(OP, "q", q, dout=dout, k=k, v=v, out=out, lse=lse)
    _check_pattern(window, stride, num_global)
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    return like(q), like(k), like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, window, stride, num_global, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.pattern = (window, stride, num_global, causal, scale)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _bwd(dout, q, k, v, out, lse, *ctx.pattern)
    return dq, dk, dv, None, None, None, None, None


torch.library.register_autograd(
    "hvision::sparse_attention_fwd", _backward, setup_context=_setup_context
)
