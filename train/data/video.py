"""Video clips for the training jobs: decoding (decord, OpenCV's ``VideoCapture`` as fallback),
TSN segment sampling, and ``VideoDataset``, which yields uint8 clips with whichever targets the
annotations hold and skips (and counts) videos that cannot be read."""

import copy
import functools
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import torch
from torch import Tensor

from .annotations import AnnotationError, AnnotationWarning, VideoRecord
from .unreadable import (
    SkippedFileWarning,
    SkipsUnreadable,
    UnreadableError,
    check_regular_file,
)

BACKENDS = ("decord", "opencv")
SAMPLING_MODES = ("train", "test")
MIN_INFERRED_CLASSES = 10  # a class count inferred from few labels may reach this


class VideoReadError(UnreadableError):
    """A video (or frame folder) that cannot be opened or decoded."""


class SkippedVideoWarning(SkippedFileWarning):
    """A data set skipped an unreadable video."""


class DecordFallbackWarning(UserWarning):
    """decord is missing or fails on a video: OpenCV decodes (or resizes) instead."""


# -- decoding ---------------------------------------------------------------------------------


@functools.cache
def _decord() -> Any:
    """The decord module, or None when it cannot be imported."""
    try:
        import decord
    except ImportError:
        return None
    return decord


def decord_available() -> bool:
    return _decord() is not None


def default_backend() -> str:
    """decord when it imports; otherwise OpenCV, with a warning (once per process)."""
    if decord_available():
        return "decord"
    _warn_once(
        "decord is not installed: decoding videos with OpenCV's VideoCapture instead "
        "(it decodes every frame up to the last one sampled); pip install decord2"
    )
    return "opencv"


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, DecordFallbackWarning, stacklevel=3)


def _resize(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(T, H, W, 3) uint8 frames resized to ``size`` = (h, w) with area interpolation."""
    if size is None or frames.shape[1:3] == size:
        return frames
    height, width = size
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


class Video(Protocol):
    """An open video: its length, frame rate, and frames by index as (T, H, W, 3) RGB uint8."""

    num_frames: int
    fps: float | None

    def get(self, indices: list[int]) -> np.ndarray: ...

    def close(self) -> None: ...


class _DecordVideo:
    # Sizes decord's decode-time resize got wrong in this process: decoded at full size from
    # then on. decord pads RGB rows for some frame widths and then fails to copy the frames out.
    broken_sizes: set[tuple[int, int]] = set()

    def __init__(self, path: Path, size: tuple[int, int] | None):
        self.path, self.size = path, size
        resize_on_decode = size is not None and size not in self.broken_sizes
        self._reader = self._open(size if resize_on_decode else None)
        self._resized = resize_on_decode
        self.num_frames = len(self._reader)
        self.fps = self._reader.get_avg_fps()

    def _open(self, size: tuple[int, int] | None) -> Any:
        decord = _decord()
        dims = {} if size is None else {"height": size[0], "width": size[1]}
        try:
            return decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=1, **dims)
        except Exception as error:  # decord raises its own error types from C++
            raise VideoReadError(f"{self.path}: cannot open ({_first_line(error)})") from error

    def get(self, indices: list[int]) -> np.ndarray:
        try:
            frames = self._reader.get_batch(indices).asnumpy()
        except Exception as error:
            if not self._resized:
                return self._decode_with_opencv(indices, error)
            frames = None
        if self._resized and (frames is None or frames.shape[1:] != (*self.size, 3)):
            self._fall_back_to_full_size()
            return self.get(indices)
        return _resize(frames, self.size)

    def _decode_with_opencv(self, indices: list[int], error: Exception) -> np.ndarray:
        """decord also fails on some narrow frames (the same row padding): OpenCV decodes
        those; a file neither decodes is unreadable."""
        _warn_once("decord failed on a video: decoding it with OpenCV instead")
        video = _OpenCVVideo(self.path, self.size)
        try:
            return video.get(indices)
        except VideoReadError as opencv_error:
            reason = f"decord: {_first_line(error)}; OpenCV: {opencv_error}"
            raise VideoReadError(f"{self.path}: cannot decode ({reason})") from error
        finally:
            video.close()

    def _fall_back_to_full_size(self) -> None:
        _warn_once(
            f"decord could not resize to {self.size} on decode: decoding at full size and "
            "resizing afterwards"
        )
        self.broken_sizes.add(self.size)
        self.close()
        self._reader, self._resized = self._open(None), False

    def close(self) -> None:
        # decord keeps decoder buffers alive while a reader exists: drop it right after use.
        self._reader = None


class _OpenCVVideo:
    def __init__(self, path: Path, size: tuple[int, int] | None):
        self.path, self.size = path, size
        self._capture = cv2.VideoCapture(str(path))
        if not self._capture.isOpened():
            raise VideoReadError(f"{path}: cannot open")
        self.num_frames = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or None

    def get(self, indices: list[int]) -> np.ndarray:
        # Decoded in order from the start: VideoCapture's seeks are not frame-exact on every codec.
        decoded: dict[int, np.ndarray] = {}
        position = 0
        for index in sorted(set(indices)):
            while position < index:
                if not self._capture.grab():
                    raise VideoReadError(f"{self.path}: cut short before frame {index}")
                position += 1
            ok, frame = self._capture.read()
            if not ok:
                raise VideoReadError(f"{self.path}: cannot decode frame {index}")
            position += 1
            decoded[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return _resize(np.stack([decoded[i] for i in indices]), self.size)

    def close(self) -> None:
        self._capture.release()


class _FrameFolder:
    """A video stored as images ``dir/img_00001.jpg`` ... (MMAction2's raw-frame layout)."""

    def __init__(self, path: Path, size: tuple[int, int] | None, num_frames: int, template: str):
        if not path.is_dir():
            raise VideoReadError(f"{path}: frame folder does not exist")
        self.path, self.size, self.num_frames, self.fps = path, size, num_frames, None
        self.template = template

    def get(self, indices: list[int]) -> np.ndarray:
        frames = []
        for index in indices:
            path = self.path / self.template.format(index + 1)
            check_regular_file(path, VideoReadError)
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise VideoReadError(f"{self.path}: cannot read frame {index + 1}")
            frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        if len({f.shape for f in frames}) > 1:
            raise VideoReadError(f"{self.path}: frames differ in size")
        return _resize(np.stack(frames), self.size)

    def close(self) -> None:
        pass


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and s > 0 for s in size)
    ):
        raise ValueError(f"size must be None or (height, width) of positive ints, got {size!r}")
    return tuple(size)


