"""The detection head and its decoding: targets of hand-made frame labels, the loss, smoothing,
temporal IoU, NMS, exact decoding of a perfect prediction, and gradients."""

import pytest
import torch
import torch.nn.functional as F

from python_models import create_model
from python_models.video import TokenLayout
from python_models.video.detection import (
    DetectionHead,
    DetectionOutput,
    Segment,
    decode_segments,
    detection_loss,
    detection_targets,
    pairwise_temporal_iou,
    smooth_scores,
    step_features,
    temporal_iou,
    temporal_nms,
)

NUM_CLASSES = 3
# Two clips of 8 frames: background, action 2, action 0 right after it, background; action 1
# from the first frame, background, then two frames of padding.
FRAME_LABELS = torch.tensor([[-1, -1, 2, 2, 2, 0, 0, -1], [1, 1, 1, -1, -1, -1, -2, -2]])
SEGMENTS = [[(2, 5, 2), (5, 7, 0)], [(0, 3, 1)]]


def confident_output(frame_labels: torch.Tensor, logit: float = 10.0) -> DetectionOutput:
    """Logits of ±``logit`` that say exactly what ``frame_labels`` hold (padding as background)."""
    classes, starts, ends = detection_targets(frame_labels.clamp(min=-1), NUM_CLASSES)
    class_logits = (2 * F.one_hot(classes, NUM_CLASSES + 1) - 1) * logit
    boundary_logits = (2 * torch.stack([starts, ends], dim=-1) - 1) * logit
    return DetectionOutput(class_logits.float(), boundary_logits)


def as_tuples(segments: list[Segment]) -> list[tuple]:
    return sorted((s.start, s.end, s.label) for s in segments)


