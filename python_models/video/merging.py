"""Token reduction between video blocks, frame by frame, so that the time layout stays
recoverable (strided, local-global and hierarchical attention and the detection head read it).

How many tokens each frame gives up (``budget``):

- ``clip`` (default): the clip's budget at the target ratio, spread over its frames by their
  motion (``frame_motion``): a static frame gives up more tokens than a moving one
  (``removal_per_clip``). Frames then hold unequal runs of tokens (``TokenLayout.counts``).
  Every clip of a batch gives up the same total, so a batch stays one (batch, L, dim) tensor
  without padding, while each clip spreads its total over its own frames: a clip's tokens
  never depend on the other clips of its batch, and no compute goes to padding.
- ``frame``: every frame gives up the same number (``removal_per_frame``).

How a frame's tokens are reduced (``mode``):

- ``motion`` (default): ToMe bipartite merging (``merge_tokens``) of the frame's patch tokens,
  with the per-token ``motion_saliency`` of the input frames (and, with a colour weight,
  ``colour_saliency``) lowering a token's chance of being merged away; sizes are carried so
  later merges average by mass.
- ``similarity``: the same merging without the motion importance.
- ``random``: the baseline: drop randomly chosen tokens.

With ``class_attention_weight`` (``HierarchicalVLM``), the class token's attention over the
patches in the block after the merge adds to the importance (alone in ``similarity`` mode), as
in EViT's attentive token selection. The class token is outside the frames and never merged.
"""

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hvision_ext.ops import merge_tokens, motion_saliency

MERGE_MODES = ("motion", "similarity", "random")
MOTION_SOURCES = ("frame_difference", "optical_flow")
MERGE_BUDGETS = ("clip", "frame")
LUMA = (0.299, 0.587, 0.114)


def motion_importance(clips: Tensor, patch_size: int, alpha: float, source: str) -> Tensor:
    """Per-patch importance (batch, T, P) of clips (batch, T, C, H, W): ``motion_saliency``
    (frame differences and Sobel saliency), or with ``optical_flow`` the mean Farneback flow
    magnitude of each patch (OpenCV, on the CPU; each frame's flow from the previous one, the
    first frame taking the second's), divided by its maximum over the frame's patches."""
    if source == "frame_difference":
        return motion_saliency(clips, patch_size, alpha)
    if source != "optical_flow":
        raise ValueError(f"motion_source must be one of {list(MOTION_SOURCES)}, got {source!r}")
    grey = clips.detach().float()
    if grey.shape[2] == 3:
        grey = (grey * grey.new_tensor(LUMA).view(3, 1, 1)).sum(2)
    else:
        grey = grey[:, :, 0]
    low, high = grey.amin(dim=(1, 2, 3), keepdim=True), grey.amax(dim=(1, 2, 3), keepdim=True)
    frames = ((grey - low) / (high - low).clamp_min(1e-6) * 255).to(torch.uint8).cpu().numpy()
    magnitude = np.zeros(frames.shape, dtype=np.float32)
    for clip, out in zip(frames, magnitude):
        for t in range(1, len(clip)):
            flow = cv2.calcOpticalFlowFarneback(clip[t - 1], clip[t], None, 0.5, 2, 9, 3, 5, 1.1, 0)
            out[t] = np.linalg.norm(flow, axis=-1)
        if len(clip) > 1:
            out[0] = out[1]
    pooled = F.avg_pool2d(torch.from_numpy(magnitude).to(clips.device), patch_size).flatten(2)
    return pooled / (pooled.amax(dim=-1, keepdim=True) + 1e-6)


def colour_saliency(clips: Tensor, patch_size: int) -> Tensor:
    """Per-patch colour saliency (batch, T, P) of clips (batch, T, C, H, W): each pixel's
    distance from the frame's mean colour (frequency-tuned saliency, Achanta et al. 2009, on the
    clip's own channels rather than Lab), averaged over the patch and divided by its maximum
    over the frame's patches."""
    frames = clips.detach().float()
    distance = (frames - frames.mean(dim=(-2, -1), keepdim=True)).norm(dim=2)
    pooled = F.avg_pool2d(distance, patch_size).flatten(2)
    return pooled / (pooled.amax(dim=-1, keepdim=True) + 1e-6)


