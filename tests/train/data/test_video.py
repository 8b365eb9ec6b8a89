import contextlib
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, TimeoutError
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from train.data import (
    AnnotationError,
    SelectFields,
    VideoDataset,
    VideoReadError,
    VideoRecord,
    collate_clips,
    read_frames,
    read_json_split,
    read_video_list,
    sample_frame_indices,
    video_info,
)
from train.data.annotations import AnnotationWarning
from train.data.video import SkippedVideoWarning, decord_available

from .conftest import FPS, HEIGHT, NUM_FRAMES, WIDTH, frames_with_moving_bar
from .test_annotations import write_split

needs_decord = pytest.mark.skipif(not decord_available(), reason="decord is not installed")


# -- sampling: the TSN rule on hand-worked cases -------------------------------------------------


@pytest.mark.parametrize(
    "num_frames, settings, expected",
    [
        # 4 segments of 25 frames: each segment's centre
        (100, {"num_segments": 4}, [12, 37, 62, 87]),
        # clips of 2 frames 2 apart: 97 starts in 4 segments of 24.25, centres 12.1, 36.4, ...
        (
            100,
            {"num_segments": 4, "clip_len": 2, "frame_interval": 2},
            [12, 14, 36, 38, 60, 62, 84, 86],
        ),
        # two views: starts at 1/4 and 3/4 of each 50-frame segment
        (100, {"num_segments": 2, "num_clips": 2}, [12, 62, 37, 87]),
        # a clip spanning 8 frames in a 5-frame video starts at 0 and loops
        (5, {"num_segments": 2, "clip_len": 4, "frame_interval": 2}, [0, 2, 4, 1, 0, 2, 4, 1]),
    ],
)
def test_test_mode_takes_segment_centres(num_frames, settings, expected):
    indices = sample_frame_indices(num_frames, mode="test", **settings)
    assert indices.dtype == torch.int64 and indices.tolist() == expected


def test_train_mode_draws_one_start_in_every_segment():
    draws = torch.stack(
        [
            sample_frame_indices(
                100, num_segments=4, mode="train", rng=torch.Generator().manual_seed(s)
            )
            for s in range(200)
        ]
    )
    for segment in range(4):  # each segment's index stays inside it and covers all of it
        column = draws[:, segment]
        assert column.min() == 25 * segment and column.max() == 25 * segment + 24
    again = sample_frame_indices(
        100, num_segments=4, mode="train", rng=torch.Generator().manual_seed(7)
    )
    assert torch.equal(again, draws[7])  # deterministic given the generator


def test_train_mode_short_videos():
    # 3 frames, 4 segments: starts spread evenly (MMAction2 rounds 0, .75, 1.5, 2.25)
    assert sample_frame_indices(3, num_segments=4, mode="train").tolist() == [0, 1, 2, 2]
    # 9 frames, 8 segments of 3-frame clips: 7 starts for 8 segments, drawn and sorted
    indices = sample_frame_indices(9, num_segments=8, clip_len=3, mode="train").view(8, 3)
    starts = indices[:, 0]
    assert torch.equal(starts, starts.sort().values) and starts.max() < 7
    assert torch.equal(indices - starts[:, None], torch.arange(3).expand(8, 3))
    # a clip longer than the video loops
    looped = sample_frame_indices(4, num_segments=1, clip_len=6, mode="train")
    assert looped.tolist() == [0, 1, 2, 3, 0, 1]


def test_temporal_jitter_stays_inside_the_interval():
    base = sample_frame_indices(200, num_segments=4, clip_len=3, frame_interval=4, mode="test")
    jittered = sample_frame_indices(
        200, num_segments=4, clip_len=3, frame_interval=4, mode="test", temporal_jitter=True
    )
    offsets = jittered - base
    assert offsets.min() >= 0 and offsets.max() < 4 and offsets.any()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_segments": 0, "mode": "train"}, "num_segments must be a positive int, got 0"),
        ({"num_segments": 2, "mode": "val"}, "mode must be one of"),
        ({"num_segments": 2, "clip_len": 1.5, "mode": "test"}, "clip_len"),
    ],
)
def test_sampling_rejects_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        sample_frame_indices(10, **settings)


