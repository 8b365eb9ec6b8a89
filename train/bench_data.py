"""``python -m train.bench_data``: clips/s and frames/s of the video data path (decode, TSN
sampling, collation) with 0, 1, 2, ... loader workers and each decoder, on the built-in video
set or on a list file / JSON-layout folder; and, with ``--baselines``, the single-frame and
mean-frame linear classifiers on the built-in set's action labels.

    python -m train.bench_data                                  # built-in set, 16-frame clips
    python -m train.bench_data --video-frames 256 --video-size 224 --videos 64   # seek-heavy
    python -m train.bench_data --data videos/train.txt --frame-size 128,128
    python -m train.bench_data --baselines
"""

import argparse
import json
import time
from pathlib import Path

import torch

from .data import (
    ImageTensorDataset,
    SelectFields,
    VideoDataset,
    make_loader,
    read_json_split,
    read_video_list,
)
from .data.moving_shapes import (
    ACTIONS,
    DEFAULT_SIZES,
    FRAME_SIZE,
    NUM_FRAMES,
    ensure_moving_shapes,
)
from .data.pixel_baseline import linear_probe_accuracy
from .data.video import BACKENDS, decode, decord_available, open_video
from .engine.config import parse_list


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train.bench_data", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--data",
        help="a list file ('path label' lines) or a JSON-layout folder (default: built-in)",
    )
    parser.add_argument("--split", default="training", help="split of a JSON-layout folder")
    parser.add_argument("--data-dir", default="data", help="where the built-in set is cached")
    parser.add_argument(
        "--video-frames", type=int, default=NUM_FRAMES, help="frames per built-in clip"
    )
    parser.add_argument("--video-size", type=int, default=FRAME_SIZE, help="built-in frame side")
    parser.add_argument(
        "--videos",
        type=int,
        default=DEFAULT_SIZES["training"],
        help="training clips of a built-in variant",
    )
    parser.add_argument("--workers", type=parse_list, default=[0, 1, 2], help="e.g. 0,1,2")
    parser.add_argument("--backends", type=parse_list, default=list(BACKENDS))
    parser.add_argument("--num-segments", type=int, default=8)
    parser.add_argument("--clip-len", type=int, default=1)
    parser.add_argument("--frame-interval", type=int, default=1)
    parser.add_argument("--frame-size", type=parse_list, help="resize on decode to H,W")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--clips", type=int, default=480, help="clips timed per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (main process)")
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also fit linear classifiers on the (default) built-in set's middle and mean frames",
    )
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def builtin_root(args: argparse.Namespace) -> Path:
    """The built-in set as asked for; a variant (other length, side or count: a benchmark's
    training clips, one clip in the other splits) in its own folder."""
    shape = (args.video_frames, args.video_size, args.videos)
    default = (NUM_FRAMES, FRAME_SIZE, DEFAULT_SIZES["training"])
    suffix = "" if shape == default else "_{}f_{}px_{}".format(*shape)
    sizes = {} if shape == default else {"training": args.videos, "validation": 1, "test": 1}
    return ensure_moving_shapes(
        Path(args.data_dir) / f"moving_shapes{suffix}",
        sizes,
        num_frames=args.video_frames,
        frame_size=args.video_size,
    )


def records_for(args: argparse.Namespace, split: str | None = None):
    if args.data is None:
        return read_json_split(builtin_root(args), split or args.split)
    source = Path(args.data)
    return (
        read_json_split(source, split or args.split) if source.is_dir() else read_video_list(source)
    )


def measure(records, backend: str, workers: int, args: argparse.Namespace) -> dict[str, float]:
    """Throughput of one loader over ``args.clips`` clips (the first batch, which pays for the
    workers' start, is not timed)."""
    dataset = VideoDataset(
        records,
        train=True,
        num_segments=args.num_segments,
        clip_len=args.clip_len,
        frame_interval=args.frame_interval,
        frame_size=tuple(args.frame_size) if args.frame_size else None,
        backend=backend,
    )
    if len(dataset) < args.batch_size:
        raise ValueError(
            f"--batch-size {args.batch_size} is more than the {len(dataset)} videos to time"
        )
    loader = make_loader(dataset, args.batch_size, True, workers, 0, SelectFields(["frames"]))
    clips, started = 0, None
    while clips < args.clips:
        for (frames,) in loader:
            if started is None:
                started = time.perf_counter()
                continue
            clips += frames.shape[0]
            if clips >= args.clips:
                break
    seconds = time.perf_counter() - started
    return {"clips_per_s": clips / seconds, "frames_per_s": clips * dataset.clip_frames / seconds}


def _all_frames(path: Path) -> torch.Tensor:
    with open_video(path) as video:
        return decode(video, range(video.num_frames))


def frame_baselines(train_records, test_records) -> dict[str, float]:
    """Test accuracy of linear classifiers on the middle frame and on the mean frame."""
    features = {}
    for split, records in (("train", train_records), ("test", test_records)):
        clips = [_all_frames(r.path) for r in records]
        middle = torch.stack([clip[clip.shape[0] // 2] for clip in clips])
        mean = torch.stack([clip.float().mean(0).round().to(torch.uint8) for clip in clips])
        labels = torch.tensor([r.labels[0] for r in records])
        features[split] = {
            name: ImageTensorDataset(images, labels, ACTIONS)
            for name, images in (("middle_frame", middle), ("mean_frame", mean))
        }
    return {
        name: linear_probe_accuracy(features["train"][name], features["test"][name])
        for name in ("middle_frame", "mean_frame")
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    records = records_for(args)
    backends = [b for b in args.backends if b != "decord" or decord_available()]
    if backends != args.backends:
        print("decord is not installed: timing the other backends only")
    print(
        f"{len(records)} videos ({args.data or 'built-in set'}), TSN {args.num_segments} segments "
        f"x {args.clip_len} frames (interval {args.frame_interval}), batch {args.batch_size}"
    )
    print("| backend | workers | clips/s | frames/s |\n|---|---|---|---|")
    results = []
    for backend in backends:
        for workers in args.workers:
            row = {
                "backend": backend,
                "workers": workers,
                **measure(records, backend, workers, args),
            }
            results.append(row)
            print(
                f"| {backend} | {workers} | {row['clips_per_s']:.1f} | {row['frames_per_s']:.0f} |",
                flush=True,
            )
    summary: dict = {"results": results}
    if args.baselines:
        root = ensure_moving_shapes(Path(args.data_dir) / "moving_shapes")
        summary["baselines"] = frame_baselines(
            read_json_split(root, "training"), read_json_split(root, "test")
        )
        chance = 1 / len(ACTIONS)
        for name, accuracy in summary["baselines"].items():
            print(
                f"linear classifier on the {name.replace('_', ' ')}: test accuracy "
                f"{accuracy:.4f} (chance {chance:.4f})"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


def cli() -> None:
    """Console-script entry point."""
    main()


if __name__ == "__main__":
    cli()
