"""motion_saliency: parity with the reference and with an explicit Sobel, the meaning of the
scores on synthetic videos, op registration, compile, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hvision_ext
from hvision_ext import ops, reference
from tests.helpers import DEVICES, seeded

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def random_frames(
    batch=2, time=3, channels=3, height=12, width=16, dtype=torch.uint8, seed=0, device="cpu"
):
    gen = seeded(seed)
    if dtype == torch.uint8:
        frames = torch.randint(
            0, 256, (batch, time, channels, height, width), generator=gen, dtype=torch.uint8
        )
    else:
        frames = torch.rand(
            batch, time, channels, height, width, generator=gen, dtype=torch.float64
        ).to(dtype)
    return frames.to(device)


def check_against_reference(frames, patch_size, alpha=0.5, rtol=1e-5, atol=1e-5):
    ours = ops.motion_saliency(frames, patch_size, alpha)
    expected = reference.motion_saliency(frames, patch_size, alpha)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    torch.testing.assert_close(ours.cpu(), expected.cpu(), rtol=rtol, atol=atol)
    return ours


# --- parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("patch_size", [1, 4, 6])
def test_uint8_matches_reference(device, channels, patch_size):
    frames = random_frames(channels=channels, height=12, width=24, device=device)
    check_against_reference(frames, patch_size, alpha=0.3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_float_dtypes_match_reference(device, dtype):
    frames = random_frames(dtype=dtype, device=device, height=16, width=8, time=4)
    ours = check_against_reference(frames, 4, alpha=0.7)
    assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape", [(1, 1, 3, 4, 4), (1, 2, 1, 1, 5), (2, 2, 3, 3, 1), (1, 2, 1, 1, 1), (3, 5, 3, 14, 7)]
)
def test_degenerate_and_odd_sizes(device, shape):
    frames = random_frames(*shape, seed=sum(shape), device=device)
    patch_size = math.gcd(shape[3], shape[4])
    check_against_reference(frames, patch_size)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    for shape in [(0, 3, 3, 8, 8), (2, 0, 3, 8, 8), (1, 2, 3, 0, 8)]:
        scores = ops.motion_saliency(torch.zeros(shape, dtype=torch.uint8, device=device), 4)
        assert scores.shape == (shape[0], shape[1], (shape[3] // 4) * (shape[4] // 4))


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 2),
    time=st.integers(1, 4),
    channels=st.sampled_from([1, 3]),
    patch_size=st.integers(1, 5),
    patches_y=st.integers(1, 4),
    patches_x=st.integers(1, 4),
    alpha=st.floats(0, 1),
    uint8=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(
    batch, time, channels, patch_size, patches_y, patches_x, alpha, uint8, seed
):
    frames = random_frames(
        batch,
        time,
        channels,
        patches_y * patch_size,
        patches_x * patch_size,
        torch.uint8 if uint8 else torch.float32,
        seed,
    )
    check_against_reference(frames, patch_size, alpha)


def test_non_contiguous_frames():
    frames = random_frames(time=4, height=8, width=8)
    strided = frames.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    torch.testing.assert_close(ops.motion_saliency(strided, 4), ops.motion_saliency(frames, 4))


@pytest.mark.parametrize("device", DEVICES)
def test_a_nan_pixel_spoils_its_frames_as_in_the_reference(device):
    """As torch.amax, the frame's maximum is NaN: a NaN pixel in frame 2 makes every score of
    frame 2 NaN (its motion and saliency) and leaves frames 0 and 1 finite."""
    frames = random_frames(batch=1, time=3, channels=1, height=8, width=8, dtype=torch.float32)
    frames[0, 2, 0, 7, 7] = float("nan")
    ours = ops.motion_saliency(frames.to(device), 4).cpu()
    torch.testing.assert_close(ours, reference.motion_saliency(frames, 4), equal_nan=True)
    assert ours[0, 2].isnan().all() and ours[0, :2].isfinite().all()


def test_deterministic_whatever_the_thread_count():
    frames = random_frames(batch=3, time=5, height=32, width=32)
    first = ops.motion_saliency(frames, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        second = ops.motion_saliency(frames, 8)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, second)


# --- saliency against an explicit Sobel ---------------------------------------------------------


def explicit_sobel_magnitude(image):
    """The 3x3 Sobel magnitude of one (H, W) float64 image, pixel by pixel, reflect-101 borders."""
    height, width = image.shape

    def reflect(i, n):
        return 0 if n == 1 else (-i if i < 0 else (2 * n - 2 - i if i >= n else i))

    kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    out = torch.zeros(height, width, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            gx = gy = 0.0
            for dy in range(3):
                for dx in range(3):
                    pixel = image[reflect(y + dy - 1, height), reflect(x + dx - 1, width)].item()
                    gx += kx[dy][dx] * pixel
                    gy += kx[dx][dy] * pixel
            out[y, x] = math.hypot(gx, gy)
    return out


def saliency_only(frames, patch_size):
    return ops.motion_saliency(frames, patch_size, alpha=0.0)


def normalised_patch_means(magnitude, patch_size):
    height, width = magnitude.shape
    means = (
        magnitude.reshape(height // patch_size, patch_size, width // patch_size, patch_size)
        .mean((1, 3))
        .flatten()
    )
    return means / (means.max() + 1e-6)


@pytest.mark.parametrize("shape", [(9, 12), (1, 4), (3, 3)])
def test_saliency_matches_explicit_float64_sobel(shape):
    gen = seeded(3)
    grey = torch.randint(0, 256, (1, 1, 1, *shape), generator=gen, dtype=torch.uint8)
    patch_size = math.gcd(*shape)
    expected = normalised_patch_means(explicit_sobel_magnitude(grey[0, 0, 0].double()), patch_size)
    torch.testing.assert_close(
        saliency_only(grey, patch_size)[0, 0].double(), expected, rtol=1e-5, atol=1e-6
    )

    rgb = torch.rand(1, 1, 3, *shape, generator=gen, dtype=torch.float64)
    luma = 0.299 * rgb[0, 0, 0] + 0.587 * rgb[0, 0, 1] + 0.114 * rgb[0, 0, 2]
    expected = normalised_patch_means(explicit_sobel_magnitude(luma), patch_size)
    torch.testing.assert_close(saliency_only(rgb, patch_size)[0, 0], expected, rtol=1e-9, atol=1e-9)


def test_saliency_matches_opencv_sobel():
    cv2 = pytest.importorskip(
        "cv2", reason="OpenCV (cv2) is not installed: pip install opencv-python-headless"
    )
    import numpy as np

    gen = seeded(4)
    frame = torch.randint(0, 256, (1, 1, 3, 32, 48), generator=gen, dtype=torch.uint8)
    rgb = frame[0, 0].permute(1, 2, 0).numpy().astype(np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101)
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101)
    magnitude = torch.from_numpy(np.sqrt(gx * gx + gy * gy)).double()
    expected = normalised_patch_means(magnitude, 8)
    torch.testing.assert_close(
        saliency_only(frame, 8)[0, 0].double(), expected, rtol=1e-5, atol=1e-6
    )


# --- what the scores mean -----------------------------------------------------------------------


def test_motion_is_zero_for_a_static_video():
    frame = random_frames(batch=1, time=1, height=16, width=16)
    video = frame.expand(1, 5, 3, 16, 16)
    motion = ops.motion_saliency(video, 4, alpha=1.0)
    assert torch.equal(motion, torch.zeros_like(motion))


def moving_square_video(time=6, size=64, square=8, step=8):
    video = torch.full((1, time, 3, size, size), 40, dtype=torch.uint8)
    for t in range(time):
        x = 4 + t * step
        video[0, t, :, 20 : 20 + square, x : x + square] = 220
    return video


def test_motion_is_largest_where_a_square_moves():
    video = moving_square_video()
    motion = ops.motion_saliency(video, 8, alpha=1.0).reshape(6, 8, 8)
    for t in range(1, 6):
        changed = (video[0, t].int() - video[0, t - 1].int()).abs().sum(0) > 0
        moving_patches = changed.reshape(8, 8, 8, 8).any(3).any(1)
        assert motion[t][moving_patches].min() > 0
        assert torch.all(motion[t][~moving_patches] == 0)
        assert motion[t].max() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(motion[0], motion[1])  # frame 0 takes frame 1's motion


def test_motion_is_zero_for_a_single_frame():
    frames = random_frames(time=1)
    assert torch.all(ops.motion_saliency(frames, 4, alpha=1.0) == 0)


def test_saliency_is_zero_on_a_flat_frame():
    flat = torch.full((2, 3, 3, 16, 16), 117, dtype=torch.uint8)
    assert torch.all(saliency_only(flat, 4) == 0)


def test_scores_blend_normalised_motion_and_saliency():
    video = moving_square_video()
    motion = ops.motion_saliency(video, 8, alpha=1.0)
    saliency = ops.motion_saliency(video, 8, alpha=0.0)
    torch.testing.assert_close(
        ops.motion_saliency(video, 8, alpha=0.25), 0.25 * motion + 0.75 * saliency
    )


def test_no_gradient_flows():
    frames = random_frames(dtype=torch.float32).requires_grad_()
    scores = ops.motion_saliency(frames, 4)
    assert not scores.requires_grad


# --- registration, compile, bad input -------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    frames = random_frames(dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.hvision.motion_saliency.default, (frames, 4, 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    frames = random_frames(device=device)

    def top_patches(video):
        return ops.motion_saliency(video, 4, 0.5).topk(3, dim=-1).indices

    compiled = torch.compile(top_patches, fullgraph=True)
    torch.testing.assert_close(compiled(frames), top_patches(frames))


BAD_INPUTS = [
    (
        dict(frames=torch.zeros(2, 3, 8, 8, dtype=torch.uint8)),
        ValueError,
        r"expected frames of shape \(batch, T, C, H, W\), got \(2, 3, 8, 8\)",
    ),
    (
        dict(frames=torch.zeros(1, 2, 3, 8, 8, dtype=torch.int32)),
        TypeError,
        "expected frames of dtype",
    ),
    (dict(frames=torch.zeros(1, 2, 2, 8, 8)), ValueError, "C = 1 .* or 3 .* got C = 2"),
    (
        dict(frames=torch.zeros(1, 2, 3, 9, 8)),
        ValueError,
        "H and W divisible by patch_size = 4, got H = 9, W = 8",
    ),
    (dict(patch_size=0), ValueError, "expected patch_size >= 1, got 0"),
    (dict(alpha=1.5), ValueError, r"expected alpha in \[0, 1\], got 1.5"),
]


@pytest.mark.parametrize("changes, error, message", BAD_INPUTS)
def test_bad_input_is_named(changes, error, message):
    kwargs = dict(frames=torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8), patch_size=4, alpha=0.5)
    kwargs.update(changes)
    with pytest.raises(error, match=message):
        ops.motion_saliency(**kwargs)


def test_reference_switch_routes_to_the_reference():
    frames = random_frames()
    with hvision_ext.use_reference():
        switched = ops.motion_saliency(frames, 4, 0.3)
    torch.testing.assert_close(switched, reference.motion_saliency(frames, 4, 0.3), rtol=0, atol=0)
