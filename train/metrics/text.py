"""Caption metrics over tokenised text: corpus BLEU (Papineni et al., 2002) and CIDEr-D
(Vedantam et al., 2015).

Every function takes ``hypotheses`` (one token list per clip) and ``references`` (per clip, a
non-empty list of token lists), e.g. from ``WordTokenizer.tokenize``.
"""

import math
from collections import Counter
from collections.abc import Sequence

Tokens = Sequence[str]

CIDER_MAX_N = 4
CIDER_SIGMA = 6.0  # the Gaussian length penalty's width, in tokens
CIDER_SCALE = 10.0


def ngrams(tokens: Tokens, n: int) -> Counter:
    """Counts of the n-grams (as tuples) of ``tokens``."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _check_corpus(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references must have one entry per clip, got {len(hypotheses)} "
            f"and {len(references)}"
        )
    for index, (hypothesis, clip_references) in enumerate(zip(hypotheses, references)):
        if isinstance(hypothesis, str) or any(isinstance(ref, str) for ref in clip_references):
            raise TypeError(
                f"hypotheses[{index}] and references[{index}] must hold token lists, not strings"
            )
        if not clip_references:
            raise ValueError(f"references[{index}] is empty: every clip needs a reference")


def corpus_bleu(
    hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_n: int = 4
) -> float:
    """BLEU-``max_n`` of a corpus: n-gram counts clipped to their most in any one reference,
    summed over the corpus for each n = 1 … max_n; the geometric mean of those precisions
    times the brevity penalty min(1, exp(1 − r / c)), c the hypotheses' total length and r the
    sum of each clip's reference length closest to its hypothesis (the shorter on a tie). No
    smoothing: 0 when any precision is 0 (or has no n-gram to count)."""
    _check_corpus(hypotheses, references)
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    matched, total = [0] * max_n, [0] * max_n
    hypothesis_length = reference_length = 0
    for hypothesis, clip_references in zip(hypotheses, references):
        hypothesis_length += len(hypothesis)
        reference_length += min(
            (len(ref) for ref in clip_references),
            key=lambda length: (abs(length - len(hypothesis)), length),
        )
        for n in range(1, max_n + 1):
            counts = ngrams(hypothesis, n)
            most = Counter()
            for ref in clip_references:
                most |= ngrams(ref, n)  # | keeps each n-gram's larger count
            matched[n - 1] += sum((counts & most).values())
            total[n - 1] += sum(counts.values())
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = min(0.0, 1 - reference_length / hypothesis_length)
    return math.exp(brevity + log_precision)


def sentence_bleu(hypothesis: Tokens, references: Sequence[Tokens], max_n: int = 4) -> float:
    """BLEU of one hypothesis against its references (a corpus of one clip)."""
    return corpus_bleu([hypothesis], [references], max_n)


def _tf_idf(counts: Counter, log_documents: float, frequency: Counter) -> tuple[dict, float]:
    """TF-IDF weights of one sentence's n-grams and their Euclidean norm."""
    weights = {
        gram: count * (log_documents - math.log(max(1, frequency[gram])))
        for gram, count in counts.items()
    }
    return weights, math.sqrt(sum(weight * weight for weight in weights.values()))


def cider_d(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """CIDEr-D of a corpus: for each n = 1 … 4, TF-IDF vectors of the n-grams (document
    frequency: the number of clips whose references contain the n-gram, out of all clips);
    each reference's score is the cosine of the hypothesis's vector, clipped to the
    reference's weights, with the reference's, times exp(−Δ² / 2σ²) for a length difference Δ
    (σ = 6); averaged over n and the references, ×10, averaged over the clips. With a single
    clip every weight is log(1 / 1) = 0: the metric needs a corpus."""
    _check_corpus(hypotheses, references)
    if not hypotheses:
        raise ValueError("cider_d needs at least one clip")
    log_documents = math.log(len(references))
    scores = []
    for n in range(1, CIDER_MAX_N + 1):
        frequency = Counter(
            gram for clip in references for gram in set().union(*(ngrams(ref, n) for ref in clip))
        )
        scores.append(
            [
                _cider_n(hypothesis, clip, n, log_documents, frequency)
                for hypothesis, clip in zip(hypotheses, references)
            ]
        )
    per_clip = [sum(clip_scores) / CIDER_MAX_N for clip_scores in zip(*scores)]
    return CIDER_SCALE * sum(per_clip) / len(per_clip)


def _cider_n(
    hypothesis: Tokens, clip_references: Sequence[Tokens], n: int, log_documents, frequency
) -> float:
    """One clip's n-gram CIDEr-D term, averaged over its references."""
    weights, norm = _tf_idf(ngrams(hypothesis, n), log_documents, frequency)
    total = 0.0
    for ref in clip_references:
        ref_weights, ref_norm = _tf_idf(ngrams(ref, n), log_documents, frequency)
        if norm == 0 or ref_norm == 0:
            continue
        overlap = sum(
            min(weight, ref_weights[gram]) * ref_weights[gram]
            for gram, weight in weights.items()
            if gram in ref_weights
        )
        penalty = math.exp(-((len(hypothesis) - len(ref)) ** 2) / (2 * CIDER_SIGMA**2))
        total += penalty * overlap / (norm * ref_norm)
    return total / len(clip_references)
