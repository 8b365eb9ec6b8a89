import pytest
import torch

from train.data import ClipTransform

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_every_frame_of_a_clip_gets_the_same_augmentation():
    torch.manual_seed(0)
    still = torch.randint(0, 256, (4, 1, 3, 32, 32), dtype=torch.uint8).expand(4, 6, 3, 32, 32)
    transform = ClipTransform(
        MEAN,
        STD,
        size=(24, 24),
        crop_scale=(0.3, 1.0),
        flip=True,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
    )
    out = transform(still, train=True)
    assert out.shape == (4, 6, 3, 24, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out, out[:, :1].expand_as(out))  # frames of a clip stay equal
    same_input = still[:1].expand(4, -1, -1, -1, -1)
    out = transform(same_input, train=True)
    assert not torch.allclose(out[0], out[1])  # but each clip draws its own parameters


def test_full_crop_without_jitter_is_the_identity():
    clips = torch.randint(0, 256, (2, 3, 3, 16, 16), dtype=torch.uint8)
    transform = ClipTransform(MEAN, STD)
    expected = (clips.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(transform(clips, train=True), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(transform(clips, train=False), expected)


def test_evaluation_resizes_views():
    clips = torch.randint(0, 256, (2, 3, 4, 3, 32, 32), dtype=torch.uint8)  # (batch, views, T, ...)
    out = ClipTransform(MEAN, STD, size=(16, 16))(clips, train=False)
    assert out.shape == (2, 3, 4, 3, 16, 16)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="crop_scale"):
        ClipTransform(MEAN, STD, crop_scale=(0.5, 1.2))
    with pytest.raises(ValueError, match="brightness must be in"):
        ClipTransform(MEAN, STD, brightness=1.5)
    with pytest.raises(ValueError, match="clips must be"):
        ClipTransform(MEAN, STD)(torch.zeros(3, 8, 8, dtype=torch.uint8), train=False)