def _check_backend(backend: str | None) -> str:
    if backend is None:
        return default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "decord" and not decord_available():
        raise ImportError("backend='decord' but decord is not installed (pip install decord2)")
    return backend


@contextmanager
def open_video(
    path: str | Path,
    size: tuple[int, int] | None = None,
    backend: str | None = None,
    *,
    frame_template: str | None = None,
    num_frames: int | None = None,
) -> Iterator[Video]:
    """An open video, released on exit (one reader per read; long-lived decord readers leak).

    A frame folder (``frame_template`` given, e.g. ``img_{:05}.jpg``) needs ``num_frames``.
    Raises ``VideoReadError`` when the video cannot be opened or has no frames.
    """
    path, size = Path(path), _check_size(size)
    if frame_template is not None:
        video: Video = _FrameFolder(path, size, num_frames or 0, frame_template)
    else:
        opener = _DecordVideo if _check_backend(backend) == "decord" else _OpenCVVideo
        check_regular_file(path, VideoReadError)
        video = opener(path, size)
    try:
        if video.num_frames <= 0:
            raise VideoReadError(f"{path}: no frames")
        yield video
    finally:
        video.close()


def decode(video: Video, indices: Tensor | Sequence[int]) -> Tensor:
    """Frames of an open video as a uint8 tensor (T, 3, H, W), RGB."""
    index_list = [int(i) for i in indices]
    if not index_list:
        raise ValueError("indices must name at least one frame, got none")
    outside = [i for i in index_list if not 0 <= i < video.num_frames]
    if outside:
        raise VideoReadError(
            f"{video.path}: frame indices {outside[:4]} outside its {video.num_frames} frames"
        )
    frames = video.get(index_list)
    if frames.ndim != 4 or frames.shape[0] != len(index_list) or frames.shape[-1] != 3:
        raise VideoReadError(f"{video.path}: decoded frames have shape {frames.shape}")
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()


def read_frames(
    path: str | Path,
    indices: Tensor | Sequence[int],
    size: tuple[int, int] | None = None,
    backend: str | None = None,
) -> Tensor:
    """Frames ``indices`` of the video at ``path`` as uint8 (T, 3, H, W), RGB; resized to
    ``size`` = (h, w) when given (by decord on decode)."""
    if isinstance(indices, Tensor) and indices.dim() != 1:
        raise ValueError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
    with open_video(path, size, backend) as video:
        return decode(video, indices)


