import pytest
import torch
from torch import nn

from python_models import create_model
from python_models.adapters.lora import (
    LoraConfig,
    LoraLinear,
    adapter_names,
    adapter_weights,
    count_parameters,
    inject_lora,
    load_lora_state_dict,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    set_active_adapter,
    unmerge_lora,
    use_adapter,
)

TINY = dict(num_frames=4, img_size=32, embed_dim=24, num_heads=2, depth=2, num_classes=5)


class ToyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(12, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.fc2(self.act(self.fc1(x))))


def tiny_vlm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("hvlm_tiny", **TINY).eval()


def clips(batch: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (batch, 4, 3, 32, 32), dtype=torch.uint8, generator=generator)


def randomise_lora(model: nn.Module, seed: int = 2) -> None:
    """Non-zero B for every adapter, so the updates really change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in lora_state_dict(model).items():
            if ".lora_B." in name:
                weight.copy_(0.1 * torch.randn(weight.shape, generator=generator))


def test_a_fresh_adapter_changes_nothing():
    model, x = tiny_vlm(), clips()
    before = model(x)
    names = inject_lora(model, LoraConfig())
    assert len(names) == 4 * TINY["depth"]  # qkv, proj, fc1, fc2 per block; not the head
    assert all(isinstance(model.get_submodule(name), LoraLinear) for name in names)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_a_trained_adapter_changes_the_outputs_and_only_while_active():
    torch.manual_seed(0)
    model, x = ToyMLP(), torch.randn(16, 6)
    before = model(x).detach()
    inject_lora(model, LoraConfig(r=2, lora_alpha=2, target_modules=("fc1", "fc2")))
    mark_only_lora_trainable(model, also=())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(20):
        loss = (model(x) - 1).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (model(x) - before).abs().max() > 0.1
    with use_adapter(model, None):
        torch.testing.assert_close(model(x), before)
    assert model.fc1.active_adapter == "default"


def test_merge_and_unmerge_keep_the_outputs():
    model, x = tiny_vlm(), clips()
    base = model(x)
    inject_lora(model, LoraConfig(), adapters=("a", "b"))
    randomise_lora(model)
    set_active_adapter(model, "b")
    unmerged = model(x)
    assert (unmerged - base).abs().max() > 1e-3
    merge_lora(model, "b")
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="already merged"):
        merge_lora(model, "a")
    unmerge_lora(model)
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)
    with use_adapter(model, None):
        torch.testing.assert_close(model(x), base, rtol=1e-5, atol=1e-5)


def test_adapters_save_and_load_into_a_fresh_model():
    model, x = tiny_vlm(), clips()
    inject_lora(model, LoraConfig(r=4), adapters=("sports", "news"))
    randomise_lora(model)
    state = lora_state_dict(model)
    assert state and all(".lora_A." in name or ".lora_B." in name for name in state)
    assert set(state) <= set(model.state_dict())
    assert set(lora_state_dict(model, ["news"])) == {n for n in state if ".news." in n}

    fresh = tiny_vlm()  # same base weights
    inject_lora(fresh, LoraConfig(r=4), adapters=("sports", "news"))
    assert (fresh(x) - model(x)).abs().max() > 1e-3
    load_lora_state_dict(fresh, state)
    for adapter in ("sports", "news"):
        with use_adapter(model, adapter), use_adapter(fresh, adapter):
            torch.testing.assert_close(fresh(x), model(x))

    with pytest.raises(KeyError, match="missing keys .*unexpected keys .*extra"):
        load_lora_state_dict(fresh, {**lora_state_dict(model, ["news"]), "extra": x})


def test_per_sample_weights_equal_each_adapters_output_for_one_hot_rows():
    model, x = tiny_vlm(), clips(batch=3)
    inject_lora(model, LoraConfig(), adapters=("a", "b"))
    randomise_lora(model)
    assert adapter_names(model) == ["a", "b"]
    per_adapter = {}
    for adapter in ("a", "b"):
        with use_adapter(model, adapter):
            per_adapter[adapter] = model(x)
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    with adapter_weights(model, one_hot):
        mixed = model(x)
    expected = torch.stack([per_adapter[a][i] for i, a in enumerate("aba")])
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)
    with adapter_weights(model, torch.zeros(3, 2)), use_adapter(model, None):
        torch.testing.assert_close(model(x), model(x))
    with pytest.raises(RuntimeError, match="per-sample adapter weights are set"):
        with adapter_weights(model, one_hot):
            merge_lora(model, "a")
    with pytest.raises(ValueError, match=r"\(batch, 2\) tensor over the adapters \['a', 'b'\]"):
        with adapter_weights(model, torch.ones(3)):
            pass


def test_per_sample_weights_mix_linearly_over_middle_dimensions():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(5, 3), LoraConfig(r=2), adapters=("a", "b"))
    for up in layer.lora_B.values():
        nn.init.normal_(up.weight)
    x, weights = torch.randn(2, 7, 5), torch.tensor([[0.25, 0.75], [2.0, -1.0]])
    layer.mixing_names, layer.mixing_weights = ("a", "b"), weights
    expected = layer.base_layer(x) + sum(
        weights[:, i, None, None] * layer.update(name, x) for i, name in enumerate("ab")
    )
    torch.testing.assert_close(layer(x), expected)


def test_mark_only_lora_trainable_leaves_gradients_only_where_asked():
    model, x = tiny_vlm(), clips()
    inject_lora(model, LoraConfig(), adapters=("a", "b"))
    randomise_lora(model)
    mark_only_lora_trainable(model, adapters="a", also="head")  # a lone name, not its letters
    model(x).sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n in lora_state_dict(model, ["a"])} | {"head.weight", "head.bias"}
    assert all(
        ".lora_" in n or n.startswith("head.")
        for n, p in model.named_parameters()
        if p.requires_grad
    )


def test_trainable_share_of_hvlm_tiny_with_rank_8(capsys):
    model = create_model("hvlm_tiny")
    inject_lora(model, LoraConfig(r=8))
    mark_only_lora_trainable(model)
    trainable, total = count_parameters(model)
    # per block: qkv 8·(96 + 288), proj 8·(96 + 96), fc1 8·(96 + 192), fc2 8·(192 + 96); head 96·12 + 12
    assert trainable == 4 * 8 * (384 + 192 + 288 + 288) + 96 * 12 + 12
    with capsys.disabled():
        print(f"\nhvlm_tiny, LoRA r 8 + head: {trainable:,} of {total:,} ({trainable / total:.2%})")
    assert trainable / total < 0.05


def test_adding_adapters_to_an_injected_model_and_unknown_names():
    model = ToyMLP()
    first = inject_lora(model, LoraConfig(target_modules=("fc1",)))
    second = inject_lora(model, LoraConfig(r=2, target_modules=("re:fc[12]",)), adapters=("x",))
    assert first == ["fc1"] and second == ["fc1", "fc2"]
    assert adapter_names(model) == ["default", "x"]
    assert list(model.fc1.lora_A) == ["default", "x"] and list(model.fc2.lora_A) == ["x"]
    assert model.fc1.lora_A["x"].out_features == 2 and model.fc1.active_adapter == "x"
    with pytest.raises(
        KeyError, match=r"unknown LoRA adapter\(s\) \['nope'\]; the model has \['default', 'x'\]"
    ):
        set_active_adapter(model, "nope")
    with pytest.raises(ValueError, match="already has adapter"):
        inject_lora(model, LoraConfig(target_modules=("fc2",)), adapters=("x",))


def test_patterns_match_whole_name_components_and_report_misses():
    model = ToyMLP()
    with pytest.raises(ValueError, match=r"\['c1'\] match no nn.Linear .*\['fc1', 'fc2', 'head'\]"):
        inject_lora(model, LoraConfig(target_modules=("c1",)))
    with pytest.raises(ValueError, match="match no nn.Linear"):
        inject_lora(model, LoraConfig(target_modules=("re:fc",)))  # full match only
    assert inject_lora(model, LoraConfig(target_modules="head")) == ["head"]


@pytest.mark.parametrize(
    "field, kwargs",
    [
        ("r must be an integer >= 1, got 0", dict(r=0)),
        ("lora_alpha must be > 0, got -1", dict(lora_alpha=-1)),
        (r"lora_dropout must be in \[0, 1\), got 1", dict(lora_dropout=1)),
        ("target_modules must be a non-empty sequence", dict(target_modules=())),
        ("target_modules must be a non-empty sequence", dict(target_modules=("qkv", "re:"))),
        ("not a valid regular expression", dict(target_modules=("re:(",))),
    ],
)
def test_config_validation_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        LoraConfig(**kwargs)
    assert LoraConfig(r=4, lora_alpha=8).scaling == 2.0
