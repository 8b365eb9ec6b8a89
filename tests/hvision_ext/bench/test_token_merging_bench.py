"""The merge_tokens and motion_saliency bench cases: registered, and their anchors compute the
same thing as the operators (so the timings compare like with like)."""

import pytest
import torch

from hvision_ext import ops
from hvision_ext.bench import merge_tokens as merge_bench
from hvision_ext.bench import motion_saliency as motion_bench
from hvision_ext.bench.__main__ import main
from tests.helpers import seeded


def test_cases_are_registered(capsys):
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in (
        "merge_tokens/video-vit-s ",
        "merge_tokens/video-vit-s-fwd",
        "motion_saliency/clips-224",
    ):
        assert name in listed


def sorted_rows(rows):
    return rows[torch.argsort(rows[:, 0])]


def test_tome_baseline_merges_the_same_tokens():
    """Without a class token both split the tokens alike; ToMe's layout puts the merged tokens
    last, so the two merges agree as sets of rows."""
    gen = seeded(0)
    x = torch.randn(2, 41, 8, generator=gen)
    keys = torch.randn(2, 41, 8, generator=gen)
    tome, tome_size = merge_bench.tome_merge(x, keys, 15, class_token=False)
    ours, ours_size, _ = ops.merge_tokens(x, keys, 15, protect=0)
    for b in range(2):
        torch.testing.assert_close(sorted_rows(tome[b]), sorted_rows(ours[b]))
    torch.testing.assert_close(tome_size.sum((1, 2)), ours_size.sum(1))


def test_opencv_anchor_computes_the_same_scores():
    pytest.importorskip(
        "cv2", reason="OpenCV (cv2) is not installed: pip install opencv-python-headless"
    )
    frames = torch.randint(0, 256, (2, 3, 3, 32, 48), generator=seeded(1), dtype=torch.uint8)
    expected = ops.motion_saliency(frames, 8)
    scores = motion_bench.opencv_scores()(frames.numpy(), 8)
    torch.testing.assert_close(torch.from_numpy(scores).float(), expected, rtol=1e-5, atol=1e-5)