def video_info(path: str | Path, backend: str | None = None) -> tuple[int, float | None]:
    """(frame count, frames per second) of the video at ``path``."""
    with open_video(path, backend=backend) as video:
        return video.num_frames, video.fps


# -- sampling ---------------------------------------------------------------------------------


def _test_starts(num_frames: int, num_segments: int, span: int, position: float) -> Tensor:
    """Clip starts at ``position`` (0-1) of each segment (MMAction2's ``SampleFrames`` rule)."""
    room = num_frames - span + 1  # valid clip starts: 0 .. room - 1
    if room <= 0:
        return torch.zeros(num_segments, dtype=torch.int64)
    segment = room / num_segments
    return (torch.arange(num_segments, dtype=torch.float64) * segment + segment * position).long()


def _train_starts(
    num_frames: int, num_segments: int, span: int, rng: torch.Generator | None
) -> Tensor:
    """A random clip start in each segment (MMAction2's ``SampleFrames`` rule)."""
    room = num_frames - span + 1
    length = room // num_segments
    if length > 0:  # a random start inside each equal segment
        offsets = torch.randint(length, (num_segments,), generator=rng)
        return torch.arange(num_segments) * length + offsets
    if num_frames > max(num_segments, span):  # fewer starts than segments: sorted random starts
        return torch.randint(room, (num_segments,), generator=rng).sort().values
    if room > 0:  # spread the few starts evenly
        return (
            (torch.arange(num_segments, dtype=torch.float64) * room / num_segments).round().long()
        )
    return torch.zeros(num_segments, dtype=torch.int64)


def sample_frame_indices(
    num_frames: int,
    *,
    num_segments: int,
    clip_len: int = 1,
    frame_interval: int = 1,
    mode: Literal["train", "test"],
    rng: torch.Generator | None = None,
    num_clips: int = 1,
    temporal_jitter: bool = False,
) -> Tensor:
    """TSN sampling: the video split into ``num_segments`` equal segments, a clip of
    ``clip_len`` frames ``frame_interval`` apart in each, at a random start in training and at the
    segment's centre in testing. Indices past the end loop back to the start (short videos).

    ``num_clips`` > 1 samples that many views, one after another (in testing the k-th view's
    clips sit at (k + 1/2) / num_clips of each segment, so one view is the centre);
    ``temporal_jitter`` adds a random offset below ``frame_interval`` to every frame.
    Returns int64 indices of shape (num_clips * num_segments * clip_len,), each view in time
    order.
    """
    for name, value in (
        ("num_frames", num_frames),
        ("num_segments", num_segments),
        ("clip_len", clip_len),
        ("frame_interval", frame_interval),
        ("num_clips", num_clips),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if mode not in SAMPLING_MODES:
        raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}")
    span = clip_len * frame_interval
    views = []
    for view in range(num_clips):
        if mode == "test":
            starts = _test_starts(num_frames, num_segments, span, (view + 0.5) / num_clips)
        else:
            starts = _train_starts(num_frames, num_segments, span, rng)
        views.append(starts[:, None] + torch.arange(clip_len) * frame_interval)
    indices = torch.stack(views).flatten(1)
    if temporal_jitter and frame_interval > 1:
        indices = indices + torch.randint(frame_interval, indices.shape, generator=rng)
    return (indices % num_frames).flatten()


# -- the data set -----------------------------------------------------------------------------


