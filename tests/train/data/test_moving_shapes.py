import json

import pytest
import torch

from train.data import collate_clips, ensure_moving_shapes, load_moving_shapes, read_json_split
from train.data.moving_shapes import (
    ACTIONS,
    COLOURS,
    DOMAINS,
    GENERATOR_VERSION,
    SHAPE_NAMES,
    render_clip,
)

from .conftest import SMALL_SIZES


def centre_of_change(frames):
    """Mean pixel position (x, y) of the pixels that differ from the first frame, per frame."""
    grey = frames.float().mean(-1)
    changed = (grey - grey[0]).abs() > 30
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    weight = changed.float().sum((1, 2)).clamp_min(1)
    return (changed * xs).sum((1, 2)) / weight, (changed * ys).sum((1, 2)) / weight


def clip_of(action, seed=0):
    """The first generated clip with ``action`` (a fresh generator per seed)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        frames, note = render_clip(gen)
        if ACTIONS[note["label"]] == action:
            return frames, note


def test_clips_move_as_their_label_says():
    frames, note = clip_of("stand_still")
    assert torch.equal(frames, frames[:1].expand_as(frames))
    frames, note = clip_of("move_right")
    first, last = note["start"], note["start"] + note["length"] - 1
    assert torch.equal(
        frames[: first + 1], frames[:1].expand(first + 1, -1, -1, -1)
    )  # still before
    assert torch.equal(frames[last:], frames[last : last + 1].expand_as(frames[last:]))  # and after
    x, y = centre_of_change(frames)
    assert x[last] > x[first + 2] + 5 and abs(y[last] - y[first + 2]) < 3


def test_annotations_follow_the_templates():
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        frames, note = render_clip(gen)
        assert frames.shape == (16, 64, 64, 3) and frames.dtype == torch.uint8
        assert 8 <= note["length"] <= 16 and note["start"] + note["length"] <= 16
        assert note["domain"] in DOMAINS and 2 <= len(note["qa_pairs"]) <= 3
        shape, colour = (pair["answer"] for pair in note["qa_pairs"][:2])
        assert shape in SHAPE_NAMES and colour in COLOURS
        assert f"{colour} {shape}" in note["caption"]


def test_builtin_set_is_cached_with_a_manifest(small_builtin):
    manifest = json.loads((small_builtin / "manifest.json").read_text())
    assert manifest["generator_version"] == GENERATOR_VERSION and manifest["seed"] == 1
    assert manifest["sizes"] == SMALL_SIZES
    for split, size in SMALL_SIZES.items():
        assert len(list((small_builtin / split / "videos").glob("*.mp4"))) == size
    video = small_builtin / "test" / "videos" / "clip_00000.mp4"
    stamp = video.stat().st_mtime_ns
    ensure_moving_shapes(small_builtin, SMALL_SIZES, seed=1)  # same settings: reused
    assert video.stat().st_mtime_ns == stamp


def test_builtin_set_is_seeded_and_regenerated_when_the_seed_changes(tmp_path):
    sizes = {"training": 3, "validation": 2, "test": 2}
    ensure_moving_shapes(tmp_path / "a", sizes, seed=5)
    ensure_moving_shapes(tmp_path / "b", sizes, seed=5)
    notes = [(tmp_path / d / "test/annotations/video_captioning.json").read_text() for d in "ab"]
    assert notes[0] == notes[1]
    ensure_moving_shapes(tmp_path / "a", sizes, seed=6)
    assert json.loads((tmp_path / "a/manifest.json").read_text())["seed"] == 6
    assert (tmp_path / "a/test/annotations/video_captioning.json").read_text() != notes[1]
    with pytest.raises(ValueError, match="sizes must map"):
        ensure_moving_shapes(tmp_path / "c", {"train": 3})


def test_load_moving_shapes_gives_engine_ready_clips(small_builtin):
    dataset = load_moving_shapes(
        small_builtin, "training", sizes=SMALL_SIZES, seed=1, num_segments=8
    )
    assert dataset.mode == "train" and dataset.classes == ACTIONS and dataset.domains == DOMAINS
    batch = collate_clips([dataset[0], dataset[1]])
    assert batch["frames"].shape == (2, 8, 3, 64, 64) and batch["frames"].dtype == torch.uint8
    assert batch["label"].shape == (2,) and len(batch["qa"]) == 2
    assert len(read_json_split(small_builtin, "training")) == SMALL_SIZES["training"]
