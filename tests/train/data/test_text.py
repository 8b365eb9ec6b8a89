import pytest
import torch

from train.data.text import AnswerVocab, WordTokenizer

PAD, BOS, EOS, UNK = WordTokenizer.PAD, WordTokenizer.BOS, WordTokenizer.EOS, WordTokenizer.UNK
CAPTIONS = [
    "A red half-disk waits, then moves sideways.",
    "On a whiteboard, a yellow crescent turns.",
    "A red square moves.",
]


@pytest.fixture
def tokenizer() -> WordTokenizer:
    return WordTokenizer.build(CAPTIONS)


def test_tokenizer_splits_words_and_punctuation(tokenizer):
    assert tokenizer.tokenize("A red Half-disk waits, then moves.") == [
        "a",
        "red",
        "half-disk",
        "waits",
        ",",
        "then",
        "moves",
        ".",
    ]
    assert tokenizer.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    # "a" occurs 4 times, "." 3, "," "moves" "red" twice (alphabetical among equals), then singles.
    assert tokenizer.words[4:9] == ["a", ".", ",", "moves", "red"]


def test_tokenizer_round_trip_and_unknown_words(tokenizer):
    for caption in CAPTIONS:
        ids = tokenizer.encode(caption, bos=True, eos=True)
        assert ids[0] == BOS and ids[-1] == EOS and UNK not in ids
        assert tokenizer.decode(ids + [PAD, PAD]) == caption.lower()
    ids = tokenizer.encode("A purple square zigzags.")
    assert ids == [tokenizer.ids["a"], UNK, tokenizer.ids["square"], UNK, tokenizer.ids["."]]
    assert tokenizer.decode(ids) == "a <unk> square <unk>."
    assert tokenizer.encode("<pad>") == [UNK, UNK, UNK]  # text never yields a special token
    assert tokenizer.decode(torch.tensor([tokenizer.ids["red"], EOS, tokenizer.ids["a"]])) == "red"


def test_tokenizer_build_options_and_state_dict(tokenizer):
    assert WordTokenizer.build(CAPTIONS, min_freq=2).words[4:] == ["a", ".", ",", "moves", "red"]
    assert len(WordTokenizer.build(CAPTIONS, max_size=3)) == 4 + 3
    assert len(WordTokenizer.build([])) == 4
    restored = WordTokenizer.from_state_dict(tokenizer.state_dict())
    assert restored.words == tokenizer.words and len(restored) == len(tokenizer)
    with pytest.raises(ValueError, match="min_freq"):
        WordTokenizer.build(CAPTIONS, min_freq=0)
    with pytest.raises(TypeError, match="texts"):
        WordTokenizer.build("a caption")


def test_encode_batch_pads_and_truncates(tokenizer):
    batch = tokenizer.encode_batch(["A red square moves.", "red"], max_len=5, bos=True, eos=True)
    a, red, square = (tokenizer.ids[word] for word in ("a", "red", "square"))
    # The first caption keeps BOS and EOS and loses its last two tokens.
    assert batch.tolist() == [[BOS, a, red, square, EOS], [BOS, red, EOS, PAD, PAD]]
    assert batch.dtype == torch.long
    assert tokenizer.encode_batch([], max_len=7).shape == (0, 7)
    assert tokenizer.encode_batch([""], max_len=3, eos=True).tolist() == [[EOS, PAD, PAD]]
    with pytest.raises(ValueError, match="max_len"):
        tokenizer.encode_batch(["red"], max_len=2, bos=True, eos=True)


def test_answer_vocab():
    vocab = AnswerVocab.build(["red", "circle", "red", "left", "circle", "blue"])
    assert vocab.answers == ["circle", "red", "blue", "left"]
    assert vocab.index("red") == 1 and vocab.index("purple") == -1
    assert vocab.answer(3) == "left" and len(vocab) == 4
    assert AnswerVocab.from_state_dict(vocab.state_dict()).answers == vocab.answers
    assert len(AnswerVocab.build([])) == 0
    with pytest.raises(IndexError, match="index 4"):
        vocab.answer(4)


# -- QA head ---------------------------------------------------------------------------------
