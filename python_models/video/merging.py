"""Token reduction between video blocks, frame by frame so that every frame keeps the same number
of tokens and the time layout stays recoverable (strided and hierarchical attention read it).

- ``motion`` (default): ToMe bipartite merging (``merge_tokens``) of each frame's patch tokens,
  with the per-token ``motion_saliency`` of the input frames lowering a token's chance of being
  merged away; sizes are carried so later merges average by mass.
- ``similarity``: the same merging without the motion importance.
- ``random``: the baseline: drop the same number of randomly chosen tokens per frame.

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
    if importance is not None:
        importance = carry_importance(importance, assign, frames, merged_size.shape[-1])
    return batch_rows(merged, frames), batch_rows(merged_size, frames), importance, assign


def carry_importance(importance: Tensor, assign: Tensor, frames: int, kept: int) -> Tensor:
    """Importance (batch, frames · P) after a merge to ``kept`` tokens per frame with ``assign``
    (batch · frames, P): each merged token keeps the largest importance of those it absorbed."""
    rows = frame_rows(importance, frames)
    merged = rows.new_zeros(len(rows), kept)
    return batch_rows(merged.scatter_reduce(-1, assign, rows, "amax", include_self=False), frames)


def per_frame_maximum_one(scores: Tensor, frames: int) -> Tensor:
    """Scores (batch, frames · P) divided by their maximum within each frame."""
    rows = frame_rows(scores, frames)
    return batch_rows(rows / rows.amax(-1, keepdim=True).clamp_min(1e-12), frames)


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
