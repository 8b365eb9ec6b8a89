"""Reference token merging (ToMe bipartite soft matching, order-preserving), with whole-tensor
PyTorch ops: the similarity matrix is built in full."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .._dtype import accumulation_dtype


def best_matches(metric: Tensor, protect: int) -> tuple[Tensor, Tensor]:
    """Each A token's (best cosine similarity, index of its best B token), both (batch, Na).
    A = the unprotected tokens at even positions, B = at odd positions. A NaN similarity counts
    as -inf; of equal similarities the lower index wins."""
    unit = F.normalize(metric.to(accumulation_dtype(metric.dtype)), dim=-1)
    a, b = unit[:, protect::2], unit[:, protect + 1 :: 2]
    similarity = (a @ b.transpose(-1, -2)).nan_to_num(nan=-torch.inf)
    best = similarity.amax(dim=-1)
    # argmax returns the first maximal index: among the B tokens at the maximum, the lowest.
    best_index = (similarity == best[..., None]).to(torch.uint8).argmax(dim=-1)
    return best, best_index


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
    """Merges r of the N tokens of x (batch, N, C) into others; returns (merged, merged_size,
    assign).

    The first ``protect`` tokens are left alone. The others alternate into A (even) and B (odd);
    each A token's best B is the one of highest cosine similarity of ``metric`` rows, and its
    score that similarity − importance_weight · importance (NaN counting as -inf). The r A tokens
    of highest score (ties: lower index) are merged into their best B: merged row = Σ size · x /
    Σ size over the tokens it received, merged_size = Σ size (sizes default to ones). Surviving
    tokens keep their original order; assign[b, i] is the output row of input token i.
    merged is in x's dtype, merged_size in float32 (float64 for float64 x), assign int64.
    """
    acc = accumulation_dtype(x.dtype)
    batch, tokens, _ = x.shape
    if not 0 <= r <= (tokens - protect) // 2:
        raise ValueError(
            f"merge_tokens: expected r in [0, (N - protect) // 2] = [0, {(tokens - protect) // 2}], got {r}"
        )
    if size is not None and size.numel() > 0 and not size.min() > 0:
        raise ValueError(
            f"merge_tokens: expected size > 0 everywhere, got a smallest value of {size.min().item()}"
        )
    token_index = torch.arange(tokens, device=x.device).expand(batch, tokens)
    if r > 0:
        best, best_index = best_matches(metric, protect)
        score = best
        if importance is not None:
            score = score - importance_weight * importance[:, protect::2].to(best.dtype)
        score = score.nan_to_num(nan=-torch.inf)
        chosen = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :r]
        merged_tokens = protect + 2 * chosen
        destinations = protect + 1 + 2 * best_index.gather(-1, chosen)
        kept = torch.ones(batch, tokens, dtype=torch.long, device=x.device).scatter(
            -1, merged_tokens, 0
        )
        output_row = kept.cumsum(-1) - 1
        assign = output_row.scatter(-1, merged_tokens, output_row.gather(-1, destinations))
    else:
        assign = token_index.clone()

    size = torch.ones(batch, tokens, dtype=acc, device=x.device) if size is None else size.to(acc)
    rows = tokens - r
    merged_size = size.new_zeros(batch, rows).scatter_add(-1, assign, size)
    weighted = x.to(acc) * size[..., None]
    summed = weighted.new_zeros(batch, rows, x.shape[-1]).scatter_add(
        1, assign[..., None].expand_as(weighted), weighted
    )
    merged = (summed / merged_size[..., None]).to(x.dtype)
    return merged, merged_size, assign


def unmerge_tokens(y: Tensor, assign: Tensor) -> Tensor:
    """out[b, i] = y[b, assign[b, i]]: every token receives the row it was merged into."""
    return y.gather(1, assign[..., None].expand(-1, -1, y.shape[-1]))
