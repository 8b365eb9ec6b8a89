import pytest
import torch

from python_models import VisionMamba, VisionMambaMAE
from python_models.vim_mae import patchify, random_masking, unpatchify


def small_encoder(**overrides) -> VisionMamba:
    return VisionMamba(
        **{
            "img_size": 16,
            "patch_size": 4,
            "embed_dim": 16,
            "depth": 2,
            "num_classes": 0,
            **overrides,
        }
    )


def small_mae(encoder_args: dict | None = None, **overrides) -> VisionMambaMAE:
    return VisionMambaMAE(
        small_encoder(**(encoder_args or {})),
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
        **overrides,
    )


ENCODERS = {
    "mamba+cls": {},
    "mamba": {"use_cls_token": False},
    "hybrid+cls": {"block_type": "hybrid", "num_heads": 2},
    "hybrid": {"block_type": "hybrid", "num_heads": 2, "use_cls_token": False},
}
encoders = pytest.mark.parametrize("encoder_args", ENCODERS.values(), ids=ENCODERS.keys())


def test_patchify_round_trip():
    images = torch.randn(2, 3, 16, 16)
    patches = patchify(images, 4)
    assert patches.shape == (2, 16, 48)
    # patch 1 is the top row's second patch, its pixels in (row, column, channel) order
    torch.testing.assert_close(patches[0, 1].view(4, 4, 3).permute(2, 0, 1), images[0, :, :4, 4:8])
    torch.testing.assert_close(unpatchify(patches, 4, 3), images)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.75, 0.9])
def test_random_masking_invariants(ratio):
    keep, mask, restore = random_masking(5, 16, ratio, torch.device("cpu"))
    n_keep = max(1, round(16 * (1 - ratio)))
    assert keep.shape == (5, n_keep)
    assert torch.all(keep[:, 1:] > keep[:, :-1])  # visible patches in sequence order, no repeats
    assert torch.all(mask.sum(1) == 16 - n_keep)
    assert torch.all(mask.gather(1, keep) == 0)
    hidden = torch.stack([row.nonzero().flatten() for row in mask])
    order = torch.cat([keep, hidden], dim=1)
    assert torch.equal(order.gather(1, restore), torch.arange(16).expand(5, -1))


def test_masking_rejects_bad_ratio():
    with pytest.raises(ValueError, match=r"mask_ratio must lie in \[0, 1\)"):
        random_masking(1, 4, 1.0, torch.device("cpu"))


@encoders
def test_encoder_sees_only_the_visible_patches(encoder_args):
    mae = small_mae(encoder_args, mask_ratio=0.75)
    lengths = []
    mae.encoder.blocks[0].register_forward_hook(
        lambda module, inputs, output: lengths.append(inputs[0].shape[1])
    )
    out = mae(torch.randn(3, 3, 16, 16))
    # 25 % of 16 patches, plus the class token if the encoder has one
    assert lengths == [4 + mae.encoder.num_class_tokens]
    assert out.pred.shape == (3, 16, 48) and out.mask.shape == (3, 16)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_is_the_mse_over_masked_patches(norm_pix_loss):
    torch.manual_seed(0)
    mae = small_mae(norm_pix_loss=norm_pix_loss)
    images = torch.randn(2, 3, 16, 16)
    out = mae(images)
    target = patchify(images, 4)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (
            target.var(-1, keepdim=True) + 1e-6
        ).sqrt()
    per_patch = (out.pred - target).pow(2).mean(-1)
    torch.testing.assert_close(out.loss, per_patch[out.mask.bool()].mean())


@encoders
def test_mae_gradients_and_loss_falls(encoder_args):
    torch.manual_seed(0)
    mae = small_mae(encoder_args)
    images = torch.randn(4, 3, 16, 16)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        torch.manual_seed(1)  # the same masks every step: the loss must fall
        loss = mae(images).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]
    assert all(p.grad is not None for p in mae.parameters())


def test_encoder_weights_load_into_a_classifier():
    torch.manual_seed(0)
    mae = small_mae()
    classifier = VisionMamba(img_size=16, patch_size=4, embed_dim=16, depth=2, num_classes=10)
    result = classifier.load_state_dict(mae.encoder_state_dict(), strict=False)
    assert (
        sorted(result.missing_keys) == ["head.bias", "head.weight"] and not result.unexpected_keys
    )
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(
        classifier.forward_features(images), mae.encoder.forward_features(images)
    )


def strip_like_load_pretrained(mae_weights: dict) -> dict:
    """What ``train.tasks.images.load_encoder_weights`` keeps of an MAE checkpoint: the ``encoder.``
    entries without that prefix, less the head."""
    encoder = {k[len("encoder.") :]: v for k, v in mae_weights.items() if k.startswith("encoder.")}
    return {k: v for k, v in encoder.items() if not k.startswith("head.")}


@encoders
def test_mae_checkpoint_loads_into_a_classifier_of_the_same_settings(encoder_args):
    torch.manual_seed(0)
    mae = small_mae(encoder_args)
    classifier = small_encoder(**encoder_args, num_classes=10)
    result = classifier.load_state_dict(strip_like_load_pretrained(mae.state_dict()), strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"]
    assert not result.unexpected_keys
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(
        classifier.forward_features(images), mae.encoder.forward_features(images)
    )


def test_decoder_defaults_are_the_designs_and_run():
    mae = VisionMambaMAE(small_encoder(use_cls_token=False))
    assert (mae.mask_ratio, mae.decoder_embed.out_features, len(mae.decoder_blocks)) == (
        0.75,
        512,
        8,
    )
    assert mae.decoder_blocks[0].attn.num_heads == 8
    out = mae(torch.randn(1, 3, 16, 16))
    assert out.pred.shape == (1, 16, 48) and out.mask.sum() == 12


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_reconstruct_returns_pixels_and_the_mask_in_image_layout(norm_pix_loss):
    torch.manual_seed(0)
    mae = small_mae({"use_cls_token": False}, norm_pix_loss=norm_pix_loss).eval()
    images = torch.rand(2, 3, 16, 16)
    torch.manual_seed(1)
    reconstruction, mask = mae.reconstruct(images)
    torch.manual_seed(1)  # the same masks again
    out = mae(images)
    assert reconstruction.shape == images.shape and mask.shape == (2, 1, 16, 16)
    assert not reconstruction.requires_grad
    # the mask image is 1 on every pixel of a hidden patch and 0 elsewhere
    torch.testing.assert_close(patchify(mask, 4), out.mask[..., None].expand(-1, -1, 16))
    assert mask.mean() == 0.75
    # normalised back with each input patch's statistics, the pixels are the predictions
    patches = patchify(reconstruction, 4)
    if norm_pix_loss:
        target = patchify(images, 4)
        mean = target.mean(-1, keepdim=True)
        std = (target.var(-1, keepdim=True) + 1e-6).sqrt()
        patches = (patches - mean) / std
    torch.testing.assert_close(patches, out.pred, rtol=1e-4, atol=1e-5)
