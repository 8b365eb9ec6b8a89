"""Video annotation readers, all producing ``VideoRecord``s:

- MMAction2 list files: ``relative/path.mp4 label [label ...]`` per line (several labels =
  multi-label), and raw-frame lists ``frame_dir total_frames label [label ...]``;
- the JSON layout ``DIR/<split>/annotations/{action_detection,video_qa,video_captioning}.json``
  with the videos in ``DIR/<split>/videos/``:

  - ``action_detection.json``: ``[{"video_id", "actions": [{"start", "end", "label"}], "domain"?}]``
    (times in seconds; the clip's class is its longest action's label). Labels are class
    indices, or class names: the names of the training split, sorted, are the classes
    (``class_names``), and a name outside them is an error naming the file and the label;
  - ``video_qa.json``: ``[{"video_id", "qa_pairs": [{"question", "answer"}]}]``;
  - ``video_captioning.json``: ``[{"video_id", "captions": ["...", ...]}]``.

A file holds a list of entries, or one entry (an object). A ``video_id`` with a suffix names
its file in ``videos/``; one without is ``<video_id>.mp4``, and it appears at most once in each
file. Malformed files raise ``AnnotationError`` naming the
file, the entry and the field.
"""

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SPLITS = ("training", "validation", "test")
JSON_FILES = ("action_detection.json", "video_qa.json", "video_captioning.json")
ACTION_FILE = JSON_FILES[0]
RAWFRAME_TEMPLATE = "img_{:05}.jpg"  # MMAction2's default: frames numbered from 1


class AnnotationError(ValueError):
    """An annotation file that does not follow its format."""


