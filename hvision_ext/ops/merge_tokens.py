"""``merge_tokens`` / ``unmerge_tokens``: ToMe bipartite token merging as fused operators that
keep the surviving tokens in their original order and return where every token went."""

import torch
from torch import Tensor

from .. import reference
from .._dtype import accumulation_dtype
from .._switch import switchable
from ._meta import FLOATING, Checks, Output, register_meta, validate

_merge = Checks("merge_tokens")
_unmerge = Checks("unmerge_tokens")
_merge_fwd = torch.ops.hvision.merge_tokens_fwd.default
_merge_bwd = torch.ops.hvision.merge_tokens_bwd.default
_unmerge_fwd = torch.ops.hvision.unmerge_tokens_fwd.default
_unmerge_bwd = torch.ops.hvision.unmerge_tokens_bwd.default


@switchable(reference.merge_tokens)
def merge_tokens(**merge):
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
    merge["metric"] = merge["metric"].detach()
    validate(_merge_fwd_meta, **merge)
    return _merge_fwd(**merge)


@switchable(reference.unmerge_tokens)
def unmerge_tokens(y, assign):
    """Spreads merged tokens back: out[b, i] = y[b, assign[b, i]], (batch, N, C) in y's dtype.

    y: (batch, M, C); assign: (batch, N) int64 with values in [0, M) (as merge_tokens returns).
    An assign value out of range raises ValueError (checking it waits for the device on CUDA).
    Gradients flow to y (summed over the tokens that share a row, in token order).
    """
    validate(_unmerge_fwd_meta, y, assign)
    return _unmerge_fwd(y, assign)


def _check_tokens(check: Checks, name: str, t: Tensor, meaning: str) -> None:
    check.dim(name, t, (3,), meaning)
    check.dtype(name, t, FLOATING)


def _check_per_token(check: Checks, name: str, t: Tensor | None, x: Tensor, tokens) -> None:
    """A (batch, N) tensor in x's dtype or its accumulation dtype."""
    if t is None:
        return
    check.same_device("x", x, **{name: t})
    check.dtype(name, t, (x.dtype, accumulation_dtype(x.dtype)))
    check.shape(name, t, (x.shape[0], tokens), "(batch, N)")


def _check_assign(check: Checks, assign: Tensor, like: Tensor, like_name: str, tokens) -> None:
    """assign (batch, N) int64; its values' range is checked by the kernels."""
    check.dim("assign", assign, (2,), "(batch, N)")
    check.same_device(like_name, like, assign=assign)
    check.dtype("assign", assign, (torch.int64,))
    check.shape("assign", assign, (like.shape[0], tokens), "(batch, N)")


@register_meta("merge_tokens_fwd")
def _merge_fwd_meta(x, metric, r, importance, size, protect, importance_weight):
    _check_tokens(_merge, "x", x, "(batch, N, C)")
    _check_tokens(_merge, "metric", metric, "(batch, N, Cm)")
    _merge.same_device("x", x, metric=metric)
    batch, tokens, channels = x.shape
    _merge.range(
        metric.shape[0] == batch and metric.shape[1] == tokens,
        f"metric of shape (batch, N, Cm) with (batch, N) = ({batch}, {tokens}) as x",
        tuple(metric.shape),
    )
    _merge.range(0 <= protect <= tokens, f"protect in [0, N] = [0, {tokens}]", protect)
    max_r = (tokens - protect) // 2
    _merge.range(0 <= r <= max_r, f"r in [0, (N - protect) // 2] = [0, {max_r}]", r)
    _check_per_token(_merge, "importance", importance, x, tokens)
    _check_per_token(_merge, "size", size, x, tokens)
    rows = tokens - r
    return (
        Output(x, (batch, rows, channels)),
        Output(x, (batch, rows), accumulation_dtype(x.dtype)),
        Output(x, (batch, tokens), torch.int64),
    )


@register_meta("merge_tokens_bwd")
def _merge_bwd_meta(dmerged, assign, size, merged_size):
    _check_tokens(_merge, "dmerged", dmerged, "(batch, N - r, C)")
    batch, rows, channels = dmerged.shape
    _merge.dim("assign", assign, (2,), "(batch, N)")
    tokens = assign.shape[1]
    _check_assign(_merge, assign, dmerged, "dmerged", tokens)
    _check_per_token(_merge, "size", size, dmerged, tokens)
    merged_sizes = Output(dmerged, (batch, rows), accumulation_dtype(dmerged.dtype))
    _merge.output("merged_size", merged_size, merged_sizes, "dmerged", "(batch, N - r)")
    return Output(dmerged, (batch, tokens, channels))


@register_meta("unmerge_tokens_fwd")
def _unmerge_fwd_meta(y, assign):
    _check_tokens(_unmerge, "y", y, "(batch, N - r, C)")
    _unmerge.dim("assign", assign, (2,), "(batch, N)")
    _check_assign(_unmerge, assign, y, "y", assign.shape[1])
    return Output(y, (y.shape[0], assign.shape[1], y.shape[2]))


@register_meta("unmerge_tokens_bwd")
def _unmerge_bwd_meta(dout, assign, rows):
    _check_tokens(_unmerge, "dout", dout, "(batch, N, C)")
    _unmerge.range(rows >= 0, "rows >= 0", rows)
    _check_assign(_unmerge, assign, dout, "dout", dout.shape[1])
    return Output(dout, (dout.shape[0], rows, dout.shape[2]))


def _merge_setup_context(ctx, inputs, output):
    _, merged_size, assign = output
    ctx.mark_non_differentiable(merged_size, assign)
    if ctx.needs_input_grad[0]:
        ctx.save_for_backward(assign, inputs[4], merged_size)


def _merge_backward(ctx, dmerged, _dmerged_size, _dassign):
    return _merge_bwd(dmerged, *ctx.saved_tensors), None, None, None, None, None, None


def _unmerge_setup_context(ctx, inputs, output):
    y, assign = inputs
    ctx.rows = y.shape[1]
    if ctx.needs_input_grad[0]:
        ctx.save_for_backward(assign)


def _unmerge_backward(ctx, dout):
    return _unmerge_bwd(dout, *ctx.saved_tensors, ctx.rows), None


torch.library.register_autograd(
    "hvision::merge_tokens_fwd", _merge_backward, setup_context=_merge_setup_context
)
torch.library.register_autograd(
    "hvision::unmerge_tokens_fwd", _unmerge_backward, setup_context=_unmerge_setup_context
)
