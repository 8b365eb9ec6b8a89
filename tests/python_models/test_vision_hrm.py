import pytest
import torch
import torch.nn.functional as F

from python_models import VisionHRM, create_model
from python_models.layers import swiglu_hidden_dim

TINY = dict(
    img_size=16, patch_size=4, hidden_dim=16, num_heads=2, h_layers=1, l_layers=2, num_classes=3
)


def hrm_params(
    img_size, patch_size, in_chans, num_classes, hidden_dim, h_layers, l_layers, mlp_ratio=4.0
) -> int:
    """The parameter count of VisionHRM, layer by layer (the initial states are buffers)."""
    d = hidden_dim
    tokens = (img_size // patch_size) ** 2 + 1
    embedding = (
        in_chans * d * patch_size**2 + d + d + d + tokens * d
    )  # conv, its bias, norm, class token, positions
    block = (
        4 * d * d + 3 * d * swiglu_hidden_dim(d, mlp_ratio) + 2 * d
    )  # attention, SwiGLU, two RMSNorms
    head = d * num_classes + num_classes
    return embedding + (h_layers + l_layers) * block + head


@pytest.mark.parametrize("name, classes", [("hrm_base_cifar10", 10), ("hrm_base_cifar100", 100)])
def test_presets_have_hrm_defaults_and_the_formula_parameter_count(name, classes):
    model = create_model(name)
    count = sum(p.numel() for p in model.parameters())
    print(f"{name}: {count} parameters ({count / 1e6:.2f} M)")
    assert count == hrm_params(32, 4, 3, classes, 512, 4, 4)
    assert (model.hidden_dim, model.h_cycles, model.l_cycles) == (512, 2, 2)
    assert (len(model.h_module.blocks), len(model.l_module.blocks)) == (4, 4)
    assert model.h_module.blocks[0].attn.num_heads == 8 and model.patch_embed.num_patches == 64


def test_forward_shapes_and_class_token_features():
    model = VisionHRM(**TINY).eval()
    images = torch.randn(2, 3, 16, 16)
    assert model(images).shape == (2, 3)
    assert model.embed(images).shape == (2, 17, 16)
    headless = VisionHRM(**{**TINY, "num_classes": 0}).eval()
    assert headless(images).shape == (2, 16)


def test_features_are_the_high_level_tokens_of_each_segment_while_training():
    torch.manual_seed(0)
    model = VisionHRM(**TINY, segments=2).train()
    images = torch.randn(2, 3, 16, 16)
    features = model.forward_features(images)
    assert features.shape == (2, 2, 17, 16)  # segments, batch, class token + patches, hidden
    assert model.forward_head(features, pre_logits=True).shape == (2, 2, 16)
    assert model.eval().forward_features(images).shape == (2, 17, 16)


def record_updates(model: VisionHRM) -> list[tuple[str, bool]]:
    """Which module runs, in order, and whether it builds a graph."""
    calls = []
    for name in ("h_module", "l_module"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: calls.append((name[0].upper(), out.requires_grad))
        )
    return calls


@pytest.mark.parametrize("h_cycles, l_cycles", [(1, 1), (2, 2), (2, 3), (3, 1)])
def test_update_schedule_and_one_step_gradient(h_cycles, l_cycles):
    model = VisionHRM(**TINY, h_cycles=h_cycles, l_cycles=l_cycles).train()
    calls = record_updates(model)
    model(torch.randn(2, 3, 16, 16))
    expected = [("L", False)] * (l_cycles - 1) + [("L", False), ("H", False)]
    expected = expected * h_cycles
    expected[-2:] = [("L", True), ("H", True)]  # only the last L and H updates keep a graph
    assert calls == expected


def test_full_backprop_baseline_keeps_every_graph():
    model = VisionHRM(**TINY, h_cycles=2, l_cycles=2, one_step_gradient=False).train()
    calls = record_updates(model)
    model(torch.randn(2, 3, 16, 16))
    assert calls == [("L", True), ("L", True), ("H", True), ("L", True), ("L", True), ("H", True)]


def saved_bytes(model: VisionHRM, images: torch.Tensor) -> int:
    """Bytes of the tensors the forward saves for backward (the graph's memory)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images).sum().backward()
    return total


def test_graph_memory_does_not_grow_with_the_cycles():
    images = torch.randn(2, 3, 16, 16)
    graph = {}
    for cycles in [(1, 2), (2, 2), (4, 4)]:
        torch.manual_seed(0)
        graph[cycles] = saved_bytes(
            VisionHRM(**TINY, h_cycles=cycles[0], l_cycles=cycles[1]).train(), images
        )
    assert graph[(1, 2)] == graph[(2, 2)] == graph[(4, 4)] > 0
    full = saved_bytes(
        VisionHRM(**TINY, h_cycles=4, l_cycles=4, one_step_gradient=False).train(), images
    )
    assert full > 5 * graph[(4, 4)]  # 16 L and 4 H updates against 1 and 1


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = VisionHRM(**TINY).train()
    F.cross_entropy(model(torch.randn(3, 3, 16, 16)), torch.tensor([0, 1, 2])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(not buffer.requires_grad for buffer in model.buffers())


def test_deep_supervision_returns_each_segment_and_carries_the_state():
    torch.manual_seed(0)
    model = VisionHRM(**TINY, segments=3)
    images = torch.randn(2, 3, 16, 16)
    logits = model.train()(images)
    assert logits.shape == (3, 2, 3)
    assert not torch.allclose(
        logits[0], logits[1]
    )  # the second segment starts from the first's state
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), logits[-1].detach())
    graph_one = saved_bytes(VisionHRM(**TINY).train(), images)
    assert saved_bytes(model.train(), images) == pytest.approx(
        3 * graph_one, rel=0.05
    )  # detached between segments


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="expected h_cycles >= 1, got 0"):
        VisionHRM(**TINY, h_cycles=0)
    with pytest.raises(ValueError, match="expected segments >= 1, got -1"):
        VisionHRM(**TINY, segments=-1)
    with pytest.raises(ValueError, match="dim must be divisible by num_heads, got 16 and 3"):
        VisionHRM(**{**TINY, "num_heads": 3})