def frame_motion(clips: Tensor, tubelet: int) -> Tensor:
    """(batch, T / tubelet): each token frame's motion, the mean absolute difference of its
    frames from the frames before them (the first frame takes the second's), averaged over the
    tubelet. Not divided per frame, so that frames compare."""
    frames = clips.detach().float()
    if frames.shape[1] == 1:
        return frames.new_zeros(len(frames), 1)
    change = frames.diff(dim=1).abs().mean(dim=(2, 3, 4))
    return torch.cat([change[:, :1], change], 1).unflatten(1, (-1, tubelet)).mean(2)


def _step_keep(ratio: float, merges: int) -> float:
    """The share of tokens each of ``merges`` equal steps keeps so that together they keep
    (1 − ratio)."""
    return (1.0 - ratio) ** (1.0 / merges)


def removal_per_frame(counts: Tensor, ratio: float, merges: int) -> Tensor:
    """Tokens (batch, frames) each frame of ``counts`` tokens gives up at one of ``merges``
    equal steps: the same share of every frame, at most half of it (bipartite matching's
    limit)."""
    wanted = torch.round(counts * (1.0 - _step_keep(ratio, merges))).long()
    return torch.minimum(counts // 2, wanted)


def removal_per_clip(counts: Tensor, motion: Tensor, ratio: float, merges: int) -> Tensor:
    """Tokens (batch, frames) each frame gives up at one of ``merges`` equal steps when the
    budget is the clip's: the clip's share of its tokens, spread over its frames in proportion
    to their tokens times their stillness 1 / (1 + motion / the clip's mean motion), at most
    half of each frame. Frames of equal motion give up equal shares; a still frame three times
    as many as one at twice the mean motion. Every clip of equal token count gives up as many."""
    caps = counts // 2
    wanted = torch.round(counts.sum(-1) * (1.0 - _step_keep(ratio, merges))).long()
    total = torch.minimum(caps.sum(-1), wanted)
    relative = motion / motion.mean(-1, keepdim=True).clamp_min(1e-12)
    return spread(total, counts / (1.0 + relative), caps)


def spread(total: Tensor, weights: Tensor, caps: Tensor) -> Tensor:
    """Integers (batch, n) summing to ``total`` (batch,) in proportion to ``weights`` (batch, n)
    where no share exceeds its cap (batch, n): shares that would are fixed at their caps and
    the rest spread again over the others (water-filling); the fractions left go one each to
    the largest. ``total`` must not exceed the caps' sum."""
    share = torch.zeros_like(weights)
    free = caps > 0
    left = total.to(weights.dtype)
    for _ in range(weights.shape[1]):
        free_weights = weights * free
        ideal = left[:, None] * free_weights / free_weights.sum(-1, keepdim=True).clamp_min(1e-12)
        share = torch.where(free, torch.minimum(ideal, caps.to(ideal.dtype)), share)
        capped = free & (ideal >= caps)
        if not capped.any():
            break
        left = left - (caps * capped).sum(-1)
        free = free & ~capped
    whole = share.floor().long().minimum(caps)
    fraction = torch.where(whole < caps, share - whole, -1.0)
    rank = fraction.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    return whole + (rank < (total - whole.sum(-1))[:, None]).long()


def drop_tokens(rows: Tensor, size: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """The random baseline of ``merge_tokens`` on rows (n, N, C): ``r`` tokens of each row,
    drawn uniformly, are dropped (the others keep their order and sizes). A dropped token's
    ``assign`` is the row of the kept token before it (the first kept one for a leading run)."""
    count, tokens = rows.shape[:2]
    order = torch.rand(count, tokens, device=rows.device).argsort(dim=-1)
    kept = order[:, r:].sort(dim=-1).values
    keep_mask = torch.zeros(count, tokens, dtype=torch.long, device=rows.device)
    assign = (keep_mask.scatter(-1, kept, 1).cumsum(-1) - 1).clamp_min(0)
    index = kept[..., None].expand(-1, -1, rows.shape[-1])
    return rows.gather(1, index), size.gather(1, kept), assign


def reduce_runs(
    patches: Tensor,
    size: Tensor,
    importance: Tensor | None,
    counts: Tensor,
    remove: Tensor,
    mode: str = "motion",
    importance_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Takes ``remove`` (batch, frames) tokens out of each frame's run of ``counts`` (batch,
    frames) patch tokens: merged (``merge_tokens``, ``importance`` keeping tokens) or, in
    ``random`` mode, dropped. Every clip must give up the same total.

    patches (batch, N, C); size (batch, N) token masses; importance like size or None. Frames of
    equal (tokens, removal) go through one call together. Returns the tokens (batch, M, C), their
    sizes, ``assign`` (batch, N): each input token's row in the output (``unmerge_tokens``
    undoes the reduction), and the runs' new counts."""
    kept = counts - remove
    length = int(kept[0].sum())
    if not bool((kept.sum(-1) == length).all()):
        raise ValueError(
            f"reduce_runs: every clip must keep as many tokens, got {kept.sum(-1).tolist()}"
        )
    starts, kept_starts = counts.cumsum(-1) - counts, kept.cumsum(-1) - kept
    out = patches.new_zeros(len(patches), length, patches.shape[-1])
    out_size = size.new_zeros(len(patches), length)
    assign = torch.empty(patches.shape[:2], dtype=torch.long, device=patches.device)
    group = counts * (int(remove.max()) + 1) + remove
    for key in group.unique().tolist():
        clip, frame = (group == key).nonzero(as_tuple=True)
        tokens, r = int(counts[clip[0], frame[0]]), int(remove[clip[0], frame[0]])
        source = starts[clip, frame, None] + torch.arange(tokens, device=counts.device)
        target = kept_starts[clip, frame, None] + torch.arange(tokens - r, device=counts.device)
        rows = clip[:, None]
        run, run_size = patches[rows, source], size[rows, source]
        if mode == "random":
            merged, merged_size, row_assign = drop_tokens(run, run_size, r)
        else:
            merged, merged_size, row_assign = merge_tokens(
                run,
                run,
                r,
                importance=None if importance is None else importance[rows, source],
                size=run_size,
                protect=0,
                importance_weight=importance_weight,
            )
        out[rows, target] = merged
        out_size[rows, target] = merged_size.to(out_size.dtype)
        assign[rows, source] = target.gather(1, row_assign)
    return out, out_size, assign, kept


def carry_importance(importance: Tensor, assign: Tensor, kept: int) -> Tensor:
    """Importance (batch, N) after a reduction to ``kept`` tokens with ``assign`` (batch, N):
    each token keeps the largest importance of those it absorbed."""
    merged = importance.new_zeros(len(importance), kept)
    return merged.scatter_reduce(-1, assign, importance, "amax", include_self=False)


def run_maximum_one(scores: Tensor, frame: Tensor, frames: int) -> Tensor:
    """Scores (batch, N) divided by their maximum within each frame; ``frame`` (batch, N) the
    frame of each token."""
    peaks = scores.new_zeros(len(scores), frames)
    peaks = peaks.scatter_reduce(-1, frame, scores, "amax", include_self=False)
    return scores / peaks.gather(-1, frame).clamp_min(1e-12)


def merge_ratio_at(step: int, total_steps: int, target: float, ramp_fraction: float) -> float:
    """The curriculum: the ratio rises linearly from 0 to ``target`` over the first
    ``ramp_fraction`` of training, then stays (``ramp_fraction`` 0: the target throughout)."""
    ramp_steps = ramp_fraction * total_steps
    if ramp_steps <= 0:
        return target
    return target * min(1.0, (step + 1) / ramp_steps)


def saliency_scale_at(step: int, ramp_steps: int) -> float:
    """Progressive merging: the weight of saliency (edges, colour) in the importance after
    ``step`` training steps, rising linearly from 0 (motion alone) to 1 over ``ramp_steps``
    (0: saliency from the start)."""
    return 1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps)
