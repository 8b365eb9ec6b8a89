"""The built-in video data set: seeded clips of one shape whose twelve action classes differ only
in motion, written as real mp4 files (OpenCV, ``mp4v``) in the JSON annotation layout.

Each clip shows one shape (square, triangle, plus, star, bar, crescent, frame or half-disk) in a
named colour over one of four background styles (the domains: a sports field, a tutorial's
whiteboard, a news screen, a general colour field). The shape stands still, performs its action
during a random part of the clip (8 frames up to the whole clip), and stands still again. Shape,
colour, position, size and domain are drawn independently of the action, so a single frame or the
mean frame tells nothing about the label; only motion does. Each clip also has its action's
segment, two or three question/answer pairs and a caption.

Generated once into a cache folder with a manifest (generator version, seed, sizes) and made
again when any of them changes.
"""

import fcntl
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import torch
import torch.nn.functional as F
from torch import Tensor

from .annotations import JSON_FILES, SPLITS, read_json_split
from .shapes import SHAPES
from .video import VideoDataset

GENERATOR_VERSION = 1
NUM_FRAMES = 16
FRAME_SIZE = 64
FPS = 8
DEFAULT_SIZES = {"training": 960, "validation": 240, "test": 240}
SUPERSAMPLING = 2  # shapes are drawn at twice the resolution and averaged: smooth motion

ACTIONS = (
    "move_right",
    "move_left",
    "move_up",
    "move_down",
    "rotate_clockwise",
    "rotate_anticlockwise",
    "grow",
    "shrink",
    "bounce_horizontal",
    "bounce_vertical",
    "circle",
    "stand_still",
)
ACTION_PHRASES = {
    "move_right": "moves to the right",
    "move_left": "moves to the left",
    "move_up": "moves up",
    "move_down": "moves down",
    "rotate_clockwise": "turns clockwise",
    "rotate_anticlockwise": "turns anticlockwise",
    "grow": "grows",
    "shrink": "shrinks",
    "bounce_horizontal": "moves sideways and back",
    "bounce_vertical": "moves up or down and back",
    "circle": "moves in a circle",
    "stand_still": "stands still",
}
DIRECTIONS = {"move_right": (1, 0), "move_left": (-1, 0), "move_up": (0, -1), "move_down": (0, 1)}
SHAPE_NAMES = ("square", "triangle", "plus", "star", "bar", "crescent", "frame", "half-disk")
COLOURS = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.16, 0.7, 0.24),
    "blue": (0.16, 0.27, 0.86),
    "yellow": (0.92, 0.84, 0.16),
    "magenta": (0.82, 0.2, 0.78),
    "cyan": (0.16, 0.78, 0.82),
    "orange": (0.94, 0.55, 0.12),
    "white": (0.96, 0.96, 0.96),
    "black": (0.06, 0.06, 0.06),
}
DOMAINS = ("sports", "tutorials", "news", "general")
PLACES = {
    "sports": "on a playing field",
    "tutorials": "on a whiteboard",
    "news": "on a news screen",
    "general": "on a coloured background",
}
MIN_CONTRAST = 0.45  # RGB distance between the shape's colour and the background's mean


# -- one clip -----------------------------------------------------------------------------------


def _uniform(low: float, high: float, gen: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def _choice(options: Sequence[Any], gen: torch.Generator) -> Any:
    return options[torch.randint(len(options), (), generator=gen).item()]


def _grid(size: int) -> tuple[Tensor, Tensor]:
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) * FRAME_SIZE / size
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    return xs, ys


def _background(domain: str, size: int, gen: torch.Generator) -> Tensor:
    """A static (3, size, size) background in the domain's style, its colours jittered."""
    xs, ys = _grid(size)
    jitter = torch.rand(3, 1, 1, generator=gen) * 0.16 - 0.08
    if domain == "sports":  # mown grass stripes and a white field line
        stripe = _uniform(5, 10, gen)
        grass = torch.tensor([0.2, 0.55, 0.22])[:, None, None] + jitter
        field = grass * (1 + 0.12 * torch.sign(torch.sin(math.pi * ys / stripe)))
        line = (xs - _uniform(8, 56, gen)).abs() < 0.8
        return torch.where(line, torch.tensor(0.95), field).clamp(0, 1)
    if domain == "tutorials":  # a whiteboard with a faint grid
        pitch, offset = _uniform(7, 11, gen), _uniform(0, 8, gen)
        board = torch.full((3, 1, 1), 0.9) + jitter / 2
        grid = ((xs + offset) % pitch < 0.7) | ((ys + offset) % pitch < 0.7)
        return torch.where(grid, board - 0.2, board.expand(3, size, size)).clamp(0, 1)
    if domain == "news":  # a dark blue studio gradient and a lower-third banner
        top = torch.tensor([0.05, 0.1, 0.35])[:, None, None] + jitter
        studio = top + 0.2 * ys / FRAME_SIZE
        banner_top = _uniform(46, 52, gen)
        banner = (ys > banner_top) & (ys < banner_top + 9)
        red = torch.tensor([0.75, 0.1, 0.1])[:, None, None]
        return torch.where(banner, red, studio).clamp(0, 1)
    base = torch.rand(3, 1, 1, generator=gen) * 0.6 + 0.2  # general: a smooth colour field
    variation = F.interpolate(
        torch.rand(1, 3, 4, 4, generator=gen) - 0.5, size=(size, size), mode="bilinear"
    )[0]
    return (base + 0.4 * variation).clamp(0, 1)