# -- decoding --------------------------------------------------------------------------------


@needs_decord
def test_decord_and_opencv_return_the_same_frames(video_dir):
    indices = [0, 7, 3, 19, 7]  # out of order and repeated: both backends keep the order given
    decord_frames = read_frames(video_dir / "good.mp4", indices, backend="decord")
    opencv_frames = read_frames(video_dir / "good.mp4", indices, backend="opencv")
    assert decord_frames.shape == (5, 3, HEIGHT, WIDTH) and decord_frames.dtype == torch.uint8
    assert torch.equal(decord_frames, opencv_frames)
    # and they are the frames written (mp4v is lossy: close, in RGB order)
    written = frames_with_moving_bar()[indices].permute(0, 3, 1, 2).float()
    assert (decord_frames.float() - written).abs().mean() < 3
    assert decord_frames[1, 0, 20, 16] > 200 and decord_frames[1, 2, 20, 16] < 60  # red bar


@pytest.mark.parametrize("backend", ["decord", "opencv"])
@pytest.mark.parametrize("size", [(24, 32), (30, 40)])
def test_resize_on_read(video_dir, backend, size):
    if backend == "decord" and not decord_available():
        pytest.skip("decord is not installed")
    frames = read_frames(video_dir / "good.mp4", [2, 5], size=size, backend=backend)
    full = read_frames(video_dir / "good.mp4", [2, 5], backend="opencv").float()
    reference = torch.nn.functional.interpolate(full, size=size, mode="area")
    assert frames.shape == (2, 3, *size)
    assert (frames.float() - reference).abs().mean() < 6


@pytest.mark.parametrize("backend", ["decord", "opencv"])
def test_video_info_and_errors(video_dir, backend):
    if backend == "decord" and not decord_available():
        pytest.skip("decord is not installed")
    frames, fps = video_info(video_dir / "good.mp4", backend=backend)
    assert frames == NUM_FRAMES and fps == pytest.approx(FPS)
    for name in ("truncated.mp4", "text.mp4", "missing.mp4"):
        with pytest.raises(VideoReadError, match=name):
            read_frames(video_dir / name, [0], backend=backend)
    with pytest.raises(VideoReadError, match="outside its 20 frames"):
        read_frames(video_dir / "good.mp4", [3, 20], backend=backend)


def test_read_frames_rejects_bad_arguments(video_dir):
    with pytest.raises(ValueError, match="size must be None or"):
        read_frames(video_dir / "good.mp4", [0], size=(0, 4))
    with pytest.raises(ValueError, match="backend must be one of"):
        read_frames(video_dir / "good.mp4", [0], backend="ffmpeg")
    with pytest.raises(ValueError, match="indices must be 1-D"):
        read_frames(video_dir / "good.mp4", torch.zeros(2, 2, dtype=torch.long))


def _resident_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_resident_memory_stays_flat_over_repeated_reads(video_dir):
    def read_many(n):
        for k in range(n):
            size = (30, 40) if k % 2 else None  # resized on decode, and full size
            read_frames(video_dir / "good.mp4", [k % NUM_FRAMES, 19], size=size)

    read_many(300)  # decoder pools and caches reach their steady state
    before = _resident_mib()
    read_many(1500)
    assert _resident_mib() - before < 8


# -- the data set ----------------------------------------------------------------------------


def test_unreadable_videos_are_skipped_with_a_warning_and_counted(video_dir):
    """In training the next readable video takes an unreadable one's place."""
    names = ["good.mp4", "truncated.mp4", "text.mp4", "good2.mp4"]
    dataset = VideoDataset(
        [VideoRecord(video_dir / n, (k,)) for k, n in enumerate(names)], train=True, num_segments=4
    )
    with pytest.warns(SkippedVideoWarning) as caught:
        items = [dataset[k] for k in range(len(dataset))]
    messages = [str(w.message) for w in caught if w.category is SkippedVideoWarning]
    assert len(messages) == 2  # one per bad file, though text.mp4 was tried twice
    assert "truncated.mp4" in messages[0] and "text.mp4" in messages[1]
    assert [item["index"].item() for item in items] == [0, 3, 3, 3]  # the next good video
    assert [item["label"].item() for item in items] == [0, 3, 3, 3]
    assert dataset.take_skipped() == 3 and dataset.take_skipped() == 0


