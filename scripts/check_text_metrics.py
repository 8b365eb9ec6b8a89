"""Compares train.text_metrics with the reference implementations on the built-in video set's
captions, each hypothesis a reference with a few random word edits, 0-2 extra references a clip:

    pip install nltk pycocoevalcap   # references only, not dependencies of the package
    python scripts/check_text_metrics.py [data/moving_shapes/training/annotations/video_captioning.json]

(the video job writes that file; ``train.data.moving_shapes.ensure_moving_shapes`` makes it).
Prints, per seed, our BLEU-4 beside NLTK's ``corpus_bleu`` and our CIDEr-D beside
pycocoevalcap's ``Cider``. Every hypothesis keeps at least 4 tokens: for a shorter one NLTK
counts one n-gram of an order it does not have, where Papineni et al. (and we) count none.
"""

import json
import random
import sys

from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu
from pycocoevalcap.cider.cider_scorer import CiderScorer

from train.data.text import WordTokenizer
from train.metrics.text import cider_d, corpus_bleu

CAPTIONS = "data/moving_shapes/training/annotations/video_captioning.json"
EDIT_WORDS = ("red", "blue", "moves", "a", ".", "big")
MIN_TOKENS = 4


def edited(tokens: list[str], rng: random.Random) -> list[str]:
    """``tokens`` after up to four random substitutions, deletions or insertions."""
    tokens = list(tokens)
    for _ in range(rng.randrange(5)):
        position, edit = rng.randrange(len(tokens)), rng.randrange(3)
        if edit == 0:
            tokens[position] = rng.choice(EDIT_WORDS)
        elif edit == 1 and len(tokens) > MIN_TOKENS:
            del tokens[position]
        else:
            tokens.insert(position, rng.choice(EDIT_WORDS))
    return tokens


def main(path: str = CAPTIONS) -> None:
    with open(path) as file:
        captions = [
            WordTokenizer.tokenize(text) for entry in json.load(file) for text in entry["captions"]
        ]
    for seed in range(3):
        rng = random.Random(seed)
        references = [
            [caption] + [rng.choice(captions) for _ in range(rng.randrange(3))]
            for caption in captions
        ]
        hypotheses = [edited(clip[0], rng) for clip in references]
        coco = CiderScorer(n=4, sigma=6.0)
        for hypothesis, clip in zip(hypotheses, references):
            coco += (" ".join(hypothesis), [" ".join(reference) for reference in clip])
        print(
            f"seed {seed}: BLEU-4 {corpus_bleu(hypotheses, references):.15f} "
            f"NLTK {nltk_corpus_bleu(references, hypotheses):.15f}  "
            f"CIDEr-D {cider_d(hypotheses, references):.15f} "
            f"pycocoevalcap {coco.compute_score()[0]:.15f}"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