@dataclass
class Motion:
    """Per-frame centre (T, 2) in pixels, radius (T,) and angle (T,) of the shape."""

    centre: Tensor
    radius: Tensor
    angle: Tensor


def _progress(num_frames: int, start: int, length: int) -> Tensor:
    """0 before the action, rising linearly to 1 over it, 1 after."""
    t = torch.arange(num_frames, dtype=torch.float32)
    return ((t - start) / max(length - 1, 1)).clamp(0, 1)


def _motion(action: str, progress: Tensor, gen: torch.Generator) -> Motion:
    """The shape's path for ``action``; the path's midpoint, size and start angle are drawn the
    same way for every action, so where the shape is says nothing about what it does."""
    radius0 = _uniform(7, 10, gen)
    distance = _uniform(14, 22, gen)
    margin = 0.5 * distance + 1.4 * radius0
    middle = torch.tensor([_uniform(margin, FRAME_SIZE - margin, gen) for _ in range(2)])
    angle0 = _uniform(-math.pi, math.pi, gen)
    offset = torch.zeros(progress.shape[0], 2)
    scale = torch.ones_like(progress)
    turn = torch.zeros_like(progress)
    if action in DIRECTIONS:
        offset = (progress - 0.5)[:, None] * distance * torch.tensor(DIRECTIONS[action])
    elif action.startswith("bounce"):
        axis = torch.tensor([1.0, 0.0] if action.endswith("horizontal") else [0.0, 1.0])
        there_and_back = 1 - (2 * progress - 1).abs()
        sign = _choice((-1.0, 1.0), gen)
        offset = (there_and_back - 0.5)[:, None] * sign * distance * 0.6 * axis
    elif action == "circle":
        phase = _uniform(0, 2 * math.pi, gen) + 2 * math.pi * progress
        offset = torch.stack([phase.cos(), phase.sin()], -1) * distance * 0.35
    elif action.startswith("rotate"):
        sweep = _uniform(math.pi / 2, math.pi, gen)
        turn = progress * sweep * (1 if action.endswith("_clockwise") else -1)
    elif action in ("grow", "shrink"):
        growth = progress if action == "grow" else 1 - progress
        scale = 0.7 + 0.6 * growth
    return Motion(middle + offset, radius0 * scale, angle0 + turn)


def _coverage(shape: str, motion: Motion, size: int) -> Tensor:
    """Fraction of each pixel the shape covers, per frame: (T, FRAME_SIZE, FRAME_SIZE)."""
    xs, ys = _grid(size * SUPERSAMPLING)
    dx = xs - motion.centre[:, 0, None, None]
    dy = ys - motion.centre[:, 1, None, None]
    cos, sin = motion.angle.cos()[:, None, None], motion.angle.sin()[:, None, None]
    radius = motion.radius[:, None, None]
    inside = SHAPES[shape]((dx * cos + dy * sin) / radius, (-dx * sin + dy * cos) / radius)
    return F.avg_pool2d(inside.float()[:, None], SUPERSAMPLING)[:, 0]


def _colour_against(background: Tensor, gen: torch.Generator) -> str:
    """A colour name that stands out from the background (first in a random order)."""
    mean = background.mean(dim=(1, 2))
    names = list(COLOURS)
    order = torch.randperm(len(names), generator=gen).tolist()
    for k in order:
        if torch.dist(torch.tensor(COLOURS[names[k]]), mean) >= MIN_CONTRAST:
            return names[k]
    return max(names, key=lambda n: torch.dist(torch.tensor(COLOURS[n]), mean).item())


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _caption(
    shape: str, colour: str, action: str, domain: str, start: int, gen: torch.Generator
) -> str:
    subject = f"{_article(colour)} {colour} {shape}"
    phrase, place = ACTION_PHRASES[action], PLACES[domain]
    templates = [
        f"{subject.capitalize()} {phrase} {place}.",
        f"{place.capitalize()}, {subject} {phrase}.",
        f"{subject.capitalize()} {'waits, then ' if start > 0 else ''}{phrase}.",
    ]
    return _choice(templates, gen)


def _qa_pairs(shape: str, colour: str, action: str) -> list[dict[str, str]]:
    pairs = [
        {"question": "What shape is in the video?", "answer": shape},
        {"question": f"What colour is the {shape}?", "answer": colour},
    ]
    if action in DIRECTIONS:
        pairs.append({"question": f"Which direction does the {shape} move?", "answer": action[5:]})
    elif action.startswith("rotate"):
        pairs.append({"question": f"Which way does the {shape} turn?", "answer": action[7:]})
    return pairs


