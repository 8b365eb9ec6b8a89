"""HierarchicalVLM: presets, every attention type end to end, token merging (class token kept,
shapes restored by unmerge, the random baseline), gradients, the reference switch."""

import dataclasses

import pytest
import torch

import hvision_ext
from python_models import create_model
from python_models.video import MIXERS, merge_ratio_at, reduce_runs
from python_models.video.merging import motion_importance

# Patch 8 and tubelet 2 on 4 frames of 32²: 2 frames of 16 tokens, enough to merge.
SMALL = dict(
    num_frames=4,
    img_size=32,
    patch_size=8,
    tubelet_size=2,
    embed_dim=32,
    depth=2,
    num_heads=2,
    num_classes=5,
)


def clips(batch: int = 2, frames: int = 4, side: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, frames, 3, side, side), generator=gen, dtype=torch.uint8)


@pytest.mark.parametrize("attention", sorted(MIXERS))
@pytest.mark.parametrize("merge_ratio", [0.0, 0.5])
def test_every_variant_gives_logits_and_gradients_to_every_parameter(attention, merge_ratio):
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", attention=attention, merge_ratio=merge_ratio, **SMALL)
    logits = model(clips())
    assert logits.shape == (2, 5)
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    # The head reads the mean patch token; under cross_memory the tokens read only the memory,
    # so the class token reaches nothing.
    assert missing == (["cls_token"] if attention == "cross_memory" else [])


def test_proportional_attention_changes_only_merged_runs():
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", merge_ratio=0.5, **SMALL).eval()
    plain = model(clips())
    model.merging = dataclasses.replace(model.merging, proportional_attention=True)
    assert not torch.allclose(model(clips()), plain)
    model.set_merge_ratio(0.0)
    unmerged = model(clips())
    model.merging = dataclasses.replace(model.merging, proportional_attention=False)
    torch.testing.assert_close(model(clips()), unmerged)


def test_uint8_and_normalised_float_clips_agree():
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", **SMALL).eval()
    x = clips()
    normalised = (x.float() / 255 - model.pixel_mean) / model.pixel_std
    torch.testing.assert_close(model(x), model(normalised))


def test_forward_features_layout_and_unmerge():
    torch.manual_seed(0)
    model = create_model(
        "hvlm_tiny", merge_ratio=0.5, merge_at=[0], merge_budget="frame", **SMALL
    ).eval()
    x = clips()
    layout = model.feature_layout(x.shape)
    assert (layout.prefix, layout.frames) == (1, 2)  # tubelet 2
    merged, merged_layout = model.forward_tokens(x)
    assert merged.shape == (2, 1 + 2 * 8, 32)  # 16 patches per frame, half merged away
    assert layout.per_frame(merged.shape[1]) == 8 and merged_layout.equal_runs
    full = model.forward_features(x, unmerge=True)
    assert full.shape == (2, 1 + 2 * 16, 32)
    torch.testing.assert_close(full[:, 0], merged[:, 0])


def test_positions_resize_to_other_clip_shapes():
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", **SMALL).eval()
    assert model(clips(frames=8, side=48)).shape == (2, 5)


def equal_runs(batch: int, frames: int, tokens: int) -> torch.Tensor:
    return torch.full((batch, frames), tokens)


def test_merging_keeps_the_class_token_and_masses():
    torch.manual_seed(0)
    patches = torch.randn(2, 3 * 10, 8)
    size = torch.ones(2, 30)
    importance = torch.rand(2, 30)
    counts = equal_runs(2, 3, 10)
    merged, merged_size, assign, kept = reduce_runs(
        patches, size, importance, counts, torch.full_like(counts, 4)
    )
    assert merged.shape == (2, 3 * 6, 8) and torch.equal(kept, equal_runs(2, 3, 6))
    torch.testing.assert_close(merged_size.view(2, 3, 6).sum(-1), torch.full((2, 3), 10.0))
    # Each frame's tokens stay in its own run of the output.
    assert assign.shape == (2, 30)
    assert torch.equal(
        assign.view(2, 3, 10).div(6, rounding_mode="floor"),
        torch.arange(3).view(1, 3, 1).expand(2, 3, 10),
    )
    model = create_model("hvlm_tiny", merge_ratio=0.5, merge_at=[0], **SMALL).eval()
    cls = model.forward_features(clips())[:, 0]
    with torch.no_grad():
        model.cls_token.add_(1.0)
    assert not torch.allclose(model.forward_features(clips())[:, 0], cls)


def test_random_drop_keeps_as_many_tokens_in_order():
    patches = torch.arange(2 * 2 * 6, dtype=torch.float32).view(2, 12, 1)
    counts = equal_runs(2, 2, 6)
    kept, size, assign, _ = reduce_runs(
        patches, torch.ones(2, 12), None, counts, torch.full_like(counts, 2), mode="random"
    )
    assert kept.shape == (2, 8, 1) and torch.equal(size, torch.ones(2, 8))
    rows = kept.view(4, 4)
    assert torch.all(rows[:, 1:] > rows[:, :-1])
    assert assign.shape == (2, 12) and assign.max() == 7


def test_important_tokens_survive_merging():
    """Identical tokens: without importance the first A tokens merge; a large importance on
    them moves the merge elsewhere."""
    patches, size = torch.ones(1, 8, 4), torch.ones(1, 8)
    counts, remove = equal_runs(1, 1, 8), equal_runs(1, 1, 1)
    _, _, plain, _ = reduce_runs(patches, size, None, counts, remove)
    importance = torch.zeros(1, 8)
    importance[0, 0] = 10.0
    _, _, guided, _ = reduce_runs(patches, size, importance, counts, remove, importance_weight=1.0)
    assert plain[0, 0] == plain[0, 1]  # token 0 merged into token 1
    assert guided[0, 0] != guided[0, 1]


