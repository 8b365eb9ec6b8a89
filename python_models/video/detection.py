"""Temporal action detection: a per-frame head over a video model's token time steps (pooled by
``step_features``), its targets and loss, and the decoding of its scores into scored action
segments.

Time is counted in the clip's sampled frames throughout. Labels follow the video data's
``frame_labels``: an action's index, -1 for background, anything below -1 for padding.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mixers import TokenLayout

BACKGROUND_LABEL = -1  # frame_labels' value outside every action; below it: padding
IGNORE_INDEX = -100  # cross_entropy's default ignore_index: the target class of padding
BOUNDARIES = ("start", "end")


@dataclass
class DetectionOutput:
    """Per-frame detection scores of a batch of clips (or of one clip, without the batch axis).

    ``class_logits``: (batch, T, num_classes + 1), the last class background.
    ``boundary_logits``: (batch, T, 2), the logits of a frame being an action's first (start) and
    last (end) frame.
    """

    class_logits: Tensor
    boundary_logits: Tensor


def step_features(tokens: Tensor, layout: TokenLayout) -> Tensor:
    """The mean token of each time step: (batch, L, dim) laid out as ``layout`` says (equal or
    unequal runs) → (batch, layout.frames, dim). Merged tokens weigh by how many patches they
    stand for when ``layout.size`` is given."""
    batch, length, dim = tokens.shape
    patches = tokens[:, layout.prefix :]
    weights = (
        patches.new_ones(patches.shape[:2])
        if layout.size is None
        else layout.size[:, layout.prefix :].to(tokens.dtype)
    )
    frame = layout.frame_index(batch, length, tokens.device)
    sums = patches.new_zeros(batch, layout.frames, dim).scatter_add(
        1, frame[..., None].expand(-1, -1, dim), patches * weights[..., None]
    )
    totals = weights.new_zeros(batch, layout.frames).scatter_add(1, frame, weights)
    return sums / totals[..., None]


class DetectionHead(nn.Module):
    """Per-frame action classes and boundaries from per-time-step features.

    A temporal convolution (``kernel_size``, GELU) lets each step see its neighbours; a linear
    layer then predicts every one of the ``frames_per_step`` frames a step covers (a tubelet's
    frames), so detection stays per frame when tokens span several frames.

    Args:
        dim: width of the step features.
        num_classes: number of action classes (background is added as one more).
        frames_per_step: frames each time step covers.
        hidden_dim: width of the temporal convolution (default ``dim``).
        kernel_size: odd temporal extent of the convolution, in steps.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        frames_per_step: int = 1,
        hidden_dim: int | None = None,
        kernel_size: int = 3,
    ):
        super().__init__()
        for name, value in (("dim", dim), ("num_classes", num_classes)):
            if value < 1:
                raise ValueError(f"DetectionHead: {name} must be >= 1, got {value}")
        if frames_per_step < 1:
            raise ValueError(f"DetectionHead: frames_per_step must be >= 1, got {frames_per_step}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"DetectionHead: kernel_size must be odd and >= 1, got {kernel_size}")
        hidden_dim = dim if hidden_dim is None else hidden_dim
        if hidden_dim < 1:
            raise ValueError(f"DetectionHead: hidden_dim must be >= 1, got {hidden_dim}")
        self.dim = dim
        self.num_classes = num_classes
        self.frames_per_step = frames_per_step
        self.temporal = nn.Sequential(
            nn.Conv1d(dim, hidden_dim, kernel_size, padding=kernel_size // 2), nn.GELU()
        )
        self.outputs_per_frame = num_classes + 1 + len(BOUNDARIES)
        self.predict = nn.Linear(hidden_dim, frames_per_step * self.outputs_per_frame)

    def forward(self, steps: Tensor) -> DetectionOutput:
        """``steps``: (batch, S, dim) → scores for the S · frames_per_step frames."""
        if steps.dim() != 3 or steps.shape[-1] != self.dim:
            raise ValueError(
                f"DetectionHead: steps must be (batch, S, {self.dim}), got {tuple(steps.shape)}"
            )
        hidden = self.temporal(steps.transpose(1, 2)).transpose(1, 2)
        frames = self.predict(hidden).reshape(steps.shape[0], -1, self.outputs_per_frame)
        class_logits, boundary_logits = frames.split(
            [self.num_classes + 1, len(BOUNDARIES)], dim=-1
        )
        return DetectionOutput(class_logits, boundary_logits)


def _check_frame_labels(frame_labels: Tensor, num_classes: int) -> None:
    if frame_labels.dim() != 2 or frame_labels.dtype != torch.int64:
        raise ValueError(
            f"frame_labels must be int64 (batch, T), got {frame_labels.dtype} "
            f"{tuple(frame_labels.shape)}"
        )
    if frame_labels.numel() and int(frame_labels.max()) >= num_classes:
        raise ValueError(
            f"frame_labels must be < num_classes={num_classes}, got {int(frame_labels.max())}"
        )


def detection_targets(frame_labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-frame targets from ``frame_labels`` (batch, T).

    Returns ``classes`` (batch, T) int64 — the action, ``num_classes`` for background,
    ``IGNORE_INDEX`` for padding — and float 0/1 ``starts`` and ``ends`` (batch, T): a start
    where an action's label differs from the previous frame's, an end at the last frame of a
    run of one action.
    """
    _check_frame_labels(frame_labels, num_classes)
    action = frame_labels >= 0
    classes = torch.where(action, frame_labels, num_classes)
    classes = classes.masked_fill(frame_labels < BACKGROUND_LABEL, IGNORE_INDEX)
    outside = frame_labels.new_full((frame_labels.shape[0], 1), BACKGROUND_LABEL)
    previous = torch.cat([outside, frame_labels[:, :-1]], dim=1)
    following = torch.cat([frame_labels[:, 1:], outside], dim=1)
    starts = action & (frame_labels != previous)
    ends = action & (frame_labels != following)
    return classes, starts.float(), ends.float()


def detection_loss(
    output: DetectionOutput, frame_labels: Tensor, num_classes: int, boundary_weight: float = 1.0
) -> Tensor:
    """Per-frame cross-entropy over the classes (background included) plus ``boundary_weight`` ×
    binary cross-entropy on the start and end logits, both averaged over the non-padding frames
    (labels below -1 are ignored).

    Boundary frames are rare (two per action), so each boundary's positives are weighted by the
    ratio of its negative to positive frames in the batch (at least 1): positives and negatives
    then count equally, and the head cannot settle on "never a boundary".
    """
    classes, starts, ends = detection_targets(frame_labels, num_classes)
    expected = {"class_logits": num_classes + 1, "boundary_logits": len(BOUNDARIES)}
    for name, width in expected.items():
        shape = tuple(getattr(output, name).shape)
        if shape != (*classes.shape, width):
            raise ValueError(
                f"detection_loss: {name} must be {(*classes.shape, width)} for frame_labels of "
                f"shape {tuple(classes.shape)} and {num_classes} classes, got {shape}"
            )
    valid = (classes != IGNORE_INDEX).float()
    frames = valid.sum().clamp(min=1.0)
    class_loss = F.cross_entropy(
        output.class_logits.flatten(0, 1), classes.flatten(), reduction="sum"
    )
    boundaries = torch.stack([starts, ends], dim=-1)
    positives = (boundaries * valid.unsqueeze(-1)).sum(dim=(0, 1))
    pos_weight = ((frames - positives) / positives.clamp(min=1.0)).clamp(min=1.0)
    boundary_loss = F.binary_cross_entropy_with_logits(
        output.boundary_logits, boundaries, pos_weight=pos_weight, reduction="none"
    )
    boundary_loss = (boundary_loss.mean(-1) * valid).sum()
    return (class_loss + boundary_weight * boundary_loss) / frames


def smooth_scores(probs: Tensor, window: int = 3) -> Tensor:
    """Moving average of (batch, T, K) scores over time; frames near the clip's edges average the
    frames that exist. ``window`` is odd; 1 returns the scores unchanged."""
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"smooth_scores: window must be an odd int >= 1, got {window!r}")
    if probs.dim() != 3:
        raise ValueError(f"smooth_scores: probs must be (batch, T, K), got {tuple(probs.shape)}")
    if window == 1:
        return probs
    smoothed = F.avg_pool1d(
        probs.transpose(1, 2),
        window,
        stride=1,
        padding=window // 2,
        count_include_pad=False,
    )
    return smoothed.transpose(1, 2)


@dataclass
class Segment:
    """An action from frame ``start`` up to (not including) frame ``end``."""

    start: float
    end: float
    label: int
    score: float


def pairwise_temporal_iou(a: Tensor, b: Tensor) -> Tensor:
    """Temporal IoU of every (start, end) row of ``a`` (N, 2) with every row of ``b`` (M, 2):
    (N, M); 0 where the union is empty."""
    a, b = a.double(), b.double()
    overlap = torch.minimum(a[:, None, 1], b[:, 1]) - torch.maximum(a[:, None, 0], b[:, 0])
    overlap = overlap.clamp(min=0.0)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0]) - overlap
    return torch.where(union > 0, overlap / union.clamp(min=1e-12), 0.0)


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Temporal IoU of two (start, end) intervals."""
    return float(pairwise_temporal_iou(torch.tensor([a]), torch.tensor([b]))[0, 0])


def mask_runs(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The maximal runs of True in each row of a (K, T) bool mask: ``(rows, starts, ends)``, ends
    exclusive, ordered by row then start."""
    edges = F.pad(mask.to(torch.int8), (1, 1)).diff(dim=1)
    rows, starts = (edges == 1).nonzero(as_tuple=True)
    ends = (edges == -1).nonzero(as_tuple=True)[1]
    return rows, starts, ends


def _best_nearby(indices: Tensor, scores: Tensor, radius: int) -> Tensor:
    """For each frame in ``indices``, the frame within ``radius`` of it (inside the clip) whose
    ``scores`` is highest; ties go to the earliest."""
    offsets = torch.arange(-radius, radius + 1, device=indices.device)
    nearby = (indices[:, None] + offsets).clamp(0, scores.shape[0] - 1)
    return nearby.gather(1, scores[nearby].argmax(dim=1, keepdim=True)).squeeze(1)


def temporal_nms(intervals: Tensor, scores: Tensor, iou: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept (start, end) rows of ``intervals``,
    best score first; a row is dropped when its IoU with a kept, better one exceeds ``iou``."""
    order = scores.argsort(descending=True, stable=True)
    overlaps = pairwise_temporal_iou(intervals[order], intervals[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for rank in range(len(order)):
        if not suppressed[rank]:
            keep.append(rank)
            suppressed |= overlaps[rank] > iou
    return order[keep]


def _clip_segments(
    probs: Tensor,
    boundary_probs: Tensor,
    thresholds: Sequence[float],
    radius: int,
    nms_iou: float,
    max_segments: int,
) -> list[Segment]:
    """Segments of one clip from its smoothed action probabilities (T, K) and its start/end
    probabilities (T, 2)."""
    frames = probs.shape[0]
    proposals = [mask_runs(probs.T >= threshold) for threshold in thresholds]
    labels, starts, ends = (torch.cat(parts) for parts in zip(*proposals))
    refined_starts = _best_nearby(starts, boundary_probs[:, 0], radius)
    refined_ends = _best_nearby(ends - 1, boundary_probs[:, 1], radius) + 1
    ordered = refined_starts < refined_ends
    starts = torch.where(ordered, refined_starts, starts)
    ends = torch.where(ordered, refined_ends, ends)
    cumulative = F.pad(probs.double().cumsum(0), (0, 0, 1, 0))
    mean_prob = (cumulative[ends, labels] - cumulative[starts, labels]) / (ends - starts)
    confidence = (boundary_probs[starts, 0] * boundary_probs[ends - 1, 1]).double().sqrt()
    scores = mean_prob * confidence
    # Shifting each class to its own stretch of time keeps NMS from comparing across classes.
    shift = (labels * (frames + 1)).double()
    intervals = torch.stack([starts + shift, ends + shift], dim=1)
    keep = temporal_nms(intervals, scores, nms_iou)[:max_segments]
    return [
        Segment(float(starts[i]), float(ends[i]), int(labels[i]), float(scores[i]))
        for i in keep.tolist()
    ]


def decode_segments(
    output: DetectionOutput,
    smoothing_window: int = 3,
    threshold: float | Sequence[float] = (0.3, 0.5, 0.7),
    nms_iou: float = 0.5,
    max_segments: int = 100,
) -> list[list[Segment]]:
    """Action segments of each clip in ``output`` (batched, or one clip without the batch axis),
    best first.

    Class probabilities (softmax, background dropped) are smoothed over ``smoothing_window``
    frames. Each maximal run of frames whose probability of a class reaches a threshold is a
    proposal (every value in ``threshold`` gives its own runs); its first and last frames move
    to the frame of highest start / end probability within ``max(1, smoothing_window // 2)``
    frames (as far as smoothing shifts an edge). A segment's score is its class's mean
    probability over the segment times the boundary confidence, the geometric mean of the start
    probability of its first frame and the end probability of its last. Per class, greedy
    temporal NMS at ``nms_iou`` removes overlapping duplicates; at most ``max_segments`` are
    kept per clip.
    """
    thresholds = (threshold,) if isinstance(threshold, (int, float)) else tuple(threshold)
    if not thresholds or not all(0.0 < t < 1.0 for t in thresholds):
        raise ValueError(f"decode_segments: threshold must be in (0, 1), got {threshold!r}")
    if not 0.0 <= nms_iou <= 1.0:
        raise ValueError(f"decode_segments: nms_iou must be in [0, 1], got {nms_iou}")
    if max_segments < 1:
        raise ValueError(f"decode_segments: max_segments must be >= 1, got {max_segments}")
    class_logits, boundary_logits = output.class_logits, output.boundary_logits
    if class_logits.dim() == 2:
        class_logits, boundary_logits = class_logits[None], boundary_logits[None]
    if class_logits.dim() != 3 or boundary_logits.shape != (*class_logits.shape[:2], 2):
        raise ValueError(
            "decode_segments: expected class_logits (batch, T, K + 1) and boundary_logits "
            f"(batch, T, 2), got {tuple(class_logits.shape)} and {tuple(boundary_logits.shape)}"
        )
    with torch.no_grad():
        probs = smooth_scores(class_logits.float().softmax(-1)[..., :-1], smoothing_window)
        boundary_probs = boundary_logits.float().sigmoid()
        radius = max(1, smoothing_window // 2)
        return [
            _clip_segments(p.cpu(), b.cpu(), thresholds, radius, nms_iou, max_segments)
            for p, b in zip(probs, boundary_probs)
        ]
