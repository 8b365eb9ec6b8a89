import math

import pytest

from train.metrics.text import cider_d, corpus_bleu, ngrams, sentence_bleu


def words(text: str) -> list[str]:
    return text.split()


HYPOTHESES = [words("the cat sat on the mat"), words("a red square moves left")]
REFERENCES = [
    [words("the cat is on the mat")],
    [words("a red square moves left quickly"), words("the red square moves")],
]


def test_bleu_hand_worked_example():
    # Clip 1: unigrams the×2 cat sat on mat vs the×2 cat is on mat → 5 of 6 match; bigrams
    # "the cat", "on the", "the mat" → 3 of 5; trigram "on the mat" → 1 of 4; 4-grams 0 of 3.
    # Clip 2: every n-gram is in the first reference → 5/5, 4/4, 3/3, 2/2.
    # Corpus precisions: 10/11, 7/9, 4/7, 2/5, product 560/3465 = 16/99.
    # Lengths: c = 6 + 5 = 11; r = 6 + 4 (clip 2's references of 6 and 4 tokens are equally
    # close to 5: the shorter counts), c > r so the brevity penalty is 1.
    # BLEU-4 = (16/99) ** (1/4) = 0.63405...
    assert corpus_bleu(HYPOTHESES, REFERENCES) == pytest.approx((16 / 99) ** 0.25, rel=1e-12)
    # Clip 1 alone has no matching 4-gram: BLEU-4 0 without smoothing, BLEU-3 the cube root.
    assert sentence_bleu(HYPOTHESES[0], REFERENCES[0]) == 0.0
    expected = (5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3)
    assert sentence_bleu(HYPOTHESES[0], REFERENCES[0], max_n=3) == pytest.approx(expected)


def test_bleu_brevity_penalty_and_clipping():
    # 3 tokens against a reference of 4: precisions 1, brevity exp(1 - 4/3).
    score = sentence_bleu(words("a red square"), [words("a red square moves")], max_n=2)
    assert score == pytest.approx(math.exp(-1 / 3))
    # "the the the the" against "the cat": unigram matches clipped to 1 of 4.
    assert sentence_bleu(words("the the the the"), [words("the cat")], max_n=1) == 0.25


def test_bleu_properties():
    references = [[hypothesis] for hypothesis in HYPOTHESES]
    assert corpus_bleu(HYPOTHESES, references) == 1.0
    # A clip shorter than n adds no n-gram to count (NLTK counts 1 there, and would give 0.90).
    short = [words("a red square moves left"), words("a square")]
    assert corpus_bleu(short, [[hypothesis] for hypothesis in short]) == 1.0
    assert corpus_bleu([[]], [[words("a red square")]]) == 0.0
    assert corpus_bleu([], []) == 0.0
    # Corpus BLEU is invariant to the order of the clips.
    assert corpus_bleu(HYPOTHESES[::-1], REFERENCES[::-1]) == corpus_bleu(HYPOTHESES, REFERENCES)
    with pytest.raises(ValueError, match="one entry per clip"):
        corpus_bleu(HYPOTHESES, REFERENCES[:1])
    with pytest.raises(ValueError, match=r"references\[0\] is empty"):
        corpus_bleu(HYPOTHESES[:1], [[]])
    with pytest.raises(TypeError, match="token lists"):
        corpus_bleu(["a red square"], [["a red square"]])


def test_ngrams():
    assert ngrams(words("a b a b"), 2) == {("a", "b"): 2, ("b", "a"): 1}
    assert ngrams(words("a"), 2) == {}


def test_cider_hand_worked_example():
    # Two clips, so every n-gram in one clip's references only has weight log(2 / 1) = w.
    # Clip 1 ("a b" against "a b"): unigram and bigram cosines 1, no 3- or 4-grams:
    # 10 · (1 + 1 + 0 + 0) / 4 = 5.
    # Clip 2 ("c e" against "c d"): unigram vectors (c: w, e: w) and (c: w, d: w), overlap
    # min(w, w) · w = w², norms √2·w each → 1/2; no shared bigram: 10 · 0.5 / 4 = 1.25.
    hypotheses = [words("a b"), words("c e")]
    references = [[words("a b")], [words("c d")]]
    assert cider_d(hypotheses, references) == pytest.approx((5 + 1.25) / 2)


def test_cider_properties():
    references = [
        [words("a red square moves left"), words("the red square goes left")],
        [words("a blue circle turns clockwise")],
        [words("on a whiteboard a green star moves up")],
    ]
    exact = [clip[0] for clip in references]
    best = cider_d(exact, references)
    # Identical to the only reference: every cosine 1, no length penalty, 10.
    assert cider_d(exact[1:], references[1:]) == pytest.approx(10.0)
    # A wrong word, a longer caption (length penalty), a repeated word (clipping) score less.
    worse = [
        [words("a red square moves right"), exact[1], exact[2]],
        [exact[0], words("a blue circle turns clockwise in a big circle slowly now"), exact[2]],
        [exact[0], exact[1], words("on a whiteboard a green green green star moves up")],
    ]
    for hypotheses in worse:
        assert cider_d(hypotheses, references) < best
    # The order of the clips does not matter.
    assert cider_d(exact[::-1], references[::-1]) == pytest.approx(best)
    assert cider_d([[]] * 3, references) == 0.0
    with pytest.raises(ValueError, match="at least one clip"):
        cider_d([], [])