class VideoDataset(SkipsUnreadable):
    """Clips of the videos in ``records``, one item per video: a dict with

    - ``frames``: uint8 (T, 3, H, W), T = num_segments * clip_len ((num_clips, T, 3, H, W) when
      ``num_clips`` > 1), decoded in the loader's workers;
    - ``index``: which record the clip came from (an unreadable one is replaced by the next);
    - and whichever targets the annotations hold: ``label`` (int64, or a multi-hot float vector
      for multi-label lists), ``frame_labels`` (the action label of each sampled frame, -1
      outside every action), ``segments`` ((K, 2) start/end in frames) with ``segment_labels``,
      ``qa`` (list of (question, answer)), ``captions`` (list of str), ``domain`` (int64 index
      into ``domains``).

    A video that cannot be read is skipped with one warning naming it and counted
    (``take_skipped``): in training the next readable one takes its place, in evaluation the
    item is None, which the collates drop. If none of the first ``probe`` videos open,
    construction fails.
    """

    skipped_warning = SkippedVideoWarning

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        train: bool,
        num_segments: int = 8,
        clip_len: int = 1,
        frame_interval: int = 1,
        num_clips: int = 1,
        temporal_jitter: bool = False,
        frame_size: tuple[int, int] | None = None,
        backend: str | None = None,
        num_classes: int | None = None,
        domains: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        probe: int = 8,
    ):
        if not records:
            raise ValueError("records must hold at least one video, got none")
        super().__init__(train)
        self.records = list(records)
        self.sampling = {
            "num_segments": num_segments,
            "clip_len": clip_len,
            "frame_interval": frame_interval,
            "num_clips": num_clips,
            "temporal_jitter": temporal_jitter,
        }
        sample_frame_indices(1, mode=self.mode, **self.sampling)  # validates the settings
        self.frame_size = _check_size(frame_size)
        self.backend = _check_backend(backend)
        self.targets = _targets_of(self.records)
        self.multi_label = any(len(r.labels) > 1 for r in self.records)
        self.num_classes = _class_count(self.records, num_classes)
        self.classes = tuple(classes or (str(c) for c in range(self.num_classes)))
        self.domains = tuple(domains or sorted({r.domain for r in self.records if r.domain}))
        _check_domains(self.records, self.domains)
        self._check_readable(probe)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def mode(self) -> str:
        """The sampling mode: ``train`` (random starts) or ``test`` (segment centres)."""
        return "train" if self.train else "test"

    @property
    def clip_frames(self) -> int:
        """Frames in one view: num_segments * clip_len."""
        return self.sampling["num_segments"] * self.sampling["clip_len"]

    def of_domains(self, domains: Sequence[str]) -> "VideoDataset":
        """The same data set restricted to the clips of ``domains`` (itself when empty)."""
        if not domains:
            return self
        unknown = sorted(set(domains) - set(self.domains))
        if unknown:
            raise ValueError(f"domains {unknown} are not among the data's, {list(self.domains)}")
        restricted = copy.copy(self)
        restricted.records = [r for r in self.records if r.domain in domains]
        if not restricted.records:
            raise ValueError(f"no clip of the data set belongs to the domains {list(domains)}")
        restricted.reset_skips()
        return restricted

    def domain_indices(self) -> list[int]:
        """Each record's domain as an index into ``domains`` (-1 when it has none)."""
        return [self.domains.index(r.domain) if r.domain else -1 for r in self.records]

    def _check_readable(self, probe: int) -> None:
        errors = []
        for record in self.records[:probe]:
            try:
                with self._open(record):
                    return
            except VideoReadError as error:
                errors.append(str(error))
        folder = self.records[0].path.parent
        raise VideoReadError(
            f"none of the first {len(errors)} videos under {folder} can be read; e.g. {errors[0]}"
        )

    def _open(self, record: VideoRecord):
        return open_video(
            record.path,
            self.frame_size,
            self.backend,
            frame_template=record.frame_template,
            num_frames=record.num_frames,
        )

    def _load(self, position: int) -> dict[str, Any]:
        record = self.records[position]
        with self._open(record) as video:
            indices = sample_frame_indices(video.num_frames, mode=self.mode, **self.sampling)
            frames = decode(video, indices)
            fps, num_frames = video.fps, video.num_frames
        item: dict[str, Any] = {"frames": self._views(frames), "index": torch.tensor(position)}
        if "label" in self.targets:
            item["label"] = self._label(record)
        if "segments" in self.targets:
            segments, segment_labels = record.segments_in_frames(fps)
            _warn_of_actions_past_the_end(record, segments, num_frames, fps)
            item["frame_labels"] = self._views(_frame_labels(indices, segments, segment_labels))
            item["segments"], item["segment_labels"] = segments, segment_labels
        if "qa" in self.targets:
            item["qa"] = list(record.qa)
        if "captions" in self.targets:
            item["captions"] = list(record.captions)
        if "domain" in self.targets:
            item["domain"] = torch.tensor(
                self.domains.index(record.domain) if record.domain else -1
            )
        return item

    def _views(self, per_frame: Tensor) -> Tensor:
        num_clips = self.sampling["num_clips"]
        return per_frame if num_clips == 1 else per_frame.unflatten(0, (num_clips, -1))

    def _label(self, record: VideoRecord) -> Tensor:
        if not self.multi_label:
            return torch.tensor(record.labels[0] if record.labels else -1)
        target = torch.zeros(self.num_classes)
        target[list(record.labels)] = 1.0
        return target


