import pytest
import torch

from python_models.video.text import BOS, EOS, PAD, CaptionDecoder, VideoQAHead
from tests.helpers import DEVICES, seeded
from tests.train.data.test_text import CAPTIONS
from train.data.text import AnswerVocab, WordTokenizer

DIM, VOCAB = 16, 12


def video_tokens(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 5, DIM, generator=seeded(seed))


def summaries(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, DIM, generator=seeded(seed + 100))


def random_decoder(seed: int, vocab: int = VOCAB, clip_summary: bool = False) -> CaptionDecoder:
    torch.manual_seed(seed)
    decoder = CaptionDecoder(
        DIM, vocab, num_layers=2, num_heads=2, max_len=8, clip_summary=clip_summary
    ).eval()
    with torch.no_grad():  # sharper next-token distributions than the 0.02-std initialisation
        for parameter in decoder.parameters():
            parameter.normal_(0, 0.5)
    return decoder


def sequence_log_prob(decoder: CaptionDecoder, video: torch.Tensor, ids: torch.Tensor) -> float:
    """Sum of the log-probabilities of one generated caption's tokens up to its EOS."""
    length = (ids == EOS).nonzero()[0, 0].item() + 1 if (ids == EOS).any() else len(ids)
    ids = ids[:length]
    inputs = torch.cat([torch.tensor([BOS]), ids[:-1]])[None]
    with torch.no_grad():  # the full forward, PAD and BOS excluded as in generation
        logits = decoder(video, inputs)[0] + decoder.never_generated
    return logits.log_softmax(-1).gather(1, ids[:, None]).sum().item()


# -- tokenizer -------------------------------------------------------------------------------


def test_qa_head_shapes_and_empty_question():
    head = VideoQAHead(DIM, VOCAB, num_answers=5, num_heads=2, max_question_len=6)
    questions = torch.tensor([[4, 5, 6, PAD, PAD], [PAD] * 5, [7, 8, 9, 10, 11]])
    logits = head(video_tokens(3), questions)
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    # Padding a question further changes nothing.
    longer = head(video_tokens(3), torch.cat([questions, torch.zeros(3, 1, dtype=torch.long)], 1))
    torch.testing.assert_close(longer, logits)
    with pytest.raises(ValueError, match="questions length"):
        head(video_tokens(1), torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="questions ids"):
        head(video_tokens(1), torch.full((1, 3), VOCAB))
    with pytest.raises(ValueError, match="video_tokens"):
        head(video_tokens(2), questions)


@pytest.mark.parametrize("clip_summary", [False, True])
def test_every_parameter_gets_a_gradient(clip_summary):
    head = VideoQAHead(DIM, VOCAB, num_answers=5, num_heads=2, clip_summary=clip_summary)
    decoder = CaptionDecoder(DIM, VOCAB, num_heads=2, clip_summary=clip_summary)
    video = video_tokens(2).requires_grad_()
    summary = summaries(2).requires_grad_() if clip_summary else None
    questions = torch.tensor([[4, 5, 6, 7], [8, 9, PAD, PAD]])
    captions = torch.tensor([[BOS, 4, 5, 6, EOS], [BOS, 7, EOS, PAD, PAD]])
    loss = head(video, questions, summary).logsumexp(1).sum()
    (loss + decoder.loss(video, captions, summary)).backward()
    for module in (head, decoder):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for tensor in (video, summary) if clip_summary else (video,):
        assert tensor.grad.abs().sum() > 0


