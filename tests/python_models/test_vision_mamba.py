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


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_gradients_reach_every_parameter(pool):
    torch.manual_seed(0)
    model = VisionMamba(
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=3,
        attn_layers=[1],
        num_heads=2,
        num_classes=4,
        pool=pool,
    )
    loss = torch.nn.functional.cross_entropy(
        model(torch.randn(3, 3, 16, 16)), torch.tensor([0, 1, 2])
    )
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
