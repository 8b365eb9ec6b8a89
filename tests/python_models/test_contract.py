"""The classifier contract (``python_models.contract``) on every registered preset, built small.

A preset is a classifier when its model's ``forward`` returns a tensor of logits; a model whose
``forward`` returns a structured output (``MultiTaskVLM``'s ``MultiTaskOutput``, MAE's
``MAEOutput``) is not one, and is held only to ``no_weight_decay``."""

import pytest
import torch
from torch import Tensor, nn

from python_models import (
    Classifier,
    HopfieldLayer,
    MemoryAugmentedViT,
    VisionMamba,
    VisionMambaMAE,
    create_model,
    list_models,
)
from python_models.contract import linear_head, no_weight_decay_names

VIDEO_CLIPS = (2, 4, 3, 32, 32)
IMAGES_32 = (2, 3, 32, 32)
IMAGES_16 = (2, 3, 16, 16)
BACKBONE = dict(embed_dim=32, depth=2, num_heads=2)
VIDEO = dict(num_frames=4, img_size=32, embed_dim=24, num_heads=2, depth=2)

# Small arguments and an input per family: the name's leading part (the longest that matches).
FAMILIES = {
    "vit": (dict(img_size=32, patch_size=8, **BACKBONE), IMAGES_32),
    "vim": (dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2), IMAGES_32),
    "hvit": (dict(img_size=16, embed_dims=(8, 16), depths=(1, 1), num_heads=(1, 2)), IMAGES_16),
    "hrm": (dict(img_size=16, hidden_dim=16, num_heads=2, h_layers=1, l_layers=1), IMAGES_16),
    "hvlm": (VIDEO, VIDEO_CLIPS),
    "hvlm_multitask": (dict(VIDEO, tasks=("action", "detection")), VIDEO_CLIPS),
    "linear_probe": (dict(backbone_args=BACKBONE), IMAGES_32),
    "memory": (dict(backbone_args=BACKBONE, mem_size=16), IMAGES_32),
    "vpt": (dict(backbone_args=BACKBONE, num_prompts=3), IMAGES_32),
}

# Parameters of these names are never weights to decay (the engine skips 1-D parameters by
# shape and asks the model for the rest): no_weight_decay must name every one a model has.
ENGINE_NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "global_tokens", "mask_token", "A_log")


def family(name: str) -> str:
    matches = [f for f in FAMILIES if name == f or name.startswith(f + "_")]
    if not matches:
        raise KeyError(f"{name}: no family of {sorted(FAMILIES)} starts its name")
    return max(matches, key=len)


def build_small(name: str) -> tuple[nn.Module, Tensor]:
    overrides, input_shape = FAMILIES[family(name)]
    torch.manual_seed(0)
    return create_model(name, **overrides).eval(), torch.randn(input_shape)


def assert_no_weight_decay_names_parameters(model: nn.Module) -> None:
    names = model.no_weight_decay()
    parameters = dict(model.named_parameters())
    assert names <= set(parameters), names - set(parameters)
    engine_rule = {
        name
        for name, parameter in parameters.items()
        if parameter.ndim > 1 and name.endswith(ENGINE_NO_DECAY_SUFFIXES)
    }
    assert engine_rule <= names, engine_rule - names


@pytest.mark.parametrize("name", list_models())
def test_every_preset_names_its_no_weight_decay_parameters(name):
    model, _ = build_small(name)
    assert_no_weight_decay_names_parameters(model)
    assert model.no_weight_decay()  # every model here has learned positions


@pytest.mark.parametrize("name", list_models())
def test_classifier_contract(name):
    model, inputs = build_small(name)
    with torch.no_grad():
        logits = model(inputs)
    if not isinstance(logits, Tensor):
        pytest.skip(f"{name}: forward returns {type(logits).__name__}, not logits")
    assert isinstance(model, Classifier)
    batch = len(inputs)
    with torch.no_grad():
        features = model.forward_features(inputs)
        torch.testing.assert_close(model.forward_head(features), logits)
        pooled = model.forward_head(features, pre_logits=True)
    assert logits.shape == (batch, model.num_classes)
    assert pooled.shape == (batch, model.num_features)

    model.reset_classifier(5)
    with torch.no_grad():
        assert model(inputs).shape == (batch, 5)
    assert model.num_classes == 5
    model.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), pooled)
    assert model.num_classes == 0


def test_families_cover_every_preset_and_each_family_has_a_preset():
    used = {family(name) for name in list_models()}
    assert used == set(FAMILIES)


def test_mae_names_its_tokens_and_its_encoders():
    mae = VisionMambaMAE(
        VisionMamba(img_size=16, patch_size=4, embed_dim=16, depth=2, use_cls_token=False),
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
    )
    assert_no_weight_decay_names_parameters(mae)
    assert {"mask_token", "decoder_pos_embed", "encoder.pos_embed"} <= mae.no_weight_decay()


def test_no_weight_decay_names_pass_over_absent_parameters():
    model = VisionMamba(img_size=16, patch_size=4, embed_dim=8, depth=1, use_cls_token=False)
    names = no_weight_decay_names(model)
    assert "cls_token" not in names and "pos_embed" in names


def test_reset_classifier_keeps_the_device_and_dtype_and_names_bad_input():
    model, inputs = build_small("vit_micro_patch4_32")
    model.double().reset_classifier(3)
    assert model.head.weight.dtype == torch.float64
    assert model(inputs.double()).shape == (2, 3)
    with pytest.raises(ValueError, match="num_classes: expected an int >= 0, got -1"):
        model.reset_classifier(-1)
    assert isinstance(linear_head(4, 0), nn.Identity)


def test_frozen_backbones_stay_frozen_under_a_new_head():
    model, _ = build_small("vpt_deep_vit")
    model.reset_classifier(7)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompts", "head.weight", "head.bias"}
    assert "prompts" not in model.no_weight_decay()  # trained with weight decay


def test_a_written_memory_resets_to_empty_memories_of_the_new_labels():
    torch.manual_seed(0)
    model = MemoryAugmentedViT(
        num_classes=3, mem_size=8, memory_mode="class_prototype", backbone_args=BACKBONE
    ).eval()
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    model.write_memory(images, labels)
    features = model.forward_features(images)
    assert model.forward_head(features, pre_logits=True).shape == (6, model.num_features)
    torch.testing.assert_close(model.forward_head(features), model(images))

    model.reset_classifier(5)
    layer: HopfieldLayer = model.hopfield[str(model.last_memory_block)]
    assert model.num_classes == layer.num_classes == 5
    assert layer.usage.sum() == 0 and layer.label_counts.shape == (8, 5)
    model.write_memory(images[:5], torch.arange(5))
    assert model(images).shape == (6, 5)
    with pytest.raises(ValueError, match="num_classes: a class_prototype memory needs"):
        model.reset_classifier(0)
    with pytest.raises(ValueError, match="mem_size: class_prototype keeps one slot per class"):
        model.reset_classifier(9)
