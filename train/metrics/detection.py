"""Temporal action detection metrics, ActivityNet-style: average precision of one class at one
temporal IoU (tIoU) threshold, and its mean over classes at several thresholds."""

from collections import defaultdict
from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models.video.detection import Segment, mask_runs, pairwise_temporal_iou

IOU_THRESHOLDS = (0.3, 0.5, 0.7)

ClipSegment = tuple[Hashable, Segment]  # (clip id, segment)


def _intervals(segments: Sequence[Segment]) -> Tensor:
    return torch.tensor([[s.start, s.end] for s in segments], dtype=torch.float64).view(-1, 2)


def _true_positives(
    ranked: Sequence[ClipSegment], ground_truth: Sequence[ClipSegment], iou: float
) -> Tensor:
    """Whether each prediction, in the order given, matches a ground-truth segment of its clip
    that no earlier prediction matched: of those with tIoU >= ``iou``, the one of highest tIoU."""
    truth_by_clip = defaultdict(list)
    for clip, segment in ground_truth:
        truth_by_clip[clip].append(segment)
    truth = {clip: _intervals(segments) for clip, segments in truth_by_clip.items()}
    matched = {clip: torch.zeros(len(t), dtype=torch.bool) for clip, t in truth.items()}
    hits = torch.zeros(len(ranked), dtype=torch.bool)
    for rank, (clip, segment) in enumerate(ranked):
        if clip not in truth:
            continue
        overlaps = pairwise_temporal_iou(_intervals([segment]), truth[clip])[0]
        overlaps = overlaps.masked_fill(matched[clip] | (overlaps < iou), -1.0)
        best = int(overlaps.argmax())
        if overlaps[best] >= 0:
            matched[clip][best] = hits[rank] = True
    return hits


def average_precision(
    predictions: Sequence[ClipSegment], ground_truth: Sequence[ClipSegment], iou: float
) -> float:
    """AP of one class's ``predictions`` against its ``ground_truth``, both (clip id, segment)
    pairs, at tIoU threshold ``iou``.

    Predictions are ranked by score (ties keep their order) and matched greedily (see
    ``_true_positives``); an unmatched one is a false positive. AP is the area under the
    precision envelope (at each recall, the best precision at that recall or beyond) summed at
    every recall step: all-point interpolation, as ActivityNet's and PASCAL VOC 2010+'s.
    """
    if not ground_truth:
        raise ValueError("average_precision: ground_truth must hold at least one segment, got 0")
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"average_precision: iou must be in [0, 1], got {iou}")
    if not predictions:
        return 0.0
    ranked = sorted(predictions, key=lambda prediction: prediction[1].score, reverse=True)
    true_positives = _true_positives(ranked, ground_truth, iou).double().cumsum(0)
    precision = true_positives / torch.arange(1, len(ranked) + 1)
    recall = true_positives / len(ground_truth)
    envelope = precision.flip(0).cummax(0).values.flip(0)
    recall_steps = recall.diff(prepend=recall.new_zeros(1))
    return float((recall_steps * envelope).sum())


def _by_class(segments_per_clip: Sequence[Sequence[Segment]]) -> dict[int, list[ClipSegment]]:
    by_class = defaultdict(list)
    for clip, segments in enumerate(segments_per_clip):
        for segment in segments:
            by_class[segment.label].append((clip, segment))
    return by_class


def detection_map(
    predictions: Sequence[Sequence[Segment]],
    ground_truth: Sequence[Sequence[Segment]],
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[str, float]:
    """Mean AP over the classes that have ground truth, per clip lists of segments, at each
    tIoU threshold (``mAP@0.3`` …) and averaged over the thresholds (``mAP``)."""
    if len(predictions) != len(ground_truth):
        raise ValueError(
            f"detection_map: predictions cover {len(predictions)} clips, ground_truth "
            f"{len(ground_truth)}; they must cover the same clips"
        )
    if not iou_thresholds:
        raise ValueError("detection_map: iou_thresholds must not be empty")
    predicted, truth = _by_class(predictions), _by_class(ground_truth)
    if not truth:
        raise ValueError("detection_map: ground_truth holds no segment: mAP is undefined")
    metrics = {
        f"mAP@{iou:g}": sum(average_precision(predicted[c], truth[c], iou) for c in truth)
        / len(truth)
        for iou in iou_thresholds
    }
    metrics["mAP"] = sum(metrics.values()) / len(metrics)
    return metrics


def ground_truth_segments(frame_labels: Tensor) -> list[Segment]:
    """The runs of one action label (>= 0) in a clip's ``frame_labels`` (T,), as segments of
    score 1 ordered by start."""
    if frame_labels.dim() != 1 or frame_labels.dtype != torch.int64:
        raise ValueError(
            f"ground_truth_segments: frame_labels must be int64 (T,), got {frame_labels.dtype} "
            f"{tuple(frame_labels.shape)}"
        )
    action = frame_labels >= 0
    if not action.any():
        return []
    per_class = F.one_hot(frame_labels.clamp(min=0)).T.bool() & action
    labels, starts, ends = mask_runs(per_class)
    segments = [
        Segment(float(start), float(end), label, 1.0)
        for label, start, end in zip(labels.tolist(), starts.tolist(), ends.tolist())
    ]
    return sorted(segments, key=lambda segment: segment.start)
