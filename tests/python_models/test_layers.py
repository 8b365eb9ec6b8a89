import pytest
import torch

import hvision_ext
from python_models import (
    Attention,
    AttentionBlock,
    DropPath,
    Mlp,
    PatchEmbed,
    PostNormBlock,
    RMSNorm,
    SwiGLU,
)


def test_patch_embed_tokens_are_row_major_patches():
    embed = PatchEmbed(img_size=8, patch_size=4, in_chans=3, embed_dim=5)
    images = torch.randn(2, 3, 8, 8)
    tokens = embed(images)
    assert tokens.shape == (2, 4, 5)
    top_right = torch.nn.functional.conv2d(
        images[:, :, :4, 4:], embed.proj.weight, embed.proj.bias
    ).flatten(1)
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


def test_local_global_attention_matches_a_masked_dense_attention():
    torch.manual_seed(0)
    attention = Attention(dim=16, num_heads=2, window=3, num_global=2)
    x = torch.randn(2, 11, 16)
    q, k, v = attention.qkv(x).view(2, 11, 3, 2, 8).permute(2, 0, 3, 1, 4)
    distance = (torch.arange(11)[:, None] - torch.arange(11)[None, :]).abs()
    allowed = (distance <= 3) | (torch.arange(11)[:, None] < 2) | (torch.arange(11)[None, :] < 2)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    expected = attention.proj(dense.transpose(1, 2).reshape(2, 11, 16))
    torch.testing.assert_close(attention(x), expected, rtol=1e-4, atol=1e-5)
    with hvision_ext.use_reference():
        torch.testing.assert_close(attention(x), expected, rtol=1e-4, atol=1e-5)


def test_attention_rejects_settings_it_cannot_honour():
    with pytest.raises(ValueError, match="num_global needs a window"):
        Attention(16, 2, num_global=1)
    with pytest.raises(ValueError, match="attention dropout needs dense attention"):
        Attention(16, 2, attn_drop=0.1, window=4)
    with pytest.raises(ValueError, match="dim must be divisible by num_heads, got 16 and 3"):
        Attention(16, 3)


def test_swiglu_has_the_parameters_of_a_gelu_mlp_of_the_same_ratio():
    swiglu = SwiGLU(48, mlp_ratio=4.0)
    assert swiglu.hidden_dim == 128
    assert sum(p.numel() for p in swiglu.parameters()) == 3 * 48 * 128 == 2 * 48 * 192
    x = torch.randn(2, 5, 48)
    gate, value = swiglu.gate_value(x).chunk(2, -1)
    torch.testing.assert_close(swiglu(x), swiglu.out(torch.nn.functional.silu(gate) * value))


def test_post_norm_block_output_is_normalised():
    block = PostNormBlock(dim=16, num_heads=4)
    out = block(10 * torch.randn(2, 7, 16))
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(2, 7), rtol=1e-3, atol=1e-3)
