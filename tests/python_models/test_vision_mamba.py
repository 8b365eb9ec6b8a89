import pytest
import torch

from python_models import (
    AttentionBlock,
    MambaBlock,
    VisionMamba,
    create_model,
    list_models,
    register_model,
)
from python_models.mamba import HybridBlock


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, dim, params_m",
    [("vim_tiny", 192, 7.0), ("vim_small", 384, 26.0), ("vim_base", 768, 98.0)],
)
def test_imagenet_presets_match_the_paper(name, dim, params_m):
    with torch.device("meta"):
        model = create_model(name)
    assert (
        model.embed_dim,
        len(model.blocks),
        model.patch_embed.patch_size,
        model.patch_embed.img_size,
    ) == (dim, 24, 16, 224)
    assert model.blocks[0].mixer.forward_ssm.d_state == 16
    assert model.blocks[0].mixer.d_inner == 2 * dim
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(params_m, rel=0.1)  # Vim's reported sizes: 7 M, 26 M, 98 M


def test_vim_tiny_forward_shape():
    model = create_model("vim_tiny", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 7)


@pytest.mark.parametrize("name", ["vim_tiny_cifar", "vim_small_cifar"])
def test_cifar_presets(name):
    with torch.device("meta"):
        model = create_model(name)
    assert (
        model.patch_embed.img_size,
        model.patch_embed.patch_size,
        model.patch_embed.num_patches,
    ) == (32, 4, 64)
    assert len(model.blocks) < 24


def test_overrides_and_registry():
    model = create_model("vim_tiny_cifar", embed_dim=32, depth=2, num_classes=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert {"vim_tiny", "vim_small", "vim_base", "vim_tiny_cifar"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")


def test_register_model_decorator(monkeypatch):
    from python_models import registry

    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model
    def tiny_test_model(**overrides):
        return VisionMamba(
            **{"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 1, **overrides}
        )

    assert create_model("tiny_test_model", num_classes=2).head.out_features == 2
    with pytest.raises(ValueError, match="already registered"):
        register_model(tiny_test_model)


def test_class_token_sits_in_the_middle():
    model = VisionMamba(img_size=16, patch_size=4, embed_dim=8, depth=1, num_classes=0)
    tokens = torch.randn(2, 16, 8)
    x, cls_index = model.encode(tokens)
    assert cls_index == 8 and x.shape == (2, 17, 8)


def test_hybrid_places_attention_blocks():
    model = VisionMamba(
        img_size=16,
        patch_size=4,
        embed_dim=12,
        depth=4,
        attn_layers=[1, 3],
        num_heads=3,
        num_classes=5,
    )
    kinds = [type(block) for block in model.blocks]
    assert kinds == [MambaBlock, AttentionBlock, MambaBlock, AttentionBlock]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    with pytest.raises(ValueError, match="attn_layers must lie in"):
        VisionMamba(img_size=16, patch_size=4, embed_dim=12, depth=2, attn_layers=[2])


@pytest.mark.parametrize("block_type", ["mamba", "hybrid"])
@pytest.mark.parametrize("use_cls_token, pool", [(True, "cls"), (True, "mean"), (False, "mean")])
def test_gradients_reach_every_parameter(block_type, use_cls_token, pool):
    torch.manual_seed(0)
    model = VisionMamba(
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=3,
        block_type=block_type,
        attn_layers=[1],
        num_heads=2,
        num_classes=4,
        use_cls_token=use_cls_token,
        pool=pool,
    )
    loss = torch.nn.functional.cross_entropy(
        model(torch.randn(3, 3, 16, 16)), torch.tensor([0, 1, 2])
    )
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_without_a_class_token_the_blocks_see_only_patches_and_pool_the_mean():
    model = VisionMamba(
        img_size=16, patch_size=4, embed_dim=8, depth=1, num_classes=3, use_cls_token=False
    )
    assert model.cls_token is None and model.pos_embed.shape == (1, 16, 8)
    assert model.pool == "mean"
    tokens = torch.randn(2, 16, 8)
    x, cls_index = model.encode(tokens)
    assert cls_index is None and x.shape == (2, 16, 8)
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(
        model.forward_head(model.forward_features(images), pre_logits=True),
        model.encode(model.embed(images))[0].mean(dim=1),
    )


def test_bad_block_and_pool_settings_are_named():
    with pytest.raises(ValueError, match="block_type must be one of .*, got 'ssm'"):
        VisionMamba(img_size=16, patch_size=4, embed_dim=8, depth=1, block_type="ssm")
    with pytest.raises(ValueError, match="pool='cls' needs use_cls_token=True, got False"):
        VisionMamba(
            img_size=16, patch_size=4, embed_dim=8, depth=1, use_cls_token=False, pool="cls"
        )


HYBRID_PRESETS = [
    ("vim_hybrid_tiny", 96, 6, 2),
    ("vim_hybrid_small", 384, 12, 6),
    ("vim_hybrid_base", 768, 12, 12),
    ("vim_hybrid_large", 1024, 24, 16),
]


@pytest.mark.parametrize("name, dim, depth, heads", HYBRID_PRESETS)
def test_hybrid_presets_follow_the_design_table(name, dim, depth, heads):
    with torch.device("meta"):
        model = create_model(name, num_classes=10)
        mamba_only = create_model(name, num_classes=10, block_type="mamba")
    assert (model.embed_dim, len(model.blocks), model.patch_embed.patch_size) == (dim, depth, 4)
    assert model.patch_embed.img_size == 32
    assert all(isinstance(block, HybridBlock) for block in model.blocks)
    assert {block.attn.num_heads for block in model.blocks} == {heads}
    # Each hybrid block is a Mamba block plus attention (qkv and out projections with biases)
    # and its two mixing logits.
    attention = 4 * dim * dim + 4 * dim
    count = parameter_count(model)
    print(f"{name}: {count} parameters ({count / 1e6:.2f} M)")
    assert count == parameter_count(mamba_only) + depth * (attention + 2)


def test_hybrid_tiny_trains_a_step_and_moves_its_mixing_weights():
    torch.manual_seed(0)
    model = create_model("vim_hybrid_tiny", num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logits = model(torch.randn(2, 3, 32, 32))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 7]))
    loss.backward()
    for block in model.blocks:
        assert block.mix_logits.grad.abs().sum() > 0
    optimizer.step()
    assert torch.isfinite(loss)
    for block in model.blocks:
        assert not torch.equal(block.mix_weights().detach(), torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("name", ["vim_hybrid_small", "vim_hybrid_base"])
def test_wide_hybrid_presets_classify_an_image(name):
    """A forward pass of one image; vim_hybrid_large (270 M parameters, 1 GB of weights, about
    10 s to initialise on a CPU) is checked above on the meta device only: its blocks are these
    at a larger width and depth."""
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