def test_heads_check_the_clip_summary():
    questions, captions = torch.tensor([[4, 5]]), torch.tensor([[BOS, 4, EOS]])
    video = video_tokens(1)
    plain_head = VideoQAHead(DIM, VOCAB, num_answers=5, num_heads=2)
    plain_decoder = CaptionDecoder(DIM, VOCAB, num_heads=2)
    with pytest.raises(ValueError, match="without clip_summary"):
        plain_head(video, questions, summaries(1))
    with pytest.raises(ValueError, match="without clip_summary"):
        plain_decoder.generate(video, summary=summaries(1))
    head = VideoQAHead(DIM, VOCAB, num_answers=5, num_heads=2, clip_summary=True)
    decoder = CaptionDecoder(DIM, VOCAB, num_heads=2, clip_summary=True)
    for bad in (None, summaries(2), torch.randn(1, DIM + 1)):
        with pytest.raises(ValueError, match=r"summary must be \(1, 16\)"):
            head(video, questions, bad)
        with pytest.raises(ValueError, match=r"summary must be \(1, 16\)"):
            decoder.loss(video, captions, bad)
    # The summary reaches the answers and every word.
    assert not torch.equal(
        head(video, questions, summaries(1)), head(video, questions, summaries(1, 1))
    )
    logits = [decoder(video, captions[:, :-1], summaries(1, seed)) for seed in (0, 1)]
    assert not torch.isclose(logits[0], logits[1]).all(-1).any()


# -- caption decoder -------------------------------------------------------------------------


def test_caption_loss_ignores_padding():
    decoder = random_decoder(0)
    video = video_tokens(2)
    captions = torch.tensor([[BOS, 4, 5, EOS, PAD], [BOS, 6, EOS, PAD, PAD]])
    padded = torch.cat([captions, torch.zeros(2, 3, dtype=torch.long)], 1)
    empty = torch.zeros(1, 8, dtype=torch.long)
    loss = decoder.loss(video, captions)
    torch.testing.assert_close(decoder.loss(video, padded), loss)
    # An all-PAD row adds no target; a batch of them gives 0.
    with_empty = decoder.loss(video_tokens(3)[[0, 1, 0]], torch.cat([padded, empty]))
    torch.testing.assert_close(with_empty, loss)
    assert decoder.loss(video[:1], empty).item() == 0.0
    # Teacher forcing by hand: the mean over the five target tokens of -log p(target).
    logits = decoder(video, captions[:, :-1]).log_softmax(-1)
    targets = captions[:, 1:]
    picked = logits.gather(-1, targets[..., None])[..., 0][targets != PAD]
    torch.testing.assert_close(loss, -picked.mean())


def test_causal_decoder_ignores_later_tokens():
    decoder = random_decoder(1)
    video, captions = video_tokens(1), torch.tensor([[BOS, 4, 5, 6]])
    changed = captions.clone()
    changed[0, 3] = 7
    torch.testing.assert_close(decoder(video, changed)[:, :3], decoder(video, captions)[:, :3])


@pytest.mark.parametrize("clip_summary", [False, True])
def test_incremental_decoding_matches_the_full_forward(clip_summary):
    decoder, video = random_decoder(4, clip_summary=clip_summary), video_tokens(3, 4)
    summary = summaries(3) if clip_summary else None
    captions = torch.tensor([[BOS, 4, 5, 6, 7], [BOS, 8, 9, EOS, PAD], [BOS, 10, 11, 4, 5]])
    caches, row_summary, _ = decoder._start(video, summary, 1)
    steps = [
        decoder._next_log_probs(captions[:, step], step, caches, row_summary) for step in range(5)
    ]
    full = (decoder(video, captions, summary) + decoder.never_generated).log_softmax(-1)
    torch.testing.assert_close(torch.stack(steps, 1), full.detach())


@pytest.mark.parametrize("clip_summary", [False, True])
def test_beam_one_equals_greedy(clip_summary):
    for seed in range(3):
        decoder = random_decoder(seed, clip_summary=clip_summary)
        video, summary = video_tokens(6, seed), summaries(6, seed) if clip_summary else None
        greedy = decoder.greedy(video, summary=summary)
        assert torch.equal(decoder.beam_search(video, beam_size=1, summary=summary), greedy)
        assert torch.equal(decoder.generate(video, summary=summary), greedy)


