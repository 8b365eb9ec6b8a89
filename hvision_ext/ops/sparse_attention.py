"""``sparse_attention``: strided and local-global attention as one fused operator (CPU and CUDA
kernels): flash-style tiles over only the key tiles the pattern reaches, memory O(L·head_dim)."""

import math

import torch

from .. import reference
from .._C import ATTENTION_MAX_HEAD_DIM
from .._dtype import accumulation_dtype
from .._switch import switchable
from ._meta import FLOATING, Checks, Output, register_meta, validate

_check = Checks("sparse_attention")
_SHAPE = "(batch, heads, L, head_dim)"
_fwd = torch.ops.hvision.sparse_attention_fwd.default
_bwd = torch.ops.hvision.sparse_attention_bwd.default


@switchable(reference.sparse_attention)
def sparse_attention(**attention):
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
    validate(_fwd_meta, **attention)
    return _fwd(**attention)[0]


@switchable(reference.strided_attention)
def strided_attention(q, k, v, stride, causal):
    """Sparse Transformer's strided pattern: the band |i − j| < stride plus every key with
    (i − j) % stride == 0."""
    Checks("strided_attention").range(stride >= 1, "stride >= 1", stride)
    return sparse_attention(q, k, v, window=stride - 1, stride=stride, causal=causal)


@switchable(reference.local_global_attention)
def local_global_attention(q, k, v, window, num_global):
    """Longformer/BigBird-style: the band |i − j| ≤ window plus num_global symmetric global
    tokens."""
    return sparse_attention(q, k, v, window=window, num_global=num_global)


@register_meta("sparse_attention_fwd")
def _fwd_meta(q, k, v, window, stride, num_global, causal, scale):
    _check.dim("q", q, (4,), _SHAPE)
    _check.dtype("q", q, FLOATING)
    _check.like("k", k, q, "q", _SHAPE)
    _check.like("v", v, q, "q", _SHAPE)
    head_dim = q.shape[3]
    _check.size("head_dim (q.shape[3])", head_dim, ATTENTION_MAX_HEAD_DIM)
    _check.range(window is None or window >= 0, "window >= 0 or None", window)
    _check.range(stride is None or stride >= 1, "stride >= 1 or None", stride)
    _check.range(num_global >= 0, "num_global >= 0", num_global)
    _check.range(scale is None or math.isfinite(scale), "a finite scale", scale)
    return Output(q, q.shape), Output(q, q.shape[:3], accumulation_dtype(q.dtype))


@register_meta("sparse_attention_bwd")
def _bwd_meta(dout, q, k, v, out, lse, *pattern):
    like_q, saved_lse = _fwd_meta(q, k, v, *pattern)
    _check.like("dout", dout, q, "q", _SHAPE)
    _check.like("out", out, q, "q", _SHAPE)
    _check.output("lse", lse, saved_lse, "q", "(batch, heads, L)")
    return like_q, like_q, like_q


def _setup_context(ctx, inputs, output):
    q, k, v, *ctx.pattern = inputs
    if any(ctx.needs_input_grad[:3]):
        ctx.save_for_backward(q, k, v, *output)


def _backward(ctx, dout, _dlse):
    dq, dk, dv = _bwd(dout, *ctx.saved_tensors, *ctx.pattern)
    needed = ctx.needs_input_grad
    return (dq if needed[0] else None, dk if needed[1] else None, dv if needed[2] else None) + (
        None,
    ) * len(ctx.pattern)


torch.library.register_autograd(
    "hvision::sparse_attention_fwd", _backward, setup_context=_setup_context
)