def render_clip(
    gen: torch.Generator, num_frames: int = NUM_FRAMES, size: int = FRAME_SIZE
) -> tuple[Tensor, dict[str, Any]]:
    """One random clip, uint8 (T, size, size, 3) RGB, and its annotations (action label, its
    first frame and length, shape, colour, domain, QA pairs, caption)."""
    label = torch.randint(len(ACTIONS), (), generator=gen).item()
    action, shape, domain = ACTIONS[label], _choice(SHAPE_NAMES, gen), _choice(DOMAINS, gen)
    length = torch.randint(min(8, num_frames), num_frames + 1, (), generator=gen).item()
    start = torch.randint(num_frames - length + 1, (), generator=gen).item()
    motion = _motion(action, _progress(num_frames, start, length), gen)
    background = _background(domain, size, gen)
    colour = _colour_against(background, gen)
    alpha = _coverage(shape, motion, size)[:, None]  # (T, 1, H, W)
    frames = alpha * torch.tensor(COLOURS[colour])[:, None, None] + (1 - alpha) * background
    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    annotation = {
        "label": label,
        "start": start,
        "length": length,
        "domain": domain,
        "qa_pairs": _qa_pairs(shape, colour, action),
        "caption": _caption(shape, colour, action, domain, start, gen),
    }
    return pixels.contiguous(), annotation


# -- the cached data set -----------------------------------------------------------------------


def write_mp4(path: Path, frames: Tensor, fps: float) -> None:
    """uint8 (T, H, W, 3) RGB frames as an mp4 (MPEG-4 part 2) file."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write mp4 video {path} (no mp4v encoder?)")
    for frame in frames.numpy():
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def _write_split(folder: Path, count: int, seed: int, num_frames: int, size: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    (folder / "videos").mkdir(parents=True)
    (folder / "annotations").mkdir()
    detection, qa, captions = [], [], []
    for k in range(count):
        video_id = f"clip_{k:05d}"
        frames, note = render_clip(gen, num_frames, size)
        write_mp4(folder / "videos" / f"{video_id}.mp4", frames, FPS)
        start, end = note["start"] / FPS, (note["start"] + note["length"]) / FPS
        action = {"start": start, "end": end, "label": note["label"]}
        detection.append({"video_id": video_id, "actions": [action], "domain": note["domain"]})
        qa.append({"video_id": video_id, "qa_pairs": note["qa_pairs"]})
        captions.append({"video_id": video_id, "captions": [note["caption"]]})
    for name, entries in zip(JSON_FILES, (detection, qa, captions)):
        (folder / "annotations" / name).write_text(json.dumps(entries, indent=1))


@contextmanager
def _one_thread() -> Iterator[None]:
    """Per-clip tensors are small: intra-op threads cost more than they save (10× on a busy
    2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ensure_moving_shapes(
    root: str | Path,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    num_frames: int = NUM_FRAMES,
    frame_size: int = FRAME_SIZE,
) -> Path:
    """The built-in set under ``root`` (made there unless a manifest with the same generator
    version, seed and sizes is found); returns ``root``. Safe to call from several processes."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown or any(not isinstance(n, int) or n < 1 for n in sizes.values()):
        raise ValueError(f"sizes must map {SPLITS} to positive ints, got {sizes}")
    if num_frames < 1 or frame_size < 16:
        raise ValueError(
            f"need num_frames >= 1 and frame_size >= 16, got {num_frames}, {frame_size}"
        )
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "sizes": sizes,
        "num_frames": num_frames,
        "frame_size": frame_size,
        "fps": FPS,
    }
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process generates, the others wait and reuse
        manifest_path = root / "manifest.json"
        if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
            return root
        manifest_path.unlink(missing_ok=True)  # a half-written set is never taken for whole
        with _one_thread():
            for k, split in enumerate(SPLITS):
                shutil.rmtree(root / split, ignore_errors=True)
                split_seed = seed * len(SPLITS) + k
                _write_split(root / split, sizes[split], split_seed, num_frames, frame_size)
        manifest_path.write_text(json.dumps(manifest, indent=1))
    return root


def load_moving_shapes(
    root: str | Path,
    split: str,
    *,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    num_frames: int = NUM_FRAMES,
    frame_size: int = FRAME_SIZE,
    **dataset_args: Any,
) -> VideoDataset:
    """A split of the built-in set as a ``VideoDataset`` (made first when needed);
    ``dataset_args`` go to ``VideoDataset`` (``train`` defaults to ``split == "training"``)."""
    ensure_moving_shapes(root, sizes, seed, num_frames, frame_size)
    dataset_args.setdefault("train", split == "training")
    return VideoDataset(
        read_json_split(root, split),
        num_classes=len(ACTIONS),
        classes=ACTIONS,
        domains=DOMAINS,
        **dataset_args,
    )
