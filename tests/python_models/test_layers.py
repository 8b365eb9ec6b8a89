import pytest
import torch

from python_models import AttentionBlock, DropPath, Mlp, PatchEmbed, RMSNorm


def test_patch_embed_tokens_are_row_major_patches():
    embed = PatchEmbed(img_size=8, patch_size=4, in_chans=3, embed_dim=5)
    images = torch.randn(2, 3, 8, 8)
    tokens = embed(images)
    assert tokens.shape == (2, 4, 5)
    top_right = torch.nn.functional.conv2d(images[:, :, :4, 4:], embed.proj.weight, embed.proj.bias).flatten(1)
    torch.testing.assert_close(tokens[:, 1], top_right)


def test_patch_embed_rejects_other_sizes():
    with pytest.raises(ValueError, match="img_size must be divisible by patch_size"):
        PatchEmbed(img_size=10, patch_size=4)
    with pytest.raises(ValueError, match="expected images of 8x8"):
        PatchEmbed(img_size=8, patch_size=4)(torch.randn(1, 3, 12, 12))


def test_rms_norm_matches_formula_and_keeps_dtype():
    norm = RMSNorm(6)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 6)
    expected = x / x.pow(2).mean(-1, keepdim=True).add(norm.eps).sqrt() * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training():
    drop = DropPath(0.5)
    x = torch.ones(64, 3, 4)
    assert torch.equal(drop.eval()(x), x)
    out = drop.train()(x)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)


def test_mlp_and_attention_block_shapes_and_gradients():
    block = AttentionBlock(dim=16, num_heads=4)
    x = torch.randn(2, 7, 16, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    assert Mlp(16, 32)(x).shape == x.shape
