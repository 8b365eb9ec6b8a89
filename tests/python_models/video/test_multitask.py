"""MultiTaskVLM: every head's output shape, gradients reaching every parameter, caption
generation, routing from the appearance tokens, and errors for inconsistent settings."""

import pytest
import torch

from python_models import create_model
from python_models.video import MultiTaskVLM
from python_models.video.multitask import AppearanceTokens

SMALL = dict(embed_dim=16, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4)
VOCAB, ANSWERS = 20, 6


def small_model(**overrides) -> MultiTaskVLM:
    torch.manual_seed(0)
    arguments = dict(vocab_size=VOCAB, num_answers=ANSWERS, img_size=32, **SMALL)
    return create_model("hvlm_multitask_tiny", **{**arguments, **overrides})


def example(batch: int = 3):
    clips = torch.randint(0, 256, (batch, 4, 3, 32, 32), dtype=torch.uint8)
    questions = torch.randint(4, VOCAB, (batch, 2, 5))
    captions = torch.randint(4, VOCAB, (batch, 7))
    return clips, questions, captions


def test_every_head_answers_with_its_shape():
    model = small_model()
    clips, questions, captions = example()
    out = model(clips, questions, captions)
    assert out.action.shape == (3, 12)
    assert out.detection.class_logits.shape == (3, 4, 13)  # every input frame, + background
    assert out.detection.boundary_logits.shape == (3, 4, 2)
    assert out.qa.shape == (3, 2, ANSWERS) and out.captioning.shape == (3, 6, VOCAB)
    assert out.routing.gates.shape == (3, 4)
    torch.testing.assert_close(out.routing.gates.sum(-1), torch.ones(3))
    assert out.appearance.shape == (3, 16, 16)  # one frame's 4 x 4 patches of 8 pixels


def test_gradients_reach_every_parameter():
    model = small_model()
    out = model(*example())
    loss = (
        out.action.sum()
        + out.detection.class_logits.sum()
        + out.detection.boundary_logits.sum()
        + out.qa.sum()
        + out.captioning.sum()
        + out.routing.logits.sum()
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_heads_without_their_inputs_are_skipped_and_captions_generate():
    model = small_model().eval()
    clips, _, _ = example(2)
    out = model(clips)
    assert out.qa is None and out.captioning is None and out.action is not None
    words = model.generate_captions(clips, beam_size=2, max_len=6)
    assert words.shape[0] == 2 and words.shape[1] <= 6
    memory, summary = model.text_inputs(model.forward_features(clips))
    torch.testing.assert_close(
        model.generate_captions(clips, beam_size=1, max_len=6),
        model.caption_decoder.greedy(memory, 6, summary=summary),
    )


def test_appearance_tokens_read_the_middle_frame_in_eval_and_any_view_in_training():
    """With the stem taken out, the tokens are the pixels of the frame read: in eval the middle
    one, in training any frame, flipped or turned."""
    appearance = AppearanceTokens(3, 16).eval()
    appearance.stem = torch.nn.Identity()
    clips = torch.randn(4, 5, 3, 8, 8)

    def images(tokens):
        return tokens.transpose(1, 2).unflatten(2, (8, 8))

    torch.testing.assert_close(images(appearance(clips)), clips[:, 2])
    views = {}
    for k in range(4):
        for flip in (False, True):
            turned = clips.rot90(k, (-2, -1))
            views[(k, flip)] = turned.flip(-1) if flip else turned
    appearance.train()
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        for row, image in enumerate(images(appearance(clips))):
            matches = [
                (frame, view)
                for view, frames in views.items()
                for frame in range(5)
                if torch.equal(image, frames[row, frame])
            ]
            assert matches, "a training view is not a flipped or turned frame of its clip"
            seen.update(matches)
    assert len({frame for frame, _ in seen}) == 5 and len({view for _, view in seen}) == 8


def test_a_model_without_text_tasks_or_experts_has_no_appearance_tokens():
    model = small_model(tasks=("action", "detection"), num_domains=0)
    out = model(example()[0])
    assert model.appearance is None and out.appearance is None and out.routing is None
    assert model.qa_head is None and model.caption_decoder is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(tasks=("action", "tracking")), "tasks must be a non-empty subset"),
        (dict(vocab_size=3), "need vocab_size > 4"),
        (dict(num_answers=0), "task qa needs num_answers >= 1"),
        (dict(num_classes=0), "needs a classification head"),
        (dict(routing="hard"), "mode must be one of"),
    ],
)
def test_inconsistent_settings_are_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_model(**overrides)
