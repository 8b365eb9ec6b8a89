import sys

import pytest
import torch

from python_models import VisionTransformer, create_model
from python_models.vit import load_pretrained, resize_pos_embed

SMALL = dict(img_size=32, patch_size=4, embed_dim=24, depth=2, num_heads=3, num_classes=5)


def timm_names(depth: int) -> set[str]:
    """The parameter names of timm's VisionTransformer (class token, no fc_norm)."""
    per_block = [
        f"{layer}.{kind}"
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for kind in ("weight", "bias")
    ]
    blocks = {f"blocks.{i}.{name}" for i in range(depth) for name in per_block}
    top = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    return top | blocks | {"norm.weight", "norm.bias", "head.weight", "head.bias"}


def test_parameter_names_are_timms():
    model = create_model("vit_tiny_patch16_224")
    assert set(model.state_dict()) == timm_names(12)
    assert isinstance(model.blocks, torch.nn.Sequential)
    assert model.pos_embed.shape == (1, 197, 192)


def test_timm_state_dict_loads_and_outputs_match_timms():
    timm = pytest.importorskip("timm")
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SMALL).eval()
    model = VisionTransformer(**SMALL).eval()
    result = model.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(images), reference(images), rtol=0, atol=0)
    features = model.forward_features(images)
    torch.testing.assert_close(features, reference.forward_features(images), rtol=0, atol=0)
    torch.testing.assert_close(
        model.forward_head(features, pre_logits=True),
        reference.forward_head(features, pre_logits=True),
        rtol=0,
        atol=0,
    )


def test_pretrained_path_loads_a_timm_named_file_with_positions_resized(tmp_path):
    source = VisionTransformer(**{**SMALL, "img_size": 64, "num_classes": 7})
    torch.save({"state_dict": source.state_dict()}, tmp_path / "weights.pth")
    model = create_model("vit_tiny_patch4_32", pretrained=str(tmp_path / "weights.pth"), **SMALL)
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(model.cls_token, source.cls_token)
    assert model.pos_embed.shape == (1, 65, 24)  # 16 × 16 grid resized to 8 × 8
    assert not torch.equal(model.head.weight[:5], source.head.weight[:5])  # 5 ≠ 7 classes


def test_pretrained_safetensors_file(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    source = VisionTransformer(**SMALL)
    safetensors.save_file(source.state_dict(), str(tmp_path / "weights.safetensors"))
    model = create_model("vit_tiny_patch4_32", pretrained=tmp_path / "weights.safetensors", **SMALL)
    torch.testing.assert_close(model.state_dict(), source.state_dict())


def test_resize_pos_embed_keeps_the_class_position_and_an_unchanged_grid():
    pos = torch.randn(1, 1 + 16, 4)
    assert resize_pos_embed(pos, 16) is pos
    resized = resize_pos_embed(pos, 64)
    assert resized.shape == (1, 65, 4)
    torch.testing.assert_close(resized[:, 0], pos[:, 0])


def test_pretrained_true_without_timm_names_both_ways(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ImportError, match="not installed.*pretrained='path"):
        create_model("vit_tiny_patch16_224", pretrained=True, depth=1)


def test_pretrained_true_when_timm_cannot_fetch(monkeypatch):
    timm = pytest.importorskip("timm")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="could not provide vit_tiny_patch16_224.*offline"):
        create_model("vit_tiny_patch16_224", pretrained=True, depth=1)


def test_bad_pretrained_values_say_what_to_use(tmp_path):
    with pytest.raises(ValueError, match="timm has no weights for this preset"):
        create_model("vit_micro_patch4_32", pretrained=True)
    with pytest.raises(TypeError, match=r"expected True \(timm's weights\) or a path"):
        load_pretrained(VisionTransformer(**SMALL), 3, None)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        create_model("vit_micro_patch4_32", pretrained=str(tmp_path / "missing.pth"))


def test_weights_of_another_architecture_are_rejected(tmp_path):
    torch.save(VisionTransformer(**{**SMALL, "embed_dim": 12}).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="other shapes than the model's"):
        create_model("vit_micro_patch4_32", pretrained=str(tmp_path / "w.pth"), **SMALL)
