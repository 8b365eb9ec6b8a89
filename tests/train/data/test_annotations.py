import json

import pytest
import torch

from train.data import (
    AnnotationError,
    VideoDataset,
    read_json_split,
    read_rawframe_list,
    read_video_list,
)
from train.data.annotations import class_names, read_json_folder


def test_video_list_with_multi_label_lines(tmp_path):
    (tmp_path / "train.txt").write_text("# path label\na/x.mp4 3\n\nb/y.mp4 1 4\n")
    records = read_video_list(tmp_path / "train.txt", root=tmp_path / "videos")
    assert [r.path for r in records] == [tmp_path / "videos/a/x.mp4", tmp_path / "videos/b/y.mp4"]
    assert [r.labels for r in records] == [(3,), (1, 4)]
    assert records[1].source == f"{tmp_path / 'train.txt'}, line 4"


def test_rawframe_list(tmp_path):
    (tmp_path / "frames.txt").write_text("clips/a 120 2\n")
    (record,) = read_rawframe_list(tmp_path / "frames.txt")
    assert record.path == tmp_path / "clips/a" and record.num_frames == 120
    assert record.labels == (2,) and record.frame_template == "img_{:05}.jpg"


@pytest.mark.parametrize(
    "reader, text, message",
    [
        (read_video_list, "a.mp4\n", r"list.txt, line 1: expected 'path label"),
        (
            read_video_list,
            "a.mp4 1\nb.mp4 cat\n",
            r"line 2: label must be an integer >= 0, got 'cat'",
        ),
        (read_video_list, "a.mp4 -1\n", r"label must be an integer >= 0, got '-1'"),
        (read_rawframe_list, "a 0 1\n", r"line 1: total_frames must be an integer >= 1, got '0'"),
    ],
)
def test_list_errors_name_the_file_line_and_field(tmp_path, reader, text, message):
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(AnnotationError, match=message):
        reader(tmp_path / "list.txt")


def write_split(root, split="training", **files):
    folder = root / split / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    for name, entries in files.items():
        text = entries if isinstance(entries, str) else json.dumps(entries)
        (folder / f"{name}.json").write_text(text)
    return folder


DETECTION = [
    {
        "video_id": "v1",
        "actions": [{"start": 0.5, "end": 1.0, "label": 2}, {"start": 1.0, "end": 2.5, "label": 5}],
        "domain": "news",
    },
    {"video_id": "v2.avi", "actions": []},
]


@pytest.mark.parametrize("reader", [read_video_list, read_rawframe_list])
def test_a_binary_list_file_is_named(tmp_path, reader):
    (tmp_path / "list.txt").write_bytes(b"\x00\xff\xfe binary \x89")
    with pytest.raises(AnnotationError, match=r"list.txt: not a text file"):
        reader(tmp_path / "list.txt")


def test_json_layout_merges_the_three_files(tmp_path):
    write_split(
        tmp_path,
        action_detection=DETECTION,
        video_qa=[{"video_id": "v1", "qa_pairs": [{"question": "What?", "answer": "a bar"}]}],
        video_captioning=[{"video_id": "v3", "captions": ["one", "two"]}],
    )
    v1, v2, v3 = read_json_split(tmp_path, "training")
    assert v1.path == tmp_path / "training/videos/v1.mp4"
    assert v2.path == tmp_path / "training/videos/v2.avi"
    assert v1.actions == ((0.5, 1.0, 2), (1.0, 2.5, 5)) and v1.labels == (5,)  # longest action
    assert v1.domain == "news" and v1.qa == (("What?", "a bar"),) and v1.captions == ()
    assert v2.labels == () and v3.captions == ("one", "two")
    assert v3.source == f"{tmp_path / 'training/annotations/video_captioning.json'}, entry 0"
    segments, labels = v1.segments_in_frames(fps=8)
    assert segments.tolist() == [[4.0, 8.0], [8.0, 20.0]] and labels.tolist() == [2, 5]


