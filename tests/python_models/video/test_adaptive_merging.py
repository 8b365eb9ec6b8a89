"""Adaptive compression: the per-clip merge budget spread over the frames by motion, unequal
runs of tokens per frame (the layout, every frame-reading mixer, the detection features, exact
unmerge), batches of clips with different motion, and the importance sources (colour saliency,
progressive merging)."""

import pytest
import torch

from python_models import create_model
from python_models.video import (
    FullAttention,
    HierarchicalAttention,
    LocalGlobalAttention,
    StridedAttention,
    TokenLayout,
    reduce_runs,
    removal_per_clip,
    removal_per_frame,
)
from python_models.video.detection import step_features
from python_models.video.merging import colour_saliency, frame_motion, saliency_scale_at, spread

# 8 frames of 32², tubelet 1 and patch 8: 8 token frames of 16 patches.
PER_FRAME = dict(
    num_frames=8,
    img_size=32,
    patch_size=8,
    tubelet_size=1,
    stem="tubelet",
    embed_dim=32,
    depth=2,
    num_heads=2,
    num_classes=5,
    merge_ratio=0.5,
    merge_at=[0, 1],
)


def half_static_clip(seed: int = 0, moving_from: int = 4) -> torch.Tensor:
    """(1, 8, 3, 32, 32) uint8: one noise image held still, then a bright square that moves
    4 pixels a frame from frame ``moving_from`` on."""
    gen = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 128, (3, 32, 32), generator=gen, dtype=torch.uint8)
    clip = frame.expand(8, -1, -1, -1).clone()
    for t in range(moving_from, 8):
        step = 4 * (t - moving_from)
        clip[t, :, 8:20, step : step + 12] = 255
    return clip[None]


def test_moving_frames_keep_more_tokens_than_static_ones():
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", **PER_FRAME).eval()
    tokens, layout = model.forward_tokens(half_static_clip())
    counts = layout.counts[0]
    assert counts.sum() == 8 * 8 == tokens.shape[1] - 1  # the clip's budget: half its tokens
    assert counts[:4].max() < counts[4:].min()
    frame_model = create_model("hvlm_tiny", merge_budget="frame", **PER_FRAME).eval()
    equal_tokens, equal_layout = frame_model.forward_tokens(half_static_clip())
    assert equal_layout.equal_runs and equal_tokens.shape == tokens.shape


def test_each_clip_spreads_its_own_budget_whatever_its_batch():
    """Clips with different motion in one batch keep as many tokens in all, each spread as
    when the clip is alone, and give the same outputs as alone."""
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", **PER_FRAME).eval()
    batch = torch.cat([half_static_clip(0, moving_from=4), half_static_clip(1, moving_from=2)])
    tokens, layout = model.forward_tokens(batch)
    assert not torch.equal(layout.counts[0], layout.counts[1])
    for index in range(2):
        alone, alone_layout = model.forward_tokens(batch[index : index + 1])
        assert torch.equal(alone_layout.counts[0], layout.counts[index])
        torch.testing.assert_close(alone[0], tokens[index], rtol=1e-4, atol=1e-5)


def test_unmerge_restores_every_patch_exactly():
    torch.manual_seed(0)
    patches, size = torch.randn(2, 12, 4), torch.ones(2, 12)
    counts = torch.tensor([[4, 8], [6, 6]])
    remove = torch.tensor([[2, 1], [1, 2]])
    merged, merged_size, assign, kept = reduce_runs(patches, size, None, counts, remove)
    assert torch.equal(kept, torch.tensor([[2, 7], [5, 4]])) and merged.shape == (2, 9, 4)
    # Masses are carried: each output token's size is the number of patches it stands for.
    assert torch.equal(merged_size, torch.zeros(2, 9).scatter_add(1, assign, size))
    # A token that absorbed no other is itself, unchanged, where the unmerge puts it back.
    alone = merged_size.gather(1, assign) == 1
    torch.testing.assert_close(
        merged.gather(1, assign[..., None].expand(-1, -1, 4))[alone], patches[alone]
    )
    # Tokens never leave their frame.
    frame_in = TokenLayout(0, 2, counts=counts).frame_index(2, 12)
    frame_out = TokenLayout(0, 2, counts=kept).frame_index(2, 9)
    assert torch.equal(frame_out.gather(1, assign), frame_in)


