import json

import pytest

from train import ask, infer_bench, video
from train.data.text import TextVocabulary
from train.engine import checkpoint
from train.tasks import video as video_task

TINY = "{num_frames: 4, img_size: 32, embed_dim: 24, num_heads: 2, depth: 2}"
FAST = ["--batch-size", "2", "--budget-s", "0", "--min-steps", "1", "--threads", "1"]


def test_a_tiny_grid_gives_sane_rows(tmp_path):
    out = tmp_path / "infer.json"
    grid = "{attention: [full, mamba], merge_ratio: [0.0, 0.5]}"
    summary = infer_bench.main([*FAST, "--model-args", TINY, "--grid", grid, "--json", str(out)])
    rows = summary["results"]
    assert [row["settings"] for row in rows] == [
        {"attention": attention, "merge_ratio": ratio}
        for attention in ("full", "mamba")
        for ratio in (0.0, 0.5)
    ]
    for row in rows:
        assert all(row[mode]["clips_per_s"] > 0 for mode in infer_bench.LORA_MODES)
        assert all(row[mode]["cpu_ms"] > 0 for mode in infer_bench.LORA_MODES)
        assert row["unmerged"]["params"] == row["merged"]["params"] > row["off"]["params"]
        assert row["lora_max_abs_change"] > 1e-3
        assert row["merge_max_abs_diff"] < 1e-4
    assert json.loads(out.read_text())["results"] == rows


def test_a_model_without_clips_is_refused():
    with pytest.raises(ValueError, match="expected a video model .* got VisionMamba"):
        infer_bench.main([*FAST, "--model", "vim_tiny_cifar", "--grid", "{depth: [1]}"])


@pytest.fixture(scope="module")
def multitask_checkpoint(tiny_video_set, tmp_path_factory):
    """A multi-task model (action, QA, captioning) trained for one epoch on the tiny set."""
    out = tmp_path_factory.mktemp("multitask")
    video.main(
        [
            *("--train-data", str(tiny_video_set), "--epochs", "1", "--batch-size", "8"),
            *("--tasks", "{action: 1.0, qa: 0.5, captioning: 0.5}"),
            *("--model-args", "{embed_dim: 16, depth: 2, num_heads: 2}"),
            *("--text", "{head_layers: 1, head_heads: 2}"),
            *("--video", "{num_frames: 4, frame_size: 32}", "--threads", "1"),
            *("--out-dir", str(out)),
        ]
    )
    return out / "last.pt"


def test_a_trained_checkpoint_is_benchmarked_as_it_was_built(multitask_checkpoint):
    result = infer_bench.main([*FAST, "--checkpoint", str(multitask_checkpoint)])
    assert result["clip_shape"] == [4, 3, 32, 32] and result["batch_size"] == 2
    assert result["clips_per_s"] > 0 and result["batch_ms"] > 0 and result["clip_ms"] > 0
    model, _ = video_task.load_trained(multitask_checkpoint)
    assert result["params"] == sum(p.numel() for p in model.parameters())


def test_ask_answers_a_question_and_captions_a_test_clip(
    multitask_checkpoint, tiny_video_set, capsys
):
    clip = sorted((tiny_video_set / "test" / "videos").iterdir())[0]
    questions = ["what colour is the shape?", "which way does it move?"]
    flags = ["--checkpoint", str(multitask_checkpoint), "--video", str(clip), "--threads", "1"]
    result = ask.main([*flags, *(f for q in questions for f in ("--question", q)), "--caption"])
    vocabulary = TextVocabulary.from_state_dict(
        checkpoint.load(multitask_checkpoint)["config"]["vocabulary"]
    )
    assert len(result["answers"]) == 2
    assert all(answer in vocabulary.answers.answers for answer in result["answers"])
    known_words = set(vocabulary.words.words)
    assert set(vocabulary.words.tokenize(result["caption"])) <= known_words
    printed = capsys.readouterr().out
    assert f"Q: {questions[0]}\nA: {result['answers'][0]}" in printed


def test_ask_names_the_task_a_checkpoint_lacks(tmp_path, tiny_video_set):
    out = tmp_path / "run"
    video.main(
        [
            *("--train-data", str(tiny_video_set), "--epochs", "1", "--batch-size", "8"),
            *("--model-args", "{embed_dim: 16, depth: 2, num_heads: 2}", "--threads", "1"),
            *("--video", "{num_frames: 4, frame_size: 32}", "--out-dir", str(out)),
        ]
    )
    clip = sorted((tiny_video_set / "test" / "videos").iterdir())[0]
    flags = ["--checkpoint", str(out / "last.pt"), "--video", str(clip), "--caption"]
    with pytest.raises(ValueError, match=r"trained without the \['captioning'\] task"):
        ask.main(flags)
