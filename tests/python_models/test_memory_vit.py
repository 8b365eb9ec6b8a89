import pytest
import torch
import torch.nn.functional as F

import hvision_ext
from python_models import (
    HopfieldLayer,
    LinearProbeViT,
    MemoryAugmentedViT,
    VPTDeep,
    VPTShallow,
    create_model,
)
from tests.helpers import seeded

TINY = dict(backbone_args=dict(embed_dim=24, depth=3, num_heads=3))
DIM, DEPTH, CLASSES = 24, 3, 5


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def hopfield_params(dim: int, mem_size: int, learned: bool) -> int:
    norm, query, proj, gate = 2 * dim, dim * dim + dim, dim * dim + dim, 1
    return norm + query + proj + gate + (mem_size * dim if learned else 0)


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: LinearProbeViT(num_classes=CLASSES, **TINY), DIM * CLASSES + CLASSES),
        (
            lambda: VPTShallow(num_classes=CLASSES, num_prompts=4, **TINY),
            4 * DIM + DIM * CLASSES + CLASSES,
        ),
        (
            lambda: VPTDeep(num_classes=CLASSES, num_prompts=4, **TINY),
            DEPTH * 4 * DIM + DIM * CLASSES + CLASSES,
        ),
        (
            lambda: MemoryAugmentedViT(
                num_classes=CLASSES, mem_size=7, memory_mode="learned", **TINY
            ),
            hopfield_params(DIM, 7, True) + DIM * CLASSES + CLASSES,
        ),
        (
            lambda: MemoryAugmentedViT(
                num_classes=CLASSES,
                mem_size=7,
                memory_mode="class_prototype",
                hopfield_blocks=(0, 2),
                **TINY,
            ),
            2 * hopfield_params(DIM, 7, False),
        ),
    ],
    ids=["linear_probe", "vpt_shallow", "vpt_deep", "memory_learned", "memory_prototype_x2"],
)
def test_trainable_parameters_match_the_formula(build, expected):
    model = build()
    assert trainable(model) == expected
    linear_probe = [n for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(model, LinearProbeViT):
        assert linear_probe == ["head.weight", "head.bias"]


@pytest.mark.parametrize(
    "build",
    [
        lambda: LinearProbeViT(num_classes=CLASSES, **TINY),
        lambda: VPTShallow(num_classes=CLASSES, num_prompts=2, **TINY),
        lambda: VPTDeep(num_classes=CLASSES, num_prompts=2, **TINY),
        lambda: MemoryAugmentedViT(
            num_classes=CLASSES,
            mem_size=6,
            memory_mode="learned",
            hopfield_position="after_attn",
            hopfield_blocks=(0, -1),
            **TINY,
        ),
    ],
    ids=["linear_probe", "vpt_shallow", "vpt_deep", "memory_learned"],
)
def test_frozen_backbone_gets_no_gradient_and_stays_bit_identical(build):
    torch.manual_seed(0)
    model = build()
    model.backbone.blocks[0].drop_path.drop_prob = 0.5  # eval mode must switch it off
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.weight.clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    assert not model.backbone.training
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % CLASSES
    for _ in range(3):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(model.head.weight, head_before)


def test_vpt_deep_replaces_the_prompts_at_every_block():
    model = VPTDeep(num_classes=CLASSES, num_prompts=3, **TINY).eval()
    seen = []
    for block in model.backbone.blocks:
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0][:, 1:4].clone()))
    model(torch.randn(2, 3, 32, 32))
    for index, tokens in enumerate(seen):
        torch.testing.assert_close(tokens, model.prompts[index].expand(2, -1, -1))
    bound = (6 / (3 * 4 * 4 + DIM)) ** 0.5
    assert model.prompts.abs().max() <= bound