@pytest.mark.parametrize("mode", ["motion", "similarity"])
def test_class_attention_adds_to_the_merge_importance(mode):
    """The merge before block 1 uses motion importance (if any) plus the weighted class-token
    attention of that block, divided by its maximum per frame; motion alone is carried on. (At
    ratio 0.25 a merge takes 4 of a frame's 8 A tokens, so the importance decides which.)"""
    torch.manual_seed(0)
    model = create_model(
        "hvlm_tiny", merge_ratio=0.25, merge_mode=mode, class_attention_weight=2.0, **SMALL
    ).eval()
    block, size, counts = model.blocks[1], torch.ones(2, 32), equal_runs(2, 2, 16)
    remove = torch.full_like(counts, 4)
    with torch.no_grad():  # a peaked attention: the initial one is nearly uniform
        block.attn.qkv.weight.normal_(0, 1)
    x = torch.randn(2, 1 + 2 * 16, 32)
    motion = torch.rand(2, 32) if mode == "motion" else None
    attention = block.attn.class_attention(block.norm1(x))[:, 1:].view(2, 2, 16)
    scores = (2.0 * attention / attention.amax(-1, keepdim=True)).view(2, 32)
    scores = scores if motion is None else motion + scores
    expected = reduce_runs(x[:, 1:], size, scores, counts, remove)
    merged, _, carried, _, assign = model._reduce(x, size, motion, counts, None, block)
    torch.testing.assert_close(merged[:, 1:], expected[0])
    assert torch.equal(assign, expected[2]) and torch.equal(merged[:, 0], x[:, 0])
    without_attention = reduce_runs(x[:, 1:], size, motion, counts, remove)
    assert not torch.equal(assign, without_attention[2])
    if motion is None:
        assert carried is None
    else:
        merged_motion = motion.new_zeros(2, 24).scatter_reduce(
            -1, assign, motion, "amax", include_self=False
        )
        assert torch.equal(carried, merged_motion)


def test_merge_ratio_schedule_ramps_to_the_target():
    ratios = [merge_ratio_at(step, 100, 0.5, 0.2) for step in (0, 9, 19, 50)]
    assert ratios == pytest.approx([0.025, 0.25, 0.5, 0.5])
    assert merge_ratio_at(0, 100, 0.5, 0.0) == 0.5


@pytest.mark.parametrize("attention", ["strided", "cross_memory", "mamba"])
def test_the_reference_switch_gives_the_same_model_output(attention):
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", attention=attention, merge_ratio=0.5, **SMALL).eval()
    x = clips()
    with hvision_ext.use_reference():
        expected = model(x)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", attention="performer", **SMALL)
    x = clips()
    gradients = []
    for enabled in (False, True):
        model.set_grad_checkpointing(enabled)
        model.zero_grad()
        torch.manual_seed(1)
        model(x).square().mean().backward()
        gradients.append([p.grad.clone() for p in model.parameters()])
    for plain, checkpointed in zip(*gradients):
        torch.testing.assert_close(checkpointed, plain)


def test_bad_settings_name_the_key_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"attention.type must be one of \['cross_memory'"):
        create_model("hvlm_tiny", attention="sparse")
    with pytest.raises(ValueError, match=r"token_merging.mode must be one of \['motion'"):
        create_model("hvlm_tiny", merge_mode="saliency")
    with pytest.raises(ValueError, match=r"target_compression_ratio must be in \[0, 1\), got 1.5"):
        create_model("hvlm_tiny", merge_ratio=1.5)
    with pytest.raises(ValueError, match="merge_at must hold distinct block indices in \\[0, 4\\)"):
        create_model("hvlm_tiny", merge_at=[4])
    with pytest.raises(
        ValueError, match=r"class_attention_weight needs attention.type in \['full'"
    ):
        create_model("hvlm_tiny", attention="mamba", class_attention_weight=1.0)
    with pytest.raises(ValueError, match="class_attention_weight must be >= 0, got -1"):
        create_model("hvlm_tiny", class_attention_weight=-1.0)
    with pytest.raises(ValueError, match=r"motion_source must be one of \['frame_difference'"):
        create_model("hvlm_tiny", motion_source="flow")
    with pytest.raises(ValueError, match="do not split into tubelets"):
        create_model("hvlm_tiny", **SMALL)(clips(frames=3))


def test_optical_flow_importance_finds_the_moving_patch():
    clips = torch.zeros(1, 3, 1, 32, 32, dtype=torch.uint8)
    for t in range(3):
        clips[0, t, 0, 8:16, 2 + 3 * t : 10 + 3 * t] = 255  # a square moving right in row 1
    scores = motion_importance(clips, 8, 0.5, "optical_flow")
    assert scores.shape == (1, 3, 16)
    assert scores[0, 1].argmax() // 4 == 1 and scores[0, 1].max() == pytest.approx(1, abs=1e-4)
    assert scores[0, 1, 12:].max() < 0.1  # the still bottom row


def test_optical_flow_merging_runs_in_the_model():
    torch.manual_seed(0)
    model = create_model("hvlm_tiny", merge_ratio=0.5, motion_source="optical_flow", **SMALL).eval()
    assert model(clips()).shape == (2, 5)