def _targets_of(records: Sequence[VideoRecord]) -> tuple[str, ...]:
    present = {
        "label": any(r.labels for r in records),
        "segments": any(r.actions for r in records),
        "qa": any(r.qa for r in records),
        "captions": any(r.captions for r in records),
        "domain": any(r.domain for r in records),
    }
    return tuple(name for name, found in present.items() if found)


def _class_count(records: Sequence[VideoRecord], num_classes: int | None) -> int:
    """``num_classes`` when given, else inferred from the labels; a label outside [0, count) is
    an error naming its annotation."""
    labelled = [(label, r) for r in records for label in r.labels + tuple(a[2] for a in r.actions)]
    count = num_classes or _inferred_class_count(labelled)
    for label, record in labelled:
        if not 0 <= label < count:
            raise AnnotationError(
                f"{record.where}: label {label} is outside [0, num_classes={count})"
            )
    return count


def _inferred_class_count(labelled: list[tuple[int, VideoRecord]]) -> int:
    """1 + the largest label, which may be at most twice the number of distinct labels (or
    ``MIN_INFERRED_CLASSES`` for fewer): one stray label (a typo, a 10**9) must not size the
    model's head, or any allocation."""
    if not labelled:
        return 0
    largest, record = max(labelled, key=lambda pair: pair[0])
    seen = len({label for label, _ in labelled})
    bound = max(2 * seen, MIN_INFERRED_CLASSES)
    if largest >= bound:
        raise AnnotationError(
            f"{record.where}: label {largest} would make {largest + 1} classes from {seen} "
            f"distinct labels (at most {bound} are inferred); give num_classes "
            "(--num-classes) for a label space that large"
        )
    return largest + 1


def _check_domains(records: Sequence[VideoRecord], domains: tuple) -> None:
    unknown = sorted({r.domain for r in records if r.domain and r.domain not in domains})
    if unknown:
        raise ValueError(f"domains {unknown} are not among the domains given, {list(domains)}")


def _warn_of_actions_past_the_end(
    record: VideoRecord, segments: Tensor, num_frames: int, fps: float
) -> None:
    """Warns (once per record: the warnings registry) of actions ending more than a frame,
    which rounding explains, after the video."""
    past = (segments[:, 1] > num_frames + 1).nonzero().flatten().tolist()
    if past:
        end = record.actions[past[0]][1]
        warnings.warn(
            f"{record.where}: actions {past} end after the video's {num_frames / fps:.2f} s "
            f"({num_frames} frames at {fps:g} fps), action {past[0]} at {end:g} s",
            AnnotationWarning,
            stacklevel=3,
        )


def _frame_labels(indices: Tensor, segments: Tensor, labels: Tensor) -> Tensor:
    """The label of the action each frame index falls in (the last one listed wins), -1 if none."""
    result = torch.full(indices.shape, -1, dtype=torch.int64)
    frames = indices.double()
    for (start, end), label in zip(segments.tolist(), labels.tolist()):
        result[(frames >= start) & (frames < end)] = label
    return result


# Targets that differ in length from clip to clip: collated as lists, not stacked.
LIST_TARGETS = ("segments", "segment_labels", "qa", "captions")


def collate_clips(items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """A batch of ``VideoDataset`` items: tensors stacked, variable-length targets as lists. The
    None of unreadable evaluation clips are dropped; None when no clip is left."""
    items = [item for item in items if item is not None]
    if not items:
        return None
    return {
        key: [item[key] for item in items]
        if key in LIST_TARGETS
        else torch.stack([item[key] for item in items])
        for key in items[0]
    }


class SelectFields:
    """Collates clips and returns the listed fields as a list of tensors, the batch format of
    the training engine (e.g. ``("frames", "label")``)."""

    def __init__(self, fields: Sequence[str]):
        self.fields = tuple(fields)

    def __call__(self, items: list[dict[str, Any] | None]) -> list[Tensor] | None:
        batch = collate_clips(items)
        if batch is None:
            return None
        missing = [f for f in self.fields if f not in batch]
        if missing:
            raise KeyError(f"fields {missing} are not in the clips (they hold {sorted(batch)})")
        return [batch[field] for field in self.fields]