def test_class_prototypes_return_the_class_of_a_stored_prototype_plus_noise():
    gen = seeded(0)
    layer = HopfieldLayer(
        32, mem_size=10, num_heads=2, beta=0.5, mode="class_prototype", num_classes=8
    )
    prototypes = torch.randn(8, 32, generator=gen)
    labels = torch.arange(8).repeat(4)
    layer.write(prototypes[labels] + 0.3 * torch.randn(32, 32, generator=gen), labels)
    assert layer.usage.tolist() == [4.0] * 8 + [0.0, 0.0]
    queries = prototypes + 0.3 * torch.randn(8, 32, generator=gen)
    probabilities = layer.class_probabilities(queries)
    assert probabilities.argmax(-1).tolist() == list(range(8))
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(8))


def test_writing_new_classes_leaves_the_old_prototypes_untouched():
    layer = HopfieldLayer(16, mem_size=6, mode="class_prototype", num_classes=6)
    layer.write(torch.randn(6, 16), torch.tensor([0, 0, 1, 1, 2, 2]))
    old = layer.patterns[:, :3].clone(), layer.usage.clone(), layer.label_counts.clone()
    layer.write(torch.randn(4, 16), torch.tensor([3, 3, 4, 4]))
    assert torch.equal(layer.patterns[:, :3], old[0])
    assert torch.equal(layer.usage[:3], old[1][:3])
    assert torch.equal(layer.label_counts[:3], old[2][:3])
    assert layer.used_slots().tolist() == [0, 1, 2, 3, 4]


def test_prototype_is_the_running_mean_of_normalised_features():
    layer = HopfieldLayer(8, mem_size=2, mode="class_prototype", num_classes=2)
    features = torch.randn(5, 8)
    layer.write(features[:2], torch.tensor([1, 1]))
    layer.write(features[2:], torch.tensor([1, 1, 1]))
    keys = layer.queries(features[None])[0, 0]
    torch.testing.assert_close(layer.patterns[0, 1], keys.mean(0))


def test_hebbian_write_is_deterministic_and_never_grows_the_memory():
    features = torch.randn(40, 16, generator=seeded(1))
    labels = torch.arange(40) % 3
    layers = []
    for _ in range(2):
        layer = HopfieldLayer(
            16, mem_size=6, mode="associative", num_classes=3, match_threshold=0.5
        )
        layer.write(features, labels)
        layers.append(layer)
    first, second = layers
    assert first.patterns.shape == (1, 6, 16)
    assert first.usage.sum() <= 40 and (first.usage > 0).all()  # every slot used, none added
    for name in ("patterns", "usage", "label_counts"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


def test_hebbian_write_strengthens_a_match_and_fills_the_least_used_slot():
    layer = HopfieldLayer(4, mem_size=2, mode="associative", num_classes=2, match_threshold=0.9)
    a, b = torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[0, 1.0, 0, 0]])
    for feature, label in ((a, 0), (a, 0), (b, 1)):
        layer.write(feature, torch.tensor([label]))
    assert layer.usage.tolist() == [2.0, 1.0]  # a strengthened slot 0; b took slot 1
    assert layer.label_counts.tolist() == [[2.0, 0.0], [0.0, 1.0]]
    layer.write(torch.tensor([[0, 0, 1.0, 0]]), torch.tensor([0]))  # no match: least-used slot 1
    assert layer.usage.tolist() == [2.0, 1.0]
    assert layer.label_counts.tolist() == [[2.0, 0.0], [1.0, 0.0]]


@pytest.mark.parametrize("mode", ["class_prototype", "associative", "learned"])
@pytest.mark.parametrize("position", ["after_attn", "after_ffn"])
def test_kernel_and_reference_give_the_same_model_output_and_gradients(mode, position):
    torch.manual_seed(0)
    model = MemoryAugmentedViT(
        num_classes=CLASSES,
        mem_size=9,
        memory_mode=mode,
        hopfield_position=position,
        hopfield_blocks=(1, 2),
        num_heads=3,
        n_steps=2,
        **TINY,
    ).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.arange(4)
    if mode != "learned":
        model.write_memory(images, labels)
    for layer in model.hopfield.values():
        layer.gate.data.fill_(0.5)  # make the residual reads count
    outputs = []
    for use_reference in (False, True):
        model.zero_grad()
        with hvision_ext.use_reference(use_reference):
            out = model(images)
        out.sum().backward()
        outputs.append((out, model.hopfield["1"].query.weight.grad.clone()))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=1e-4, atol=1e-5)


