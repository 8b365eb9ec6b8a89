"""The multi-task video job on a tiny set in the built-in layout: the batch format copes with
missing annotations and unknown words, every head trains and evaluates from the CLI, a stopped
run resumes exactly, and LoRA fine-tuning of one domain trains only adapters and heads."""

from pathlib import Path

import pytest
import torch

from train import evaluate, video
from train.data.annotations import VideoRecord
from train.data.text import TextVocabulary, WordTokenizer
from train.engine import checkpoint
from train.tasks.multitask import (
    IGNORE,
    MultiTaskCollate,
    masked_cross_entropy,
    pick_reference,
)

from ..video_jobs import assert_same_weights, stop_and_resume, tiny_video_job


def multitask_job(data: Path, out: Path, *extra: str) -> list[str]:
    return tiny_video_job(
        data,
        out,
        *("--config", "configs/video_multitask.yaml"),
        *(
            "--model-args",
            "{embed_dim: 16, depth: 2, num_heads: 2, patch_size: 8, tubelet_size: 2}",
        ),
        *("--text", "{head_layers: 1, head_heads: 2, beam_size: 2}"),
        *extra,
    )


def test_collate_pads_missing_annotations_and_maps_unknown_words():
    records = [
        VideoRecord(Path("a.mp4"), (0,), qa=(("what shape?", "square"),), captions=("A square.",))
    ]
    vocabulary = TextVocabulary.build(records)
    collate = MultiTaskCollate(vocabulary, 2, 5, 1, 6)
    items = [
        {
            "frames": torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
            "label": torch.tensor(1),
            "qa": [("what colour?", "blue")],
            "captions": ["A red star."],
        },
        {
            "frames": torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
            "label": torch.tensor(0),
            "qa": [],
            "captions": [],
        },
    ]
    frames, label, frame_labels, domain, questions, answers, captions = collate(items)
    assert frames.shape == (2, 4, 3, 8, 8) and label.tolist() == [1, 0]
    assert (frame_labels < -1).all() and (domain == IGNORE).all()  # padding, not background
    assert questions.shape == (2, 2, 5) and answers.tolist() == [[IGNORE] * 2] * 2  # blue unknown
    assert WordTokenizer.UNK in questions[0, 0].tolist()  # "colour" is not in the vocabulary
    assert (questions[1] == WordTokenizer.PAD).all()
    assert captions.shape == (2, 1, 6) and captions[0, 0, 0] == WordTokenizer.BOS


def test_losses_of_clips_without_targets_are_zero_not_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((2, 3), IGNORE), IGNORE)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(logits.grad).all()
    empty = torch.zeros(2, 1, 6, dtype=torch.int64)
    assert (pick_reference(empty) == WordTokenizer.PAD).all()


def test_every_head_trains_evaluates_and_resumes_exactly(tiny_video_set, tmp_path, monkeypatch):
    summary = video.main(multitask_job(tiny_video_set, tmp_path / "whole"))
    test = summary["test"]
    for key in ("acc", "mAP@0.5", "qa_acc", "bleu4", "routing_acc", "expert_0_usage", "score"):
        assert 0 <= test[key] <= 1, key
    by_kind = {key: value for key, value in test.items() if key.startswith("qa_acc_")}
    assert {"qa_acc_what_shape", "qa_acc_what_colour"} <= set(by_kind)
    # qa_acc is the mean over every question, so it lies within the kinds' accuracies.
    assert min(by_kind.values()) - 1e-9 <= test["qa_acc"] <= max(by_kind.values()) + 1e-9
    report = evaluate.main(["--checkpoint", str(tmp_path / "whole" / "last.pt"), "--threads", "1"])
    assert report["qa_acc"] == pytest.approx(test["qa_acc"])
    assert (tmp_path / "whole" / "predictions.png").is_file()

    stop_and_resume(video.main, multitask_job(tiny_video_set, tmp_path / "stopped"), monkeypatch)
    assert_same_weights(tmp_path / "whole" / "last.pt", tmp_path / "stopped" / "last.pt")
    whole = checkpoint.load(tmp_path / "whole" / "last.pt")

    tuned = tmp_path / "tuned"
    finetune = multitask_job(
        tiny_video_set,
        tuned,
        "--pretrained",
        str(tmp_path / "whole" / "last.pt"),
        "--finetune-domain",
        "news",
        "--lora-rank",
        "2",
        "--epochs",
        "1",
    )
    result = video.main(finetune)
    state = checkpoint.load(tuned / "last.pt")["model"]
    adapters = [name for name in state if "lora_" in name]
    assert adapters and all(".news" in name for name in adapters)
    assert result["trainable_params"] < sum(v.numel() for v in whole["model"].values()) / 2
    unchanged = [n for n, v in whole["model"].items() if "backbone.blocks" in n and "norm" not in n]
    tuned_names = {n.replace(".base_layer", ""): v for n, v in state.items()}
    for name in unchanged:
        torch.testing.assert_close(tuned_names[name], whole["model"][name], rtol=0, atol=0)
    assert (
        evaluate.main(["--checkpoint", str(tuned / "last.pt"), "--threads", "1"])["accuracy"] >= 0
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tasks", "{action: 1.0, tracking: 1.0}"], "tasks must map"),
        (["--experts", "{routing: hard}"], "model.experts.routing: expected one of"),
        (["--experts", "{experts: 4}"], "model.experts: unknown keys"),
        (["--domain-balancing", "{sample_strategy: uniform}"], "sample_strategy: expected one of"),
        (["--temporal-smoothing", "2"], "temporal_smoothing must be an odd window"),
        (["--finetune-domain", "news"], "needs --pretrained"),
        (["--finetune", "adapters"], "finetune: expected one of"),
    ],
)
def test_bad_multitask_settings_name_their_key(flags, message):
    with pytest.raises(ValueError, match=message):
        video.main(["--config", "configs/video_multitask.yaml", *flags])
