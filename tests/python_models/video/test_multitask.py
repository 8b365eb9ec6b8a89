"""MultiTaskVLM: every head's output shape, gradients reaching every parameter, caption
generation, routing from the appearance tokens, per-domain LoRA adapters, and errors for
inconsistent settings."""

import pytest
import torch

from python_models import create_model
from python_models.adapters.lora import LoraConfig, lora_layers
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
        (dict(num_domains=0, domain_lora=LoraConfig()), "domain_lora needs num_domains >= 1"),
    ],
)
def test_inconsistent_settings_are_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_model(**overrides)


DOMAIN_LORA = LoraConfig(r=8, lora_alpha=16, target_modules=("qkv", "proj"))


def test_domain_lora_replaces_the_expert_ffns_with_adapters_per_domain():
    model = small_model(domain_lora=DOMAIN_LORA)
    assert model.experts is None and model.domain_router is not None
    layers = dict(lora_layers(model))
    # Only the backbone's projections: the text heads' own "proj" layers stay plain.
    assert layers and all(name.startswith("backbone.blocks.") for name in layers)
    assert all(layer.active_adapter is None for layer in layers.values())
    # Each block: qkv (16 → 48) and proj (16 → 16) at rank 8, 2 blocks.
    per_domain = 2 * (8 * (16 + 48) + 8 * (16 + 16))
    assert model.domain_parameters() == {f"domain_{i}": per_domain for i in range(4)}


@pytest.mark.parametrize(
    ("preset", "per_domain"),
    [("hvlm_tiny", 4 * 8 * (96 + 288 + 96 + 96)), ("hvlm_base", 12 * 8 * (768 + 2304 + 768 + 768))],
)
def test_parameters_per_domain_of_the_presets(preset, per_domain):
    backbone = create_model(preset, num_classes=4)
    model = MultiTaskVLM(backbone, ("action",), num_domains=4, domain_lora=DOMAIN_LORA)
    assert set(model.domain_parameters().values()) == {per_domain}


def test_gradients_reach_every_domains_adapters_and_the_router():
    model = small_model(domain_lora=DOMAIN_LORA)
    clips, questions, captions = example()
    out = model(clips, questions, captions)
    (out.action.logsumexp(-1).sum() + out.qa.sum() + out.captioning.sum()).backward()
    for name in model.domain_names:
        ups = [p for n, p in model.named_parameters() if f"lora_B.{name}." in n]
        assert len(ups) == 4 and all(p.grad is not None and p.grad.any() for p in ups), name
    # B starts at zero, so A and the router's gates learn through the adapters once B has
    # moved: one step, then every A and the router have a gradient from the task loss alone.
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    model(clips).action.logsumexp(-1).sum().backward()
    downs = [p for n, p in model.named_parameters() if "lora_A." in n]
    assert len(downs) == 16 and all(p.grad.any() for p in downs)
    assert all(p.grad.any() for p in model.domain_router.parameters())


@pytest.mark.parametrize("attention", ["full", "hierarchical"])
def test_each_clip_gets_its_routers_mixture_of_adapters(attention):
    """Top-1 routing: a clip's output is the backbone with its chosen domain's adapters (also
    in layers that run on one row per frame, as hierarchical attention's)."""
    model = small_model(
        domain_lora=DOMAIN_LORA, routing="top_k", top_k=1, attention=attention
    ).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B." in name:
                parameter.normal_(0, 0.5)
    clips = example()[0]
    out = model(clips)
    chosen = out.routing.gates.argmax(-1)
    for index, domain in enumerate(chosen.tolist()):
        for _, layer in lora_layers(model):
            layer.active_adapter = model.domain_names[domain]
        alone = model.backbone(clips[index : index + 1])
        torch.testing.assert_close(out.action[index : index + 1], alone)


def test_gradient_checkpointing_gives_the_same_gradients_with_domain_lora():
    """The checkpointed blocks recompute in the backward with the clip's adapter mixture."""
    model = small_model(domain_lora=DOMAIN_LORA, tasks=("action",), num_answers=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B." in name:
                parameter.normal_(0, 0.5)
    clips = example()[0]
    gradients = []
    for enabled in (False, True):
        model.set_grad_checkpointing(enabled)
        model.zero_grad()
        torch.manual_seed(1)
        model(clips).action.square().mean().backward()
        gradients.append(
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        )
    assert gradients[0].keys() == gradients[1].keys()
    for name, plain in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], plain, msg=name)