def test_an_inserted_layer_leaves_the_backbone_function_unchanged_until_trained():
    model = MemoryAugmentedViT(num_classes=CLASSES, mem_size=4, **TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    features = model.backbone.forward_features(images)
    expected = model.head(model.backbone.forward_head(features, pre_logits=True))
    torch.testing.assert_close(model(images), expected)


def test_registered_presets():
    model = create_model("memory_vit", num_classes=3, mem_size=50)
    assert model.hopfield["3"].patterns.shape == (1, 50, 96)
    assert create_model("vpt_deep_vit").prompts.shape == (4, 10, 96)


@pytest.mark.parametrize(
    "build",
    [
        lambda: MemoryAugmentedViT(hopfield_position="after_attn", freeze_backbone=True, **TINY),
        lambda: create_model("memory_vit", **TINY),
    ],
    ids=["class", "preset"],
)
def test_the_default_model_is_the_source_designs(build):
    model = build()
    layer = model.hopfield[str(DEPTH - 1)]
    assert (model.hopfield_position, model.memory_mode, model.freeze_backbone) == (
        "after_attn",
        "learned",
        True,
    )
    assert (layer.mem_size, layer.beta, layer.read_drop.p, model.head_drop.p) == (
        1000,
        0.125,
        0.1,
        0.1,
    )
    assert model.head.out_features == 10
    assert not any(p.requires_grad for p in model.backbone.parameters())


@pytest.mark.parametrize(
    "name", ["memory_vit", "linear_probe_vit", "vpt_shallow_vit", "vpt_deep_vit"]
)
def test_presets_take_the_backbone_arguments_the_jobs_size_models_with(name):
    model = create_model(name, img_size=16, in_chans=1, num_classes=4, backbone_args={"depth": 2})
    assert model.backbone.patch_embed.img_size == 16 and len(model.backbone.blocks) == 2
    assert model.eval()(torch.randn(2, 1, 16, 16)).shape == (2, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hopfield_position="before_attn"), "hopfield_position: expected one of"),
        (dict(memory_mode="episodic"), "mode: expected one of"),
        (dict(mem_size=0), "mem_size: expected an int >= 1, got 0"),
        (
            dict(mem_size=3, num_classes=5, memory_mode="class_prototype"),
            "mem_size: class_prototype keeps one slot per class",
        ),
        (dict(dropout=1.0), r"dropout: expected a probability in \[0, 1\), got 1.0"),
        (dict(hopfield_blocks=(3,)), r"hopfield_blocks: expected block indices in \[-3, 3\)"),
        (dict(num_heads=5), "num_heads: expected a divisor of dim=24"),
        (dict(beta=0.0), "beta: expected > 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MemoryAugmentedViT(**{"num_classes": CLASSES, **TINY, **kwargs})


def test_bad_writes_and_reads_are_named():
    layer = HopfieldLayer(8, mem_size=4, mode="class_prototype", num_classes=3)
    with pytest.raises(RuntimeError, match="the memory is empty"):
        layer.class_probabilities(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=3\)"):
        layer.write(torch.randn(2, 8), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="one label per feature"):
        layer.write(torch.randn(2, 8), torch.tensor([0]))
    with pytest.raises(RuntimeError, match="a learned memory is trained, not written"):
        HopfieldLayer(8, mem_size=4, mode="learned").write(torch.randn(1, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_prompts: expected >= 1"):
        VPTShallow(num_prompts=0, **TINY)