def test_budgets_per_frame_and_per_clip():
    counts = torch.tensor([[16, 16, 16, 16]])
    assert torch.equal(removal_per_frame(counts, 0.5, 1), torch.full((1, 4), 8))
    still = removal_per_clip(counts, torch.zeros(1, 4), 0.25, 1)
    assert torch.equal(still, torch.full((1, 4), 4))  # equal motion: equal shares
    moving = removal_per_clip(counts, torch.tensor([[0.0, 0.0, 1.0, 3.0]]), 0.25, 1)
    assert moving.sum() == 16 and moving[0, 0] == moving[0, 1] > moving[0, 2] > moving[0, 3]
    capped = removal_per_clip(counts, torch.tensor([[0.0, 0.0, 0.0, 9.0]]), 0.5, 1)
    assert torch.equal(capped, torch.tensor([[8, 8, 8, 8]]))  # no frame gives up over half


def test_spread_fills_to_the_caps_and_keeps_the_total():
    shares = spread(
        torch.tensor([10, 3]),
        torch.tensor([[8.0, 1.0, 1.0], [1.0, 1.0, 1.0]]),
        torch.tensor([[4, 6, 6], [2, 2, 2]]),
    )
    assert torch.equal(shares, torch.tensor([[4, 3, 3], [1, 1, 1]]))


def test_frame_motion_compares_frames():
    clip = half_static_clip().float()
    motion = frame_motion(clip, 1)[0]
    assert motion[:4].max() == 0 and motion[4:].min() > 0
    assert torch.equal(frame_motion(clip, 2)[0], motion.view(4, 2).mean(1))


def unequal_layout() -> tuple[TokenLayout, torch.Tensor]:
    counts = torch.tensor([[2, 5, 3], [4, 4, 2]])
    return TokenLayout(1, 3, counts=counts), torch.randn(2, 1 + 10, 8)


def test_layout_runs_and_frame_index():
    layout, x = unequal_layout()
    assert not layout.equal_runs and layout.longest_run(11) == 5
    assert layout.frame_index(2, 11).tolist() == [
        [0, 0, 1, 1, 1, 1, 1, 2, 2, 2],
        [0, 0, 0, 0, 1, 1, 1, 1, 2, 2],
    ]
    with pytest.raises(ValueError, match="do not describe 2 clips of 12 tokens"):
        layout.runs(2, 12)
    with pytest.raises(ValueError, match="no single per_frame count"):
        layout.per_frame(11)


def test_hierarchical_attention_attends_within_each_unequal_frame():
    torch.manual_seed(0)
    layout, x = unequal_layout()
    mixer = HierarchicalAttention(8, 2).eval()
    out = mixer(x, layout)
    for clip in range(2):
        starts = [0, *layout.counts[clip].cumsum(0).tolist()]
        frames = [x[clip : clip + 1, 1 + a : 1 + b] for a, b in zip(starts, starts[1:])]
        local = [mixer.spatial(frame, TokenLayout(0, 1)) for frame in frames]
        summaries = torch.cat(
            [x[clip : clip + 1, :1], *[f.mean(1, keepdim=True) for f in local]], 1
        )
        mixed = mixer.temporal(summaries, TokenLayout(1, 3))
        expected = torch.cat(
            [mixed[:, :1], *[f + mixed[:, 1 + i, None] for i, f in enumerate(local)]], 1
        )
        torch.testing.assert_close(out[clip : clip + 1], expected)