def test_evaluation_leaves_unreadable_videos_out(video_dir):
    """In evaluation an unreadable video is None, which the collates drop: no clip is scored in
    its place."""
    names = ["good.mp4", "text.mp4", "good2.mp4"]
    dataset = VideoDataset(
        [VideoRecord(video_dir / n, (k,)) for k, n in enumerate(names)], train=False, num_segments=4
    )
    with pytest.warns(SkippedVideoWarning, match="text.mp4"):
        items = [dataset[k] for k in range(len(dataset))]
    assert items[1] is None and dataset.take_skipped() == 1
    frames, labels = SelectFields(["frames", "label"])(items)
    assert frames.shape[0] == 2 and labels.tolist() == [0, 2]
    assert collate_clips([None]) is None and SelectFields(["frames"])([None]) is None


def test_skips_are_counted_across_loader_workers(video_dir):
    names = ["good.mp4", "text.mp4", "good2.mp4", "truncated.mp4"]
    dataset = VideoDataset(
        [VideoRecord(video_dir / n, (0,)) for n in names], train=True, num_segments=2
    )
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_clips)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedVideoWarning)
        batches = list(loader)
    assert sum(b["frames"].shape[0] for b in batches) == 4
    assert dataset.take_skipped() == 2


def returns_without_blocking_on(fifo: Path, call, seconds: float = 30.0):
    """``call()``'s result; fails if it is still waiting on ``fifo`` after ``seconds``, once
    its reader is released (a writer that opens and closes the FIFO gives every reader waiting
    an end of file; a decoder may open it again)."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(call)
    try:
        return future.result(timeout=seconds)
    except TimeoutError:
        while not future.done():
            with contextlib.suppress(OSError):  # no reader waiting at this moment
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            time.sleep(0.05)
        pytest.fail(f"reading {fifo} blocked for {seconds} s")
    finally:
        pool.shutdown()


@pytest.mark.parametrize("backend", ["opencv", pytest.param("decord", marks=needs_decord)])
def test_a_fifo_named_like_a_video_is_skipped_and_counted_not_waited_on(
    video_dir, tmp_path, backend
):
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    records = [VideoRecord(video_dir / "good.mp4", (0,)), VideoRecord(fifo, (1,))]
    dataset = VideoDataset(records, train=True, num_segments=2, backend=backend)
    with pytest.warns(SkippedVideoWarning, match="fifo.mp4: expected a regular file, found a FIFO"):
        item = returns_without_blocking_on(fifo, lambda: dataset[1])
    assert item["index"].item() == 0 and dataset.take_skipped() == 1


def test_a_folder_where_nothing_decodes_fails_early(video_dir):
    records = [VideoRecord(video_dir / n, (0,)) for n in ("text.mp4", "truncated.mp4")]
    with pytest.raises(VideoReadError, match="none of the first 2 videos under .* can be read"):
        VideoDataset(records, train=True)


def test_items_views_and_collation(video_dir):
    records = [
        VideoRecord(video_dir / "good.mp4", (1, 3)),
        VideoRecord(video_dir / "good2.mp4", (2,)),
    ]
    dataset = VideoDataset(
        records, train=False, num_segments=3, clip_len=2, num_clips=2, frame_size=(24, 32)
    )
    assert dataset.multi_label and dataset.num_classes == 4 and dataset.targets == ("label",)
    item = dataset[0]
    assert item["frames"].shape == (2, 6, 3, 24, 32)  # (views, segments * clip_len, C, H, W)
    assert item["label"].tolist() == [0, 1, 0, 1]
    frames, labels = SelectFields(["frames", "label"])([dataset[0], dataset[1]])
    assert frames.shape == (2, 2, 6, 3, 24, 32) and labels.shape == (2, 4)
    with pytest.raises(KeyError, match="captions"):
        SelectFields(["captions"])([item])


def test_raw_frame_folders(tmp_path):
    import cv2

    folder = tmp_path / "clip"
    folder.mkdir()
    frames = frames_with_moving_bar(6).numpy()
    for k, frame in enumerate(frames, 1):
        cv2.imwrite(str(folder / f"img_{k:05}.png"), np.ascontiguousarray(frame[..., ::-1]))
    record = VideoRecord(folder, (2,), num_frames=6, frame_template="img_{:05}.png")
    item = VideoDataset([record], train=False, num_segments=3)[0]
    expected = torch.from_numpy(frames[[1, 3, 5]]).permute(0, 3, 1, 2)
    assert torch.equal(item["frames"], expected)  # png: lossless
    short = VideoRecord(folder, (2,), num_frames=9, frame_template="img_{:05}.png")
    dataset = VideoDataset([short, record], train=True, num_segments=9)
    with pytest.warns(SkippedVideoWarning, match="img_00007.png: cannot open"):
        assert dataset[0]["index"].item() == 1


def test_without_decord_opencv_decodes_after_one_warning(video_dir, monkeypatch):
    from train.data import video

    monkeypatch.setattr(video, "_decord", lambda: None)
    video._warn_once.cache_clear()
    with pytest.warns(video.DecordFallbackWarning, match="decord is not installed"):
        frames = read_frames(video_dir / "good.mp4", [1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every read
        assert torch.equal(read_frames(video_dir / "good.mp4", [1, 2]), frames)
    with pytest.raises(ImportError, match="backend='decord' but decord is not installed"):
        read_frames(video_dir / "good.mp4", [0], backend="decord")
    video._warn_once.cache_clear()


def test_a_stray_huge_label_is_named_before_the_classes_are_counted(video_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{video_dir / 'good.mp4'} 0\n{video_dir / 'good2.mp4'} 1000000000\n")
    message = (
        r"list.txt, line 2 \(.*good2.mp4\): label 1000000000 would make 1000000001 classes "
        r"from 2 distinct labels \(at most 10 are inferred\); give num_classes"
    )
    with pytest.raises(AnnotationError, match=message):
        VideoDataset(read_video_list(listing), train=True)


def test_actions_past_the_end_of_their_video_are_named(video_dir, tmp_path):
    videos = tmp_path / "training" / "videos"
    videos.mkdir(parents=True)
    entries = []
    for k, end in enumerate((2.5, 9.5)):  # good.mp4 lasts 2.5 s: 20 frames at 8 fps
        (videos / f"clip{k}.mp4").symlink_to(video_dir / "good.mp4")
        entries.append({"video_id": f"clip{k}", "actions": [{"start": 1, "end": end, "label": 0}]})
    write_split(tmp_path, action_detection=entries)
    dataset = VideoDataset(read_json_split(tmp_path, "training"), train=False, num_segments=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnnotationWarning)  # an action up to the end is fine
        dataset[0]
    message = (
        r"action_detection.json, entry 1 \(.*clip1.mp4\): actions \[0\] end after the "
        r"video's 2.50 s \(20 frames at 8 fps\), action 0 at 9.5 s"
    )
    with pytest.warns(AnnotationWarning, match=message):
        dataset[1]


def test_targets_outside_the_classes_or_domains_are_rejected(video_dir):
    record = VideoRecord(video_dir / "good.mp4", (5,), domain="news", source="list.txt, line 4")
    with pytest.raises(
        AnnotationError,
        match=r"list.txt, line 4 \(.*good.mp4\): label 5 is outside \[0, num_classes=3\)",
    ):
        VideoDataset([record], train=True, num_classes=3)
    with pytest.raises(ValueError, match=r"domains \['news'\] are not among"):
        VideoDataset([record], train=True, domains=["sports"])
