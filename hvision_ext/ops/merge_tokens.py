"""``merge_tokens`` / ``unmerge_tokens``: ToMe bipartite token merging as fused operators that
keep the surviving tokens in their original order and return where every token went."""

import torch
from torch import Tensor

from .. import reference
from .._switch import switchable
from ._checks import check_same_device

_merge_fwd = torch.ops.hvision.merge_tokens_fwd.default
_merge_bwd = torch.ops.hvision.merge_tokens_bwd.default
_unmerge_fwd = torch.ops.hvision.unmerge_tokens_fwd.default
_unmerge_bwd = torch.ops.hvision.unmerge_tokens_bwd.default


@switchable(reference.merge_tokens)
def merge_tokens(
    x: Tensor,
    metric: Tensor,
    r: int,
    *,
    importance: Tensor | None = None,
    size: Tensor | None = None,
    protect: int = 1,
    importance_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Merges r tokens of each sequence into their most similar ones (ToMe bipartite matching).

    Args:
        x: (batch, N, C) tokens, fp32/fp16/bf16 (float64 for gradcheck).
        metric: (batch, N, Cm) what similarity is measured on (e.g. the attention keys), any
            floating dtype; similarities accumulate in float32 (float64 for float64).
        r: how many tokens to merge away, 0 ≤ r ≤ (N − protect) // 2.
        importance: (batch, N) optional; an A token's score is lowered by
            importance_weight · importance, so important tokens are merged last.
        size: (batch, N) token masses (default ones), positive, in x's dtype or float32.
        protect: the first ``protect`` tokens (class tokens) are never merged nor merged into.

    The unprotected tokens alternate into A (even) and B (odd); each A token picks the B token of
    highest cosine similarity, and the r A tokens with the highest similarity − importance_weight
    · importance merge into their B by size-weighted average. Every tie goes to the lower index.

    Returns ``(merged, merged_size, assign)``: merged (batch, N − r, C) in x's dtype with the
    surviving tokens in their original order, merged_size (batch, N − r) the summed sizes in
    float32 (float64 for float64 x), and assign (batch, N) int64, the output row of every input
    token (``unmerge_tokens(merged, assign)`` undoes the merge). Gradients flow to x only.
    See ``hvision_ext.reference.merge_tokens``.
    """
    return _merge_fwd(x, metric.detach(), r, importance, size, protect, importance_weight)


@switchable(reference.unmerge_tokens)
def unmerge_tokens(y: Tensor, assign: Tensor) -> Tensor:
    """Spreads merged tokens back: out[b, i] = y[b, assign[b, i]], (batch, N, C) in y's dtype.

    y: (batch, M, C); assign: (batch, N) int64 with values in [0, M) (as merge_tokens returns).
    An assign value out of range raises ValueError (checking it waits for the device on CUDA).
    Gradients flow to y (summed over the tokens that share a row, in token order).
    """
    return _unmerge_fwd(y, assign)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("hvision::merge_tokens_fwd")
def _merge_fwd_fake(x, metric, r, importance, size, protect, importance_weight):
    check_same_device("merge_tokens", "x", x, metric=metric, importance=importance, size=size)
    batch, tokens, channels = x.shape
    if not 0 <= protect <= tokens:
        raise ValueError(f"merge_tokens: expected protect in [0, N] = [0, {tokens}], got {protect}")
    max_r = (tokens - protect) // 2
    if not 0 <= r <= max_r:
        raise ValueError(
            f"merge_tokens: expected r in [0, (N - protect) // 2] = [0, {max_r}], got {r}"
        )
    rows = tokens - r
    return (
        x.new_empty((batch, rows, channels)),
        x.new_empty((batch, rows), dtype=_accumulation_dtype(x.dtype)),
        x.new_empty((batch, tokens), dtype=torch.long),
    )


@torch.library.register_fake("hvision::merge_tokens_bwd")
def _merge_bwd_fake(dmerged, assign, size, merged_size):
    check_same_device(
        "merge_tokens", "dmerged", dmerged, assign=assign, size=size, merged_size=merged_size
    )
    return dmerged.new_empty((dmerged.shape[0], assign.shape[1], dmerged.shape[2]))


@torch.library.register_fake("hvision::unmerge_tokens_fwd")
def _unmerge_fwd_fake(y, assign):
    check_same_device("unmerge_tokens", "y", y, assign=assign)
    return y.new_empty((y.shape[0], assign.shape[1], y.shape[2]))


@torch.library.register_fake("hvision::unmerge_tokens_bwd")
def _unmerge_bwd_fake(dout, assign, rows):
    check_same_device("unmerge_tokens", "dout", dout, assign=assign)
    return dout.new_empty((dout.shape[0], rows, dout.shape[2]))


def _merge_setup_context(ctx, inputs, output):
    _, _, _, _, size, _, _ = inputs
    _, merged_size, assign = output
    ctx.save_for_backward(assign, size, merged_size)
    ctx.mark_non_differentiable(merged_size, assign)


def _merge_backward(ctx, dmerged, _dmerged_size, _dassign):
    assign, size, merged_size = ctx.saved_tensors
    dx = _merge_bwd(dmerged, assign, size, merged_size)
    return dx, None, None, None, None, None, None


def _unmerge_setup_context(ctx, inputs, output):
    y, assign = inputs
    ctx.save_for_backward(assign)
    ctx.rows = y.shape[1]


def _unmerge_backward(ctx, dout):
    (assign,) = ctx.saved_tensors
    return _unmerge_bwd(dout, assign, ctx.rows), None


torch.library.register_autograd(
    "hvision::merge_tokens_fwd", _merge_backward, setup_context=_merge_setup_context
)
torch.library.register_autograd(
    "hvision::unmerge_tokens_fwd", _unmerge_backward, setup_context=_unmerge_setup_context
)