def test_strided_attention_sees_its_frame_and_the_same_rank_elsewhere():
    torch.manual_seed(0)
    layout, x = unequal_layout()
    mixer = StridedAttention(8, 2).eval()
    frame = layout.frame_index(2, 11)
    rank = torch.cat([torch.arange(n) for n in layout.counts.flatten().tolist()]).view(2, 10)
    allowed = torch.ones(2, 11, 11, dtype=torch.bool)
    for clip in range(2):
        for i in range(10):
            for j in range(10):
                same = frame[clip, i] == frame[clip, j] or rank[clip, i] == rank[clip, j]
                allowed[clip, 1 + i, 1 + j] = bool(same)
    dense = FullAttention(8, 2)
    dense.load_state_dict(mixer.state_dict())
    q, k, v = (t.unflatten(-1, (2, 4)).transpose(1, 2) for t in mixer.qkv(x).chunk(3, -1))
    expected = mixer.proj(
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        .transpose(1, 2)
        .flatten(2)
    )
    torch.testing.assert_close(mixer(x, layout), expected)


def test_local_global_window_covers_the_longest_frame():
    torch.manual_seed(0)
    layout, x = unequal_layout()
    mixer = LocalGlobalAttention(8, 2).eval()
    explicit = LocalGlobalAttention(8, 2, window=5).eval()
    explicit.load_state_dict(mixer.state_dict())
    torch.testing.assert_close(mixer(x, layout), explicit(x, layout))


def test_step_features_average_each_unequal_frame():
    layout, x = unequal_layout()
    steps = step_features(x, layout)
    assert steps.shape == (2, 3, 8)
    torch.testing.assert_close(steps[0, 1], x[0, 3:8].mean(0))
    torch.testing.assert_close(steps[1, 2], x[1, 9:11].mean(0))


@pytest.mark.parametrize("attention", ["strided", "local_global", "hierarchical", "mamba"])
def test_every_frame_reading_mixer_trains_on_unequal_runs(attention):
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", attention=attention, **PER_FRAME)
    batch = torch.cat([half_static_clip(0), half_static_clip(1, moving_from=2)])
    model(batch).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.forward_features(batch, unmerge=True).shape == (2, 1 + 8 * 16, 32)


def test_colour_saliency_finds_the_odd_coloured_patch():
    clip = torch.zeros(1, 1, 3, 32, 32)
    clip[..., 0, 8:16, 16:24] = 1.0  # one red patch on black
    scores = colour_saliency(clip, 8)[0, 0]
    assert scores.argmax() == 1 * 4 + 2 and scores.max() == pytest.approx(1.0, abs=1e-5)


def test_progressive_merging_starts_with_motion_alone():
    assert [saliency_scale_at(step, 10) for step in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    assert saliency_scale_at(0, 0) == 1.0
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", colour_weight=1.0, saliency_ramp_steps=2, **PER_FRAME)
    clip = model.prepare(half_static_clip())
    motion_only = create_model("hvlm_tiny", motion_alpha=1.0, **PER_FRAME)
    torch.testing.assert_close(model.token_importance(clip), motion_only.token_importance(clip))
    for _ in range(2):
        model(half_static_clip())  # training forwards advance the schedule
    assert int(model.merge_steps) == 2 and model.saliency_scale() == 1.0
    full_mix = create_model("hvlm_tiny", colour_weight=1.0, **PER_FRAME)
    torch.testing.assert_close(model.token_importance(clip), full_mix.token_importance(clip))
    assert "merge_steps" in model.state_dict() and "merge_steps" not in full_mix.state_dict()


def test_bad_merge_settings_name_the_key():
    with pytest.raises(
        ValueError, match=r"token_merging.budget must be one of \['clip', 'frame'\]"
    ):
        create_model("hvlm_tiny", merge_budget="video")
    with pytest.raises(ValueError, match="colour_weight and saliency_ramp_steps must be >= 0"):
        create_model("hvlm_tiny", saliency_ramp_steps=-1)