@pytest.mark.parametrize(
    "name, entries, message",
    [
        ("action_detection", "[{", r"action_detection.json: not valid JSON"),
        ("action_detection", '"a"', r"expected a list of entries, got str"),
        ("action_detection", [{"actions": []}], r"entry 0: field 'video_id' is missing"),
        (
            "action_detection",
            [{"video_id": "a", "actions": [{"start": 0, "end": "2", "label": 1}]}],
            r"entry 0, actions\[0\]: field 'end' must be int/float, got str",
        ),
        (
            "action_detection",
            [
                {"video_id": "a", "actions": []},
                {"video_id": "b", "actions": [{"start": 3, "end": 1, "label": 0}]},
            ],
            r"entry 1, actions\[0\]: need 0 <= start < end",
        ),
        (
            "video_qa",
            [{"video_id": "a", "qa_pairs": [{"question": "q"}]}],
            r"video_qa.json, entry 0, qa_pairs\[0\]: field 'answer' is missing",
        ),
        (
            "video_captioning",
            [{"video_id": "a", "captions": ["ok", 3]}],
            r"video_captioning.json, entry 0: field 'captions'\[1\] must be str, got int",
        ),
        (
            "video_qa",
            [{"video_id": v, "qa_pairs": []} for v in ("a", "b", "a")],
            r"video_qa.json, entry 2: video_id 'a' is already entry 0",
        ),
    ],
)
def test_malformed_json_names_file_entry_and_field(tmp_path, name, entries, message):
    write_split(tmp_path, **{name: entries})
    with pytest.raises(AnnotationError, match=message):
        read_json_split(tmp_path, "training")


def test_json_split_errors(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        read_json_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="no annotation file"):
        read_json_split(tmp_path, "test")


def test_dataset_yields_every_target_of_the_json_layout(small_builtin):
    records = read_json_split(small_builtin, "validation")
    dataset = VideoDataset(records, train=False, num_segments=16)
    assert dataset.targets == ("label", "segments", "qa", "captions", "domain")
    item = dataset[0]
    record = records[0]
    ((start, end, label),) = record.actions
    frames_in_action = (torch.arange(16) >= start * 8) & (torch.arange(16) < end * 8)
    expected = torch.where(frames_in_action, label, -1)
    assert torch.equal(item["frame_labels"], expected) and item["label"].item() == label
    assert item["segments"].tolist() == [[start * 8, end * 8]]
    assert item["qa"] == list(record.qa) and item["captions"] == list(record.captions)
    assert dataset.domains[item["domain"].item()] == record.domain


def named_actions(*labels: str) -> list[dict]:
    """One entry per label, in the source design's format (times in seconds)."""
    return [
        {"video_id": f"v{k}", "actions": [{"start": 1.5, "end": 5.2, "label": label}]}
        for k, label in enumerate(labels)
    ]


def test_named_labels_index_the_sorted_classes_of_the_training_split(tmp_path):
    write_split(tmp_path, action_detection=named_actions("walking", "cooking", "walking"))
    write_split(tmp_path, "validation", action_detection=named_actions("walking", "cooking"))
    assert class_names(tmp_path / "training") == ("cooking", "walking")
    training = read_json_split(tmp_path, "training")
    assert [r.labels for r in training] == [(1,), (0,), (1,)]
    assert training[0].actions == ((1.5, 5.2, 1),)
    assert [r.labels for r in read_json_split(tmp_path, "validation")] == [(1,), (0,)]
    # Given classes (a checkpoint's) take the place of the training split's.
    assert [r.labels for r in read_json_split(tmp_path, "validation", ("walking", "cooking"))] == [
        (0,),
        (1,),
    ]


def test_a_label_the_training_split_lacks_is_named_with_its_file(tmp_path):
    write_split(tmp_path, action_detection=named_actions("walking", "cooking"))
    write_split(tmp_path, "test", action_detection=named_actions("cooking", "juggling"))
    message = r"test/annotations/action_detection.json, entry 1, actions\[0\]: label 'juggling' "
    with pytest.raises(AnnotationError, match=message + "is not a class of the training split"):
        read_json_split(tmp_path, "test")


def test_numbers_and_names_do_not_mix(tmp_path):
    entries = named_actions("walking")
    entries.append({"video_id": "v9", "actions": [{"start": 0, "end": 1, "label": 3}]})
    write_split(tmp_path, action_detection=entries)
    with pytest.raises(AnnotationError, match=r"entry 1, actions\[0\]: label 3 is a number, but"):
        read_json_split(tmp_path, "training")


def test_a_file_of_one_entry_is_read_as_the_source_design_writes_it(tmp_path):
    folder = write_split(tmp_path, action_detection=named_actions("walking")[0]).parent
    (record,) = read_json_folder(folder)
    assert record.path == folder / "videos" / "v0.mp4" and record.actions == ((1.5, 5.2, 0),)