def test_targets_of_hand_made_frame_labels():
    classes, starts, ends = detection_targets(FRAME_LABELS, NUM_CLASSES)
    assert classes.tolist() == [[3, 3, 2, 2, 2, 0, 0, 3], [1, 1, 1, 3, 3, 3, -100, -100]]
    assert starts.tolist() == [[0, 0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]
    assert ends.tolist() == [[0, 0, 0, 0, 1, 0, 1, 0], [0, 0, 1, 0, 0, 0, 0, 0]]
    # an action running to the last frame ends there
    assert detection_targets(torch.tensor([[-1, 0, 0]]), 1)[2].tolist() == [[0, 0, 1]]


def test_targets_reject_labels_beyond_the_classes():
    with pytest.raises(ValueError, match="num_classes=3"):
        detection_targets(torch.tensor([[0, 3]]), NUM_CLASSES)
    with pytest.raises(ValueError, match="int64"):
        detection_targets(FRAME_LABELS.float(), NUM_CLASSES)


def test_head_predicts_each_frame_of_a_step_from_that_step():
    torch.manual_seed(0)
    head = DetectionHead(dim=8, num_classes=NUM_CLASSES, frames_per_step=2, kernel_size=1)
    steps = torch.randn(1, 4, 8)
    output = head(steps)
    assert output.class_logits.shape == (1, 8, NUM_CLASSES + 1)
    assert output.boundary_logits.shape == (1, 8, 2)
    changed = steps.clone()
    changed[0, 1] += 1.0
    moved = (head(changed).class_logits - output.class_logits).abs().sum(-1)[0]
    assert (moved > 0).tolist() == [False, False, True, True, False, False, False, False]


def test_step_features_average_each_frames_tokens_by_size():
    tokens = torch.arange(7.0).view(1, 7, 1)  # class token, then 2 frames of 3 tokens
    plain = step_features(tokens, TokenLayout(prefix=1, frames=2))
    assert plain.flatten().tolist() == [2.0, 5.0]
    size = torch.tensor([[1.0, 1.0, 2.0, 1.0, 3.0, 1.0, 1.0]])
    weighted = step_features(tokens, TokenLayout(prefix=1, frames=2, size=size))
    assert weighted.flatten().tolist() == pytest.approx([(1 + 4 + 3) / 4, (12 + 5 + 6) / 5])


def test_head_on_the_video_model_gives_scores_per_sampled_frame():
    torch.manual_seed(0)
    model = create_model(
        "hvlm_tiny", num_frames=8, img_size=32, patch_size=8, tubelet_size=2, embed_dim=16,
        depth=2, num_heads=2, num_classes=NUM_CLASSES,
    )  # fmt: skip
    clips = torch.randint(0, 256, (2, 8, 3, 32, 32), dtype=torch.uint8)
    head = DetectionHead(16, NUM_CLASSES, frames_per_step=model.patch_embed.tubelet_size)
    steps = step_features(model.forward_features(clips), model.feature_layout(clips.shape))
    output = head(steps)
    assert steps.shape == (2, 4, 16)
    detection_loss(output, FRAME_LABELS, NUM_CLASSES).backward()
    assert all(p.grad is not None for p in model.patch_embed.parameters())


def test_head_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        DetectionHead(8, NUM_CLASSES, kernel_size=2)
    with pytest.raises(ValueError, match=r"steps must be \(batch, S, 8\)"):
        DetectionHead(8, NUM_CLASSES)(torch.randn(2, 4, 6))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head = DetectionHead(dim=8, num_classes=NUM_CLASSES, frames_per_step=2, hidden_dim=12)
    detection_loss(head(torch.randn(2, 4, 8)), FRAME_LABELS, NUM_CLASSES).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_loss_ignores_padding_and_falls_for_a_confident_right_answer():
    torch.manual_seed(0)
    logits = DetectionOutput(torch.randn(2, 8, NUM_CLASSES + 1), torch.randn(2, 8, 2))
    padded = FRAME_LABELS.clone()
    padded[1, 6:] = -2
    unpadded = FRAME_LABELS.clone()
    unpadded[1, 6:] = -1
    altered = DetectionOutput(logits.class_logits.clone(), logits.boundary_logits.clone())
    altered.class_logits[1, 6:] += 5.0
    altered.boundary_logits[1, 6:] -= 5.0
    assert detection_loss(altered, padded, NUM_CLASSES) == pytest.approx(
        detection_loss(logits, padded, NUM_CLASSES).item()
    )
    assert detection_loss(altered, unpadded, NUM_CLASSES) != pytest.approx(
        detection_loss(logits, unpadded, NUM_CLASSES).item()
    )
    assert detection_loss(confident_output(FRAME_LABELS), FRAME_LABELS, NUM_CLASSES) < 1e-3
    with pytest.raises(ValueError, match="class_logits must be"):
        detection_loss(logits, FRAME_LABELS[:, :6], NUM_CLASSES)
    with pytest.raises(ValueError, match="boundary_logits must be"):
        short = DetectionOutput(logits.class_logits, logits.boundary_logits[..., :1])
        detection_loss(short, FRAME_LABELS, NUM_CLASSES)


def test_smoothing_averages_the_frames_that_exist():
    probs = torch.tensor([1.0, 0.0, 0.0, 3.0, 6.0]).view(1, 5, 1)
    smoothed = smooth_scores(probs, window=3).flatten().tolist()
    assert smoothed == pytest.approx([0.5, 1 / 3, 1.0, 3.0, 4.5])
    assert smooth_scores(probs, window=5).flatten().tolist() == pytest.approx(
        [1 / 3, 1.0, 2.0, 2.25, 3.0]
    )
    assert torch.equal(smooth_scores(probs, window=1), probs)
    for window in (0, 2, -1):
        with pytest.raises(ValueError, match="window must be an odd int >= 1"):
            smooth_scores(probs, window)


def test_temporal_iou_of_hand_worked_intervals():
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 4), (4, 8)) == 0.0
    assert temporal_iou((2, 6), (2, 6)) == 1.0
    a = torch.tensor([[0.0, 10.0], [2.0, 6.0]])
    b = torch.tensor([[5.0, 15.0], [0.0, 4.0], [3.0, 3.0]])
    expected = torch.tensor([[1 / 3, 4 / 10, 0.0], [1 / 13, 2 / 6, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(pairwise_temporal_iou(a, b), expected)


def test_nms_removes_a_duplicate_and_keeps_what_overlaps_little():
    intervals = torch.tensor([[1.0, 10.0], [0.0, 10.0], [8.0, 20.0]])
    scores = torch.tensor([0.8, 0.9, 0.7])
    assert temporal_nms(intervals, scores, iou=0.5).tolist() == [1, 2]  # tIoU 0.9, then 2/20
    assert temporal_nms(intervals, scores, iou=0.9).tolist() == [1, 0, 2]


def test_a_perfect_prediction_decodes_to_exactly_its_segments():
    decoded = decode_segments(confident_output(FRAME_LABELS))
    assert [as_tuples(clip) for clip in decoded] == SEGMENTS
    assert all(0.0 < s.score <= 1.0 for clip in decoded for s in clip)
    one_clip = confident_output(FRAME_LABELS[:1])
    single = decode_segments(DetectionOutput(one_clip.class_logits[0], one_clip.boundary_logits[0]))
    assert [as_tuples(clip) for clip in single] == SEGMENTS[:1]


def test_boundary_scores_move_a_segment_edge_onto_the_boundary():
    output = confident_output(FRAME_LABELS)
    # the class scores run one frame late for action 2 (frames 3 to 5); its boundaries stay right
    late = confident_output(torch.tensor([[-1, -1, -1, 2, 2, 2, 0, -1]] * 2)).class_logits
    output.class_logits[:, :6] = late[:, :6]
    decoded = decode_segments(output, smoothing_window=1, threshold=0.5)
    assert as_tuples(decoded[0]) == SEGMENTS[0]


def test_segments_are_scored_by_class_probability_and_boundary_confidence():
    output = confident_output(FRAME_LABELS[:1])
    output.boundary_logits[0, 2, 0] = 0.0  # start of action 2 at probability 1/2
    scores = {s.label: s.score for s in decode_segments(output, smoothing_window=1)[0]}
    assert scores[2] == pytest.approx(0.5**0.5, rel=1e-3)
    assert scores[0] == pytest.approx(1.0, rel=1e-3)


def test_decoding_rejects_bad_arguments():
    output = confident_output(FRAME_LABELS)
    with pytest.raises(ValueError, match="threshold must be in"):
        decode_segments(output, threshold=1.5)
    with pytest.raises(ValueError, match="boundary_logits"):
        decode_segments(DetectionOutput(output.class_logits, output.boundary_logits[:, :4]))
