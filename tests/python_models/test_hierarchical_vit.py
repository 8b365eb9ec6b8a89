import pytest
import torch
import torch.nn.functional as F

import hvision_ext
from python_models import ConvStem, GridPooling, HierarchicalViT, create_model


def block_params(dim: int, mlp_ratio: float) -> int:
    hidden = int(dim * mlp_ratio)
    norms = 2 * 2 * dim
    attention = (3 * dim * dim + 3 * dim) + (dim * dim + dim)
    mlp = (dim * hidden + hidden) + (hidden * dim + dim)
    return norms + attention + mlp


def hvit_params(
    img_size,
    patch_size,
    in_chans,
    num_classes,
    embed_dims,
    depths,
    mlp_ratio=4.0,
    global_tokens=0,
    stem="overlapping",
) -> int:
    """The parameter count of HierarchicalViT, layer by layer."""
    first = embed_dims[0]
    # PiT's stem reaches half a patch past each side; the patch stem's kernel is the patch
    kernel = patch_size + 2 * (patch_size // 2) if stem == "overlapping" else patch_size
    stem = in_chans * first * kernel**2 + first + 2 * first
    positions = (img_size // patch_size) ** 2 * first + global_tokens * first
    blocks = sum(depth * block_params(dim, mlp_ratio) for dim, depth in zip(embed_dims, depths))
    pools = sum(9 * a + a + a * b + b for a, b in zip(embed_dims[:-1], embed_dims[1:]))
    head = 2 * embed_dims[-1] + embed_dims[-1] * num_classes + num_classes
    return stem + positions + blocks + pools + head


@pytest.mark.parametrize("stem", ["overlapping", "patch"])
def test_cifar100_preset_parameter_count_matches_the_formula(stem):
    model = create_model("hvit_tiny_cifar100", stem=stem)
    count = sum(p.numel() for p in model.parameters())
    expected = hvit_params(32, 2, 3, 100, (64, 128, 256), (2, 6, 4), stem=stem)
    print(f"hvit_tiny_cifar100, {stem} stem: {count} parameters ({count / 1e6:.2f} M)")
    assert count == expected
    assert [len(stage) for stage in model.stages] == [2, 6, 4]
    assert [stage[0].attn.num_heads for stage in model.stages] == [2, 4, 8]


def test_stages_halve_the_grid_and_widen_the_tokens():
    model = HierarchicalViT(
        img_size=32,
        patch_size=2,
        embed_dims=(8, 16, 24),
        depths=(1, 1, 1),
        num_heads=(1, 2, 3),
        num_classes=5,
    )
    shapes = []
    for module in model.stages:
        module.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    images = torch.randn(2, 3, 32, 32)
    assert model(images).shape == (2, 5)
    assert shapes == [(2, 256, 8), (2, 64, 16), (2, 16, 24)]
    assert model.forward_features(images).shape == (2, 16, 24)  # the last stage's tokens


@pytest.mark.parametrize("side, pooled_side", [(16, 8), (7, 4), (1, 1)])
def test_grid_pooling_halves_the_grid(side, pooled_side):
    pool = GridPooling(6, 10)
    tokens = torch.randn(3, side * side, 6)
    pooled, new_side = pool(tokens, side)
    assert new_side == pooled_side and pooled.shape == (3, pooled_side**2, 10)
    grid = tokens.transpose(1, 2).reshape(3, 6, side, side)
    expected = pool.pointwise(
        F.conv2d(grid, pool.depthwise.weight, pool.depthwise.bias, stride=2, padding=1, groups=6)
    )
    torch.testing.assert_close(pooled, expected.flatten(2).transpose(1, 2))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = HierarchicalViT(
        img_size=16,
        patch_size=2,
        embed_dims=(8, 16),
        depths=(1, 2),
        num_heads=(2, 2),
        num_classes=4,
        local_window=4,
        global_tokens=2,
    )
    F.cross_entropy(model(torch.randn(3, 3, 16, 16)), torch.tensor([0, 1, 2])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_local_first_stage_matches_the_reference_and_is_dense_afterwards():
    torch.manual_seed(0)
    model = HierarchicalViT(
        img_size=16,
        patch_size=2,
        embed_dims=(8, 16),
        depths=(1, 1),
        num_heads=(2, 2),
        num_classes=3,
        local_window=8,
        global_tokens=1,
    ).eval()
    assert (model.stages[0][0].attn.window, model.stages[0][0].attn.num_global) == (8, 1)
    assert model.stages[1][0].attn.window is None
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        kernels = model(images)
        with hvision_ext.use_reference():
            reference = model(images)
    torch.testing.assert_close(kernels, reference, rtol=1e-4, atol=1e-5)


def test_a_window_covering_the_grid_is_dense_attention():
    torch.manual_seed(0)
    args = dict(
        img_size=8, patch_size=2, embed_dims=(8, 8), depths=(1, 1), num_heads=(2, 2), num_classes=3
    )
    dense = HierarchicalViT(**args).eval()
    local = HierarchicalViT(**args, local_window=16).eval()
    local.load_state_dict(dense.state_dict())
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(local(images), dense(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("patch_size", [2, 4])
def test_patch_stem_cuts_non_overlapping_patches(patch_size):
    stem = ConvStem(16, patch_size, 3, 8, overlapping=False)
    conv = stem.proj
    assert (conv.kernel_size, conv.stride, conv.padding) == (
        (patch_size, patch_size),
        (patch_size, patch_size),
        (0, 0),
    )
    images = torch.randn(2, 3, 16, 16)
    tokens = stem(images)
    assert tokens.shape == (2, (16 // patch_size) ** 2, 8)
    # Changing a pixel changes only the token of its own patch.
    changed = images.clone()
    changed[:, :, 0, 0] += 1.0
    moved = (stem(changed) - tokens).abs().sum(dim=(0, 2)).nonzero().flatten()
    assert moved.tolist() == [0]


def test_overlapping_stem_reaches_into_the_neighbouring_patches():
    stem = ConvStem(16, 4, 3, 8)
    images = torch.randn(2, 3, 16, 16)
    changed = images.clone()
    changed[:, :, 0, 4] += 1.0  # first pixel of the second patch
    moved = (stem(changed) - stem(images)).abs().sum(dim=(0, 2)).nonzero().flatten()
    assert moved.tolist() == [0, 1]


def test_both_stems_give_the_same_token_grid():
    args = dict(img_size=16, patch_size=4, embed_dims=(8, 16), depths=(1, 1), num_heads=(2, 2))
    for stem in ("overlapping", "patch"):
        model = HierarchicalViT(**args, num_classes=3, stem=stem)
        assert model.patch_embed(torch.randn(1, 3, 16, 16)).shape == (1, 16, 8)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="one entry per stage, got 2, 3 and 3"):
        HierarchicalViT(embed_dims=(8, 16), depths=(1, 1, 1), num_heads=(1, 1, 1))
    with pytest.raises(ValueError, match="stem must be one of .*, got 'conv'"):
        HierarchicalViT(stem="conv")
    with pytest.raises(ValueError, match="global_tokens needs local_window"):
        HierarchicalViT(global_tokens=2)
    with pytest.raises(ValueError, match="img_size must be divisible by patch_size, got 32 and 3"):
        HierarchicalViT(patch_size=3)
    with pytest.raises(ValueError, match="expected images of 32x32, got \\(16, 16\\)"):
        create_model("hvit_tiny_cifar100", embed_dims=(8,), depths=(1,), num_heads=(1,))(
            torch.randn(1, 3, 16, 16)
        )