class AnnotationWarning(UserWarning):
    """An annotation that is usable but probably wrong (an action past the video's end)."""


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One video and what is known about it."""

    path: Path
    labels: tuple[int, ...] = ()
    actions: tuple[tuple[float, float, int], ...] = ()  # (start s, end s, label)
    qa: tuple[tuple[str, str], ...] = ()
    captions: tuple[str, ...] = ()
    domain: str | None = None
    num_frames: int | None = None  # known up front for frame folders
    frame_template: str | None = None  # set for frame folders: file name of frame i (from 1)
    source: str = ""  # where it is annotated: "list.txt, line 3" or "<file>.json, entry 2"

    @property
    def where(self) -> str:
        """The record in messages: its annotation and its video (the video alone without one)."""
        return f"{self.source} ({self.path})" if self.source else str(self.path)

    def segments_in_frames(self, fps: float | None) -> tuple[Tensor, Tensor]:
        """The actions as (K, 2) float start/end frames and (K,) int64 labels."""
        if fps is None or fps <= 0:
            raise AnnotationError(f"{self.path}: actions are in seconds but the fps is unknown")
        times = torch.tensor([a[:2] for a in self.actions], dtype=torch.float64).view(-1, 2)
        labels = torch.tensor([a[2] for a in self.actions], dtype=torch.int64)
        return (times * fps).float(), labels


def _text_of(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{path}: not a text file (not UTF-8: {error})") from error


def _list_lines(path: Path) -> list[tuple[int, list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation list {path} does not exist")
    lines = [(n, line.split()) for n, line in enumerate(_text_of(path).splitlines(), 1)]
    return [(n, fields) for n, fields in lines if fields and not fields[0].startswith("#")]


def _int_field(value: str, where: str, name: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise AnnotationError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return number


def read_video_list(path: str | Path, root: str | Path | None = None) -> list[VideoRecord]:
    """``relative/path.mp4 label [label ...]`` per line, paths relative to ``root`` (default:
    the list's folder). Blank lines and lines starting with ``#`` are ignored."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    records = []
    for number, fields in _list_lines(path):
        where = f"{path}, line {number}"
        if len(fields) < 2:
            raise AnnotationError(f"{where}: expected 'path label [label ...]', got {fields}")
        labels = tuple(_int_field(f, where, "label", 0) for f in fields[1:])
        records.append(VideoRecord(base / fields[0], labels, source=where))
    return records


def read_rawframe_list(
    path: str | Path, root: str | Path | None = None, template: str = RAWFRAME_TEMPLATE
) -> list[VideoRecord]:
    """``frame_dir total_frames label [label ...]`` per line; frame i of a folder is
    ``template.format(i)``, i from 1."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    records = []
    for number, fields in _list_lines(path):
        where = f"{path}, line {number}"
        if len(fields) < 3:
            raise AnnotationError(f"{where}: expected 'dir total_frames label ...', got {fields}")
        frames = _int_field(fields[1], where, "total_frames", 1)
        labels = tuple(_int_field(f, where, "label", 0) for f in fields[2:])
        records.append(
            VideoRecord(
                base / fields[0], labels, num_frames=frames, frame_template=template, source=where
            )
        )
    return records


# -- the JSON layout --------------------------------------------------------------------------


def _field(entry: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
    if name not in entry:
        raise AnnotationError(f"{where}: field {name!r} is missing")
    value = entry[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise AnnotationError(
            f"{where}: field {name!r} must be {expected}, got {type(value).__name__}"
        )
    return value


def _label_index(label: int | str, classes: Sequence[str], at: str) -> int:
    """A label as a class index: a number as given, a name by its place in ``classes``."""
    if isinstance(label, int):
        if classes:
            raise AnnotationError(
                f"{at}: label {label} is a number, but the training split names its classes "
                f"({len(classes)}: {list(classes[:4])}...); give every label as a name"
            )
        return label
    if label not in classes:
        known = f"its {len(classes)} classes {list(classes)}" if classes else "no named classes"
        raise AnnotationError(
            f"{at}: label {label!r} is not a class of the training split, which has {known}"
        )
    return classes.index(label)


def _actions(entry: Any, where: str, classes: Sequence[str] = ()) -> dict[str, Any]:
    actions = []
    for k, action in enumerate(_field(entry, "actions", list, where)):
        at = f"{where}, actions[{k}]"
        start, end = (_field(action, name, (int, float), at) for name in ("start", "end"))
        label = _label_index(_field(action, "label", (int, str), at), classes, at)
        if not 0 <= start < end or label < 0:
            raise AnnotationError(
                f"{at}: need 0 <= start < end and label >= 0, got {start}, {end}, {label}"
            )
        actions.append((float(start), float(end), label))
    fields: dict[str, Any] = {"actions": tuple(actions)}
    if actions:
        fields["labels"] = (max(actions, key=lambda a: a[1] - a[0])[2],)
    if isinstance(entry, dict) and "domain" in entry:
        fields["domain"] = _field(entry, "domain", str, where)
    return fields


def _qa(entry: Any, where: str) -> dict[str, Any]:
    pairs = []
    for k, pair in enumerate(_field(entry, "qa_pairs", list, where)):
        at = f"{where}, qa_pairs[{k}]"
        pairs.append((_field(pair, "question", str, at), _field(pair, "answer", str, at)))
    return {"qa": tuple(pairs)}


def _captions(entry: Any, where: str) -> dict[str, Any]:
    captions = _field(entry, "captions", list, where)
    for k, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise AnnotationError(
                f"{where}: field 'captions'[{k}] must be str, got {type(caption).__name__}"
            )
    return {"captions": tuple(captions)}


READERS: dict[str, Callable[[Any, str], dict[str, Any]]] = dict(
    zip(JSON_FILES, (_actions, _qa, _captions))
)


def _read_json(path: Path) -> list:
    try:
        entries = json.loads(_text_of(path))
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from error
    if isinstance(entries, dict):  # a file of one video's entry
        entries = [entries]
    if not isinstance(entries, list):
        raise AnnotationError(f"{path}: expected a list of entries, got {type(entries).__name__}")
    return entries


def class_names(folder: str | Path) -> tuple[str, ...]:
    """The action labels that are names in the split ``folder``'s ``action_detection.json``,
    sorted: the classes of a data set that names them (empty for numbered labels or no file)."""
    path = Path(folder) / "annotations" / ACTION_FILE
    if not path.is_file():
        return ()
    names = set()
    for k, entry in enumerate(_read_json(path)):
        where = f"{path}, entry {k}"
        for j, action in enumerate(_field(entry, "actions", list, where)):
            label = _field(action, "label", (int, str), f"{where}, actions[{j}]")
            if isinstance(label, str):
                names.add(label)
    return tuple(sorted(names))


def read_json_split(
    root: str | Path, split: str, classes: Sequence[str] | None = None
) -> list[VideoRecord]:
    """The records of ``root/split`` in the JSON layout (``read_json_folder``); action labels
    that are names index ``classes``, by default the training split's (``class_names``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if classes is None:
        classes = class_names(Path(root) / SPLITS[0])
    return read_json_folder(Path(root) / split, classes)


def read_json_folder(folder: str | Path, classes: Sequence[str] | None = None) -> list[VideoRecord]:
    """The records of one split folder (``annotations/`` and ``videos/``): every annotation file
    present merged by ``video_id``, in order of first appearance (each record's ``source`` is
    that entry); action labels that are names index ``classes`` (default: this folder's
    ``class_names``)."""
    folder = Path(folder)
    classes = tuple(class_names(folder) if classes is None else classes)
    readers = {**READERS, ACTION_FILE: functools.partial(_actions, classes=classes)}
    present = [name for name in JSON_FILES if (folder / "annotations" / name).is_file()]
    if not present:
        raise FileNotFoundError(
            f"no annotation file ({', '.join(JSON_FILES)}) in {folder}/annotations"
        )
    fields_by_id: dict[str, dict[str, Any]] = {}
    for name in present:
        path = folder / "annotations" / name
        entry_of: dict[str, int] = {}  # video_id → its entry in this file
        for k, entry in enumerate(_read_json(path)):
            where = f"{path}, entry {k}"
            video_id = _field(entry, "video_id", str, where)
            if video_id in entry_of:
                raise AnnotationError(
                    f"{where}: video_id {video_id!r} is already entry {entry_of[video_id]}; "
                    "give each video one entry"
                )
            entry_of[video_id] = k
            fields = fields_by_id.setdefault(video_id, {"source": where})
            fields.update(readers[name](entry, where))
    return [
        VideoRecord(_video_path(folder / "videos", video_id), **fields)
        for video_id, fields in fields_by_id.items()
    ]


def _video_path(videos: Path, video_id: str) -> Path:
    return videos / (video_id if Path(video_id).suffix else f"{video_id}.mp4")