def test_greedy_output_format():
    decoder, video = random_decoder(2), video_tokens(6, 2)
    ids = decoder.greedy(video, max_len=6)
    assert ids.dtype == torch.long and ids.shape[0] == 6 and 1 <= ids.shape[1] <= 6
    assert not (ids == BOS).any()
    for row in ids:
        ends = (row == EOS).nonzero()
        if len(ends):  # PAD after EOS, none before
            assert (row[ends[0, 0] + 1 :] == PAD).all() and not (row[: ends[0, 0]] == PAD).any()
        else:
            assert not (row == PAD).any()
    if ids.shape[1] < 6:  # stopped early: every clip emitted its EOS
        assert (ids == EOS).any(1).all()
    with pytest.raises(ValueError, match="max_len"):
        decoder.greedy(video, max_len=9)


def test_beam_search_scores_at_least_greedy():
    decoder, video = random_decoder(3), video_tokens(6, 3)
    greedy = decoder.greedy(video)
    beam = decoder.beam_search(video, beam_size=4)
    assert beam.shape[0] == 6 and not (beam == BOS).any()
    greedy_scores = [sequence_log_prob(decoder, v[None], ids) for v, ids in zip(video, greedy)]
    beam_scores = [sequence_log_prob(decoder, v[None], ids) for v, ids in zip(video, beam)]
    for beam_score, greedy_score in zip(beam_scores, greedy_scores):
        assert beam_score >= greedy_score - 1e-5
    assert any(b > g + 1e-5 for b, g in zip(beam_scores, greedy_scores))  # beams do search
    with pytest.raises(ValueError, match="beam_size"):
        decoder.beam_search(video, beam_size=0)


def fit(module: torch.nn.Module, loss_fn, steps: int = 100) -> None:
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    module.eval()


def test_heads_learn_the_text_of_distinct_clips():
    """Trained on three clips, the decoder reproduces their captions and the QA head their
    answers: the tokenizer, the heads and decoding agree end to end."""
    tokenizer = WordTokenizer.build(CAPTIONS)
    torch.manual_seed(0)
    video = video_tokens(len(CAPTIONS))
    decoder = CaptionDecoder(DIM, len(tokenizer), num_heads=2, max_len=12)
    captions = tokenizer.encode_batch(CAPTIONS, 12, bos=True, eos=True)
    fit(decoder, lambda: decoder.loss(video, captions))
    for ids in (decoder.greedy(video), decoder.beam_search(video)):
        assert [tokenizer.decode(row) for row in ids] == [text.lower() for text in CAPTIONS]

    answers = AnswerVocab.build(["red", "yellow", "red", "half-disk", "crescent", "square"])
    pairs = [
        ("What colour is it?", "red"),
        ("What colour is it?", "yellow"),
        ("What colour is it?", "red"),
        ("What shape is it?", "half-disk"),
        ("What shape is it?", "crescent"),
        ("What shape is it?", "square"),
    ]
    question_tokenizer = WordTokenizer.build(question for question, _ in pairs)
    questions = question_tokenizer.encode_batch([question for question, _ in pairs], 6)
    targets = torch.tensor([answers.index(answer) for _, answer in pairs])
    head = VideoQAHead(DIM, len(question_tokenizer), len(answers), num_heads=2, max_question_len=6)
    clips = video.repeat(2, 1, 1)
    fit(head, lambda: torch.nn.functional.cross_entropy(head(clips, questions), targets))
    assert head(clips, questions).argmax(1).tolist() == targets.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_heads_under_bfloat16_autocast(device):
    decoder = random_decoder(5).to(device)
    head = VideoQAHead(DIM, VOCAB, num_answers=5, num_heads=2).to(device)
    video = video_tokens(4, 5).to(device)
    captions = torch.tensor([[BOS, 4, 5, EOS]] * 4, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        assert torch.isfinite(decoder.loss(video, captions))
        assert torch.isfinite(head(video, captions)).all()
        greedy = decoder.greedy(video)
        assert torch.equal(decoder.beam_search(video, beam_size=1), greedy)
        beams = decoder.beam_search(video, beam_size=3, length_penalty=1.0)
    assert greedy.device == beams.device == video.device and len(beams) == 4
