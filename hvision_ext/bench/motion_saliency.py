"""Bench cases for ``motion_saliency``: scoring the patches of two 16-frame 224 x 224 RGB clips,
against the reference and (on the CPU) the same scores with numpy and OpenCV."""

import sys

import torch
from torch import Tensor

from .. import reference
from ..ops import motion_saliency
from .registry import BenchCase, Impl, bench_case

CLIPS = {"batch": 2, "time": 16, "channels": 3, "height": 224, "width": 224, "patch_size": 16}
LUMA = (0.299, 0.587, 0.114)


def opencv_scores():
    """The motion–saliency scores with numpy and OpenCV (cv2.Sobel, np.abs(np.diff), patch means
    by reshape), as a CPU user would write them; None (with the reason printed) without cv2."""
    try:
        import cv2
        import numpy as np
    except ImportError as err:
        print(
            f"motion_saliency bench: no numpy/OpenCV anchor ({err}); pip install opencv-python-headless",
            file=sys.stderr,
        )
        return None

    def patch_means(maps, patch):
        *lead, height, width = maps.shape
        return (
            maps.reshape(*lead, height // patch, patch, width // patch, patch)
            .mean(axis=(-3, -1))
            .reshape(*lead, -1)
        )

    def normalise(scores):
        return scores / (scores.max(axis=-1, keepdims=True) + 1e-6)

    def scores(frames, patch_size: int, alpha: float = 0.5):
        video = frames.astype(np.float32)  # (batch, T, C, H, W)
        difference = np.abs(np.diff(video, axis=1)).mean(axis=2)
        difference = np.concatenate([difference[:, :1], difference], axis=1)
        luma = np.tensordot(
            np.asarray(LUMA, np.float32), video, axes=([0], [2])
        )  # (batch, T, H, W)
        magnitude = np.empty_like(luma)
        for index in np.ndindex(*luma.shape[:2]):
            gx = cv2.Sobel(
                luma[index], cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101
            )
            gy = cv2.Sobel(
                luma[index], cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101
            )
            magnitude[index] = cv2.magnitude(gx, gy)
        motion = normalise(patch_means(difference, patch_size))
        saliency = normalise(patch_means(magnitude, patch_size))
        return alpha * motion + (1 - alpha) * saliency

    return scores


def clips(device: torch.device, sizes: dict[str, int]) -> Tensor:
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (sizes["batch"], sizes["time"], sizes["channels"], sizes["height"], sizes["width"])
    return torch.randint(0, 256, shape, generator=gen, device=device, dtype=torch.uint8)


@bench_case(op="motion_saliency", name="clips-224", devices=("cpu", "cuda"))
def clips_224(device: torch.device, dtype: torch.dtype) -> BenchCase:
    frames = clips(device, CLIPS)
    patch = CLIPS["patch_size"]
    impls: dict[str, Impl] = {
        "hvision": lambda: motion_saliency(frames, patch),
        "reference": lambda: reference.motion_saliency(frames, patch),
    }
    opencv = opencv_scores() if device.type == "cpu" else None
    if opencv is not None:
        as_numpy = frames.numpy()
        impls["numpy+opencv"] = lambda: opencv(as_numpy, patch)
    return BenchCase(
        shape="batch {batch}, T {time}, {channels} x {height} x {width} uint8, patch {patch_size}".format(
            **CLIPS
        ),
        impls=impls,
        mode="fwd",
        bytes_moved=frames.nbytes,
        notes="uint8 frames whatever --dtype; scores in float32",
    )
