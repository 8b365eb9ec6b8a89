"""Text of the video annotations as the text heads read it: a word-level tokenizer and the
answer vocabulary, built from the training annotations and saved with the checkpoints as plain
lists. Their first ids are the heads' special tokens (``python_models.video.text``)."""

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Self

import torch
from torch import Tensor

from python_models.video.text import BOS, EOS, PAD, SPECIAL_TOKENS, UNK

from .annotations import VideoRecord

# Lower-case words (inner hyphens and apostrophes kept: "half-disk", "it's") or one punctuation mark.
TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|[^\sa-z0-9]")


def _by_frequency(items: Iterable[str], min_freq: int = 1) -> list[str]:
    """Distinct items seen at least ``min_freq`` times, most frequent first, ties alphabetical."""
    counts = Counter(items)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [item for item, count in ranked if count >= min_freq]


def _strings(name: str, values: Iterable[str]) -> list[str]:
    """``values`` as a list, checked to hold strings (a lone string is refused, not split)."""
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, got the string {values!r:.80}")
    values = list(values)
    if not all(isinstance(value, str) for value in values):
        raise TypeError(f"{name} must be a sequence of strings, got {values!r:.80}")
    return values


class Vocabulary:
    """Distinct strings in index order, their indices, and a state dict of plain lists (it
    goes into checkpoints) under ``state_key``."""

    state_key = "entries"

    def __init__(self, entries: Iterable[str]):
        entries = _strings(self.state_key, entries)
        if len(set(entries)) != len(entries):
            raise ValueError(f"{type(self).__name__}: {self.state_key} must be distinct")
        self.entries = entries
        self.ids = {entry: index for index, entry in enumerate(entries)}

    def state_dict(self) -> dict[str, list[str]]:
        return {self.state_key: list(self.entries)}

    @classmethod
    def from_state_dict(cls, state: dict) -> Self:
        if cls.state_key not in state:
            raise KeyError(
                f"{cls.__name__}: a state dict with {cls.state_key!r}, got {list(state)}"
            )
        return cls(state[cls.state_key])

    def __len__(self) -> int:
        return len(self.entries)


class WordTokenizer(Vocabulary):
    """Word-level tokenizer: lower-cased words and punctuation marks, ids from a vocabulary whose
    first four entries are ``SPECIAL_TOKENS`` (so ``PAD, BOS, EOS, UNK = 0, 1, 2, 3``)."""

    PAD, BOS, EOS, UNK = PAD, BOS, EOS, UNK  # the heads' ids, also as the tokenizer's
    state_key = "words"

    def __init__(self, words: Sequence[str]):
        """``words``: the whole vocabulary in id order, starting with ``SPECIAL_TOKENS``."""
        super().__init__(words)
        if tuple(self.words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"WordTokenizer: words must start with {list(SPECIAL_TOKENS)}, "
                f"got {self.words[: len(SPECIAL_TOKENS)]}"
            )

    @property
    def words(self) -> list[str]:
        return self.entries

    @classmethod
    def build(
        cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None
    ) -> "WordTokenizer":
        """The vocabulary of ``texts``: words seen at least ``min_freq`` times, most frequent
        first (ties alphabetical), at most ``max_size`` of them besides the special tokens."""
        if min_freq < 1:
            raise ValueError(f"WordTokenizer.build: min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < 0:
            raise ValueError(f"WordTokenizer.build: max_size must be >= 0 or None, got {max_size}")
        texts = _strings("texts", texts)
        tokens = (token for text in texts for token in cls.tokenize(text))
        # No token matches a special one: the pattern splits "<pad>" into "<", "pad", ">".
        return cls(SPECIAL_TOKENS + tuple(_by_frequency(tokens, min_freq)[:max_size]))

    @staticmethod
    def tokenize(text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"WordTokenizer: text must be a str, got {type(text).__name__}")
        return TOKEN_PATTERN.findall(text.lower())

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of the text's tokens (unknown words → ``UNK``), framed by BOS / EOS if asked."""
        ids = [self.ids.get(token, self.UNK) for token in self.tokenize(text)]
        return [self.BOS] * bos + ids + [self.EOS] * eos

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """Text of the ids up to the first EOS, without PAD and BOS; punctuation marks join the
        word before them."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        text = ""
        for index in ids:
            if index == self.EOS:
                break
            if index in (self.PAD, self.BOS):
                continue
            if not 0 <= index < len(self):
                raise ValueError(f"WordTokenizer.decode: id {index} not in [0, {len(self)})")
            word = self.words[index]
            is_punctuation = not word[0].isalnum() and word not in SPECIAL_TOKENS
            text += word if is_punctuation or not text else " " + word
        return text

    def encode_batch(
        self, texts: Sequence[str], max_len: int, bos: bool = False, eos: bool = False
    ) -> Tensor:
        """(len(texts), max_len) int64 ids, PAD after each text. A longer text loses its last
        words; its BOS and EOS are kept."""
        if max_len < bos + eos + 1:
            raise ValueError(
                f"WordTokenizer.encode_batch: max_len must be >= {bos + eos + 1} with "
                f"bos={bos}, eos={eos}, got {max_len}"
            )
        texts = _strings("texts", texts)
        batch = torch.full((len(texts), max_len), self.PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)[: max_len - bos - eos]
            ids = [self.BOS] * bos + ids + [self.EOS] * eos
            batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return batch


class AnswerVocab(Vocabulary):
    """The answers a QA head chooses from, most frequent first (ties alphabetical)."""

    state_key = "answers"

    @classmethod
    def build(cls, answers: Iterable[str]) -> "AnswerVocab":
        return cls(_by_frequency(_strings("answers", answers)))

    @property
    def answers(self) -> list[str]:
        return self.entries

    def index(self, answer: str) -> int:
        """The answer's class index, -1 for an answer outside the vocabulary."""
        return self.ids.get(answer, -1)

    def answer(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(f"AnswerVocab.answer: index {index} not in [0, {len(self)})")
        return self.answers[index]


@dataclasses.dataclass(frozen=True)
class TextVocabulary:
    """The words of the questions and captions, and the answers, of the training annotations."""

    words: WordTokenizer
    answers: AnswerVocab

    @classmethod
    def build(cls, records: Sequence[VideoRecord]) -> "TextVocabulary":
        texts = [q for r in records for q, _ in r.qa] + [c for r in records for c in r.captions]
        return cls(
            WordTokenizer.build(texts), AnswerVocab.build([a for r in records for _, a in r.qa])
        )

    def state_dict(self) -> dict[str, Any]:
        return {"words": self.words.state_dict(), "answers": self.answers.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "TextVocabulary":
        return cls(
            WordTokenizer.from_state_dict(state["words"]),
            AnswerVocab.from_state_dict(state["answers"]),
        )
