"""Detection AP and mAP against values worked out by hand, and on a head that learns."""

import pytest
import torch
import torch.nn.functional as F

from python_models.video.detection import (
    DetectionHead,
    Segment,
    decode_segments,
    detection_loss,
    temporal_iou,
)
from train.metrics.detection import average_precision, detection_map, ground_truth_segments

TRUTH = [[Segment(0, 10, 0, 1.0), Segment(12, 20, 1, 1.0)], [Segment(4, 14, 0, 1.0)]]


def scored(segment: Segment, score: float, shift: float = 0.0) -> Segment:
    return Segment(segment.start + shift, segment.end + shift, segment.label, score)


def test_ground_truth_segments_are_the_runs_of_action_labels():
    labels = torch.tensor([-1, 2, 2, 0, 0, 0, -1, 2, -2])
    assert ground_truth_segments(labels) == [
        Segment(1, 3, 2, 1.0),
        Segment(3, 6, 0, 1.0),
        Segment(7, 8, 2, 1.0),
    ]
    assert ground_truth_segments(torch.full((4,), -1)) == []
    with pytest.raises(ValueError, match="int64"):
        ground_truth_segments(labels.view(3, 3))


def test_a_perfect_prediction_scores_one_at_every_threshold():
    predictions = [[scored(s, 0.9) for s in clip] for clip in TRUTH]
    assert detection_map(predictions, TRUTH) == {
        "mAP@0.3": 1.0,
        "mAP@0.5": 1.0,
        "mAP@0.7": 1.0,
        "mAP": 1.0,
    }


def test_a_shifted_prediction_counts_at_low_thresholds_only():
    # 3 frames late on 10-frame segments: overlap 7, union 13, tIoU 7/13 ≈ 0.54
    truth = [[TRUTH[0][0]], [TRUTH[1][0]]]
    predictions = [[scored(clip[0], 0.9, shift=3)] for clip in truth]
    assert temporal_iou((0, 10), (3, 13)) == pytest.approx(7 / 13)
    metrics = detection_map(predictions, truth)
    assert metrics["mAP@0.3"] == 1.0
    assert metrics["mAP@0.5"] == 1.0  # 7/13 > 0.5
    assert metrics["mAP@0.7"] == 0.0
    assert metrics["mAP"] == pytest.approx(2 / 3)


def test_a_false_positive_ranked_first_lowers_ap_to_the_hand_worked_value():
    truth = [(0, TRUTH[0][0]), (1, TRUTH[1][0])]
    false_positive = (0, Segment(30, 40, 0, 0.95))
    hits = [(0, scored(TRUTH[0][0], 0.9)), (1, scored(TRUTH[1][0], 0.8))]
    # precision 0, 1/2, 2/3 at recall 0, 1/2, 1: the envelope is 2/3 at both recall steps
    assert average_precision([false_positive, *hits], truth, 0.5) == pytest.approx(2 / 3)
    # ranked second instead: precision 1, 1/2, 2/3 → 1/2 · 1 + 1/2 · 2/3
    demoted = (0, Segment(30, 40, 0, 0.85))
    assert average_precision([demoted, *hits], truth, 0.5) == pytest.approx(5 / 6)


def test_each_prediction_takes_the_unmatched_truth_it_overlaps_most():
    truth = [(0, Segment(0, 10, 0, 1.0)), (0, Segment(8, 20, 0, 1.0))]
    # the first overlaps both (tIoU 3/19 and 11/13) and must take the second
    predictions = [(0, Segment(7, 19, 0, 0.9)), (0, Segment(0, 9, 0, 0.8))]
    assert average_precision(predictions, truth, 0.5) == 1.0
    # a second prediction of an already matched segment is a false positive
    duplicate = [(0, Segment(0, 10, 0, 0.9)), (0, Segment(0, 10, 0, 0.8))]
    assert average_precision(duplicate, truth[:1], 0.5) == 1.0
    assert average_precision(duplicate, truth, 0.5) == pytest.approx(1 / 2)


def test_no_predictions_score_zero():
    assert average_precision([], [(0, TRUTH[0][0])], 0.5) == 0.0
    metrics = detection_map([[], []], TRUTH)
    assert metrics == {"mAP@0.3": 0.0, "mAP@0.5": 0.0, "mAP@0.7": 0.0, "mAP": 0.0}


def test_map_averages_over_the_classes_with_ground_truth():
    # class 0 found in both clips, class 1 missed, class 5 (no ground truth) not counted
    predictions = [[scored(TRUTH[0][0], 0.9), Segment(0, 5, 5, 0.99)], [scored(TRUTH[1][0], 0.8)]]
    assert detection_map(predictions, TRUTH, iou_thresholds=(0.5,)) == {
        "mAP@0.5": 0.5,
        "mAP": 0.5,
    }


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same clips"):
        detection_map([[]], TRUTH)
    with pytest.raises(ValueError, match="ground_truth holds no segment"):
        detection_map([[], []], [[], []])
    with pytest.raises(ValueError, match="iou must be in"):
        average_precision([], [(0, TRUTH[0][0])], 1.5)


def noisy_clips(count: int, generator: torch.Generator, classes: int, frames: int, per_step: int):
    """Clips with one action of random class and extent (>= 2 frames), and step features that
    are each step's frames' one-hot labels (background included) plus noise."""
    labels = torch.full((count, frames), -1)
    for row in labels:
        start = int(torch.randint(0, frames - 1, (1,), generator=generator))
        end = int(torch.randint(start + 2, frames + 1, (1,), generator=generator))
        row[start:end] = int(torch.randint(0, classes, (1,), generator=generator))
    steps = F.one_hot(labels + 1, classes + 1).float().view(count, frames // per_step, -1)
    return steps + 0.3 * torch.randn(steps.shape, generator=generator), labels


def test_a_trained_head_decodes_to_segments_that_score_high():
    classes, frames, per_step = 3, 8, 2
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    head = DetectionHead(per_step * (classes + 1), classes, per_step, hidden_dim=32)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(100):
        steps, labels = noisy_clips(32, generator, classes, frames, per_step)
        loss = detection_loss(head(steps), labels, classes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    steps, labels = noisy_clips(64, generator, classes, frames, per_step)
    with torch.no_grad():
        predictions = decode_segments(head(steps))
    metrics = detection_map(predictions, [ground_truth_segments(clip) for clip in labels])
    assert metrics["mAP@0.5"] > 0.9
