"""Small videos the video-data tests share: a written mp4 whose frames differ, broken files, and
a small instance of the built-in video set."""

import pytest
import torch

from train.data.moving_shapes import ensure_moving_shapes, write_mp4

NUM_FRAMES, HEIGHT, WIDTH, FPS = 20, 48, 64, 8
SMALL_SIZES = {"training": 24, "validation": 12, "test": 12}


def frames_with_moving_bar(num_frames: int = NUM_FRAMES) -> torch.Tensor:
    """uint8 (T, H, W, 3): a grey level rising with t and a red bar moving right."""
    frames = torch.zeros(num_frames, HEIGHT, WIDTH, 3, dtype=torch.uint8)
    for t in range(num_frames):
        frames[t] = 10 * t
        frames[t, 10:30, 2 * t : 2 * t + 8] = torch.tensor([230, 20, 20], dtype=torch.uint8)
    return frames


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    """good.mp4 and good2.mp4 (20 frames of 48×64 at 8 fps), truncated.mp4 (good.mp4 cut in
    half), text.mp4 (a text file)."""
    folder = tmp_path_factory.mktemp("videos")
    write_mp4(folder / "good.mp4", frames_with_moving_bar(), FPS)
    write_mp4(folder / "good2.mp4", frames_with_moving_bar().flip(2), FPS)
    data = (folder / "good.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "text.mp4").write_text("not a video\n")
    return folder


@pytest.fixture(scope="session")
def small_builtin(tmp_path_factory):
    """A small instance of the built-in video set."""
    return ensure_moving_shapes(tmp_path_factory.mktemp("moving_shapes"), SMALL_SIZES, seed=1)


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one torch thread is faster, and does not fight other jobs for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
