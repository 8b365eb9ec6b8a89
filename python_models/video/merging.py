"""Token reduction between video blocks, frame by frame so that every frame keeps the same number
of tokens and the time layout stays recoverable (strided and hierarchical attention read it).

- ``motion`` (default): ToMe bipartite merging (``merge_tokens``) of each frame's patch tokens,
  with the per-token ``motion_saliency`` of the input frames lowering a token's chance of being
  merged away; sizes are carried so later merges average by mass.
- ``similarity``: the same merging without the motion importance.
- ``random``: the baseline: drop the same number of randomly chosen tokens per frame.

The class token is outside the frames and never merged.
"""

import torch
from torch import Tensor

from hvision_ext.ops import merge_tokens

MERGE_MODES = ("motion", "similarity", "random")


def tokens_to_remove(per_frame: int, ratio: float, merges: int) -> int:
    """Tokens to take from each frame at one of ``merges`` equal steps that together keep
    (1 − ratio) of them; at most half of them per step (bipartite matching's limit)."""
    keep = (1.0 - ratio) ** (1.0 / merges)
    return min(per_frame // 2, round(per_frame * (1.0 - keep)))


def frame_rows(x: Tensor, frames: int) -> Tensor:
    """(batch, frames · P, ...) → (batch · frames, P, ...)."""
    return x.reshape(x.shape[0] * frames, x.shape[1] // frames, *x.shape[2:])


def batch_rows(x: Tensor, frames: int) -> Tensor:
    """(batch · frames, P, ...) → (batch, frames · P, ...)."""
    return x.reshape(x.shape[0] // frames, x.shape[1] * frames, *x.shape[2:])


def merge_frames(
    patches: Tensor,
    size: Tensor,
    importance: Tensor | None,
    frames: int,
    r: int,
    importance_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Merges ``r`` patch tokens of each frame into others.

    patches (batch, frames · P, C); size (batch, frames · P) token masses; importance like size
    or None. Returns the merged tokens (batch, frames · (P − r), C), their sizes, their
    importance (the largest of the tokens each absorbed) and ``assign`` (batch · frames, P),
    each input token's row within its frame.
    """
    rows = frame_rows(patches, frames)
    importance_rows = None if importance is None else frame_rows(importance, frames)
    merged, merged_size, assign = merge_tokens(
        rows,
        rows,
        r,
        importance=importance_rows,
        size=frame_rows(size, frames),
        protect=0,
        importance_weight=importance_weight,
    )
    if importance_rows is not None:
        importance_rows = importance_rows.new_zeros(merged_size.shape).scatter_reduce(
            -1, assign, importance_rows, "amax", include_self=False
        )
        importance = batch_rows(importance_rows, frames)
    return batch_rows(merged, frames), batch_rows(merged_size, frames), importance, assign


def drop_frames(
    patches: Tensor, size: Tensor, importance: Tensor | None, frames: int, r: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """The random baseline of ``merge_frames``: ``r`` tokens of each frame, drawn uniformly,
    are dropped (the others keep their order and sizes). A dropped token's ``assign`` is the
    row of the kept token before it (the first kept one for a leading run)."""
    rows = frame_rows(patches, frames)
    count, per_frame = rows.shape[:2]
    order = torch.rand(count, per_frame, device=rows.device).argsort(dim=-1)
    kept = order[:, r:].sort(dim=-1).values
    keep_mask = torch.zeros(count, per_frame, dtype=torch.long, device=rows.device)
    assign = (keep_mask.scatter(-1, kept, 1).cumsum(-1) - 1).clamp_min(0)

    def gather(t: Tensor) -> Tensor:
        index = kept.view(*kept.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        return batch_rows(t.gather(1, index), frames)

    kept_importance = None if importance is None else gather(frame_rows(importance, frames))
    return gather(rows), gather(frame_rows(size, frames)), kept_importance, assign


def merge_ratio_at(step: int, total_steps: int, target: float, ramp_fraction: float) -> float:
    """The curriculum: the ratio rises linearly from 0 to ``target`` over the first
    ``ramp_fraction`` of training, then stays (``ramp_fraction`` 0: the target throughout)."""
    ramp_steps = ramp_fraction * total_steps
    if ramp_steps <= 0:
        return target
    return target * min(1.0, (step + 1) / ramp_steps)
