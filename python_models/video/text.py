"""Text heads of the video model: a video QA head and an autoregressive caption decoder, both
reading the backbone's tokens through cross-attention.

Both heads take the video tokens (batch, L, dim) that ``HierarchicalVLM.forward_features``
returns and LayerNorm them once before every cross-attention reads them. Built with
``clip_summary``, they also take one pooled vector per clip (batch, dim) that reaches the answer
logits or every word's input directly: on small data, learning where to attend comes slowly
(on the built-in video set, a QA head reading through cross-attention alone stayed at chance on
the shape questions and at 58 % on the colour ones).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Mlp, init_vit_weights
from ..vit import NORM_EPS

# The token ids the heads read and write: a vocabulary's first entries are these, in this order
# (``train.data.text.WordTokenizer`` builds such vocabularies from annotations).
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(len(SPECIAL_TOKENS))


# -- layers ----------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention``, with an optional key
    mask or a causal mask: ``keys_values(context)`` projects the context (``x`` itself for
    self-attention), which a decoder may cache, and ``forward`` attends the queries of ``x``
    to them."""

    def __init__(self, dim: int, num_heads: int, drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"MultiHeadAttention: dim must be divisible by num_heads, got {dim} and {num_heads}"
            )
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def keys_values(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (batch, heads, length, head_dim) of the context tokens."""
        keys, values = self.kv(context).chunk(2, dim=-1)
        return self._heads(keys), self._heads(values)

    def forward(
        self,
        x: Tensor,
        keys: Tensor,
        values: Tensor,
        key_mask: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """key_mask: (batch, keys) bool, True for keys that may be attended."""
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            self._heads(self.q(x)), keys, values, attn_mask=mask, is_causal=causal
        )
        return self.drop(self.proj(out.transpose(1, 2).flatten(2)))


class DecodingCache:
    """One layer's keys and values during incremental decoding: those of the video tokens
    (fixed) and those of the positions decoded so far (growing by one each step)."""

    def __init__(self, video_keys_values: tuple[Tensor, Tensor]):
        self.video = video_keys_values
        self.past: tuple[Tensor, Tensor] | None = None

    def extend(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """The past keys and values followed by the newest position's."""
        if self.past is not None:
            keys = torch.cat([self.past[0], keys], 2)
            values = torch.cat([self.past[1], values], 2)
        self.past = keys, values
        return self.past

    def select(self, rows: Tensor) -> None:
        """Keep the past of these rows, in this order (beam search's surviving hypotheses,
        each a row of the same clip, so the video's keys stay)."""
        self.past = tuple(tensor[rows] for tensor in self.past)


class TextLayer(nn.Module):
    """Pre-norm residual layer over text tokens: self-attention (if ``self_attention``), then
    cross-attention to the video tokens (if ``cross_attention``), then an MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        drop: float,
        self_attention: bool = True,
        cross_attention: bool = True,
    ):
        super().__init__()
        self.self_norm = nn.LayerNorm(dim, eps=NORM_EPS) if self_attention else None
        self.self_attn = MultiHeadAttention(dim, num_heads, drop) if self_attention else None
        self.cross_norm = nn.LayerNorm(dim, eps=NORM_EPS) if cross_attention else None
        self.cross_attn = MultiHeadAttention(dim, num_heads, drop) if cross_attention else None
        self.mlp_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(
        self,
        x: Tensor,
        video: Tensor | None = None,
        key_mask: Tensor | None = None,
        causal: bool = False,
        cache: DecodingCache | None = None,
    ) -> Tensor:
        """With a ``cache``, ``x`` holds the newest position only: it attends to every cached
        one (no mask needed) and to the cached video keys (``video`` is not read)."""
        if self.self_attn is not None:
            normed = self.self_norm(x)
            keys, values = self.self_attn.keys_values(normed)
            if cache is not None:
                keys, values = cache.extend(keys, values)
            causal = causal and cache is None
            x = x + self.self_attn(normed, keys, values, key_mask, causal)
        if self.cross_attn is not None:
            keys, values = self.cross_attn.keys_values(video) if cache is None else cache.video
            x = x + self.cross_attn(self.cross_norm(x), keys, values)
        return x + self.mlp(self.mlp_norm(x))


class TokenEmbedding(nn.Module):
    """Word embedding plus learned positions for sequences of up to ``max_len`` ids."""

    def __init__(self, vocab_size: int, dim: int, max_len: int):
        super().__init__()
        if vocab_size <= len(SPECIAL_TOKENS) or max_len < 1:
            raise ValueError(
                f"TokenEmbedding: vocab_size must be > {len(SPECIAL_TOKENS)} and max_len >= 1, "
                f"got {vocab_size} and {max_len}"
            )
        self.max_len = max_len
        self.words = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.positions = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.words.weight, std=0.02)
        nn.init.trunc_normal_(self.positions, std=0.02)
        with torch.no_grad():
            self.words.weight[PAD].zero_()

    def forward(self, ids: Tensor, name: str, offset: int = 0) -> Tensor:
        """Embeddings of ``ids`` (batch, length) at positions offset … offset + length − 1;
        ``name`` is the argument's in error messages."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(
                f"{name} must be (batch, length) int64, got {tuple(ids.shape)} {ids.dtype}"
            )
        if not 1 <= offset + ids.shape[1] <= self.max_len:
            raise ValueError(
                f"{name} length must be in [1, {self.max_len}], got {offset + ids.shape[1]}"
            )
        vocab_size = self.words.num_embeddings
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(
                f"{name} ids must be in [0, {vocab_size}), got [{ids.min().item()}, {ids.max().item()}]"
            )
        return self.words(ids) + self.positions[:, offset : offset + ids.shape[1]]


def _check_video(video_tokens: Tensor, dim: int, batch: int | None = None) -> None:
    if video_tokens.dim() != 3 or video_tokens.shape[-1] != dim:
        raise ValueError(f"video_tokens must be (batch, L, {dim}), got {tuple(video_tokens.shape)}")
    if batch is not None and len(video_tokens) != batch:
        raise ValueError(f"video_tokens hold {len(video_tokens)} clips for {batch} text rows")


def _summary_norm(dim: int, clip_summary: bool) -> nn.LayerNorm | None:
    return nn.LayerNorm(dim, eps=NORM_EPS) if clip_summary else None


def _check_summary(summary: Tensor | None, norm: nn.Module | None, video_tokens: Tensor) -> None:
    """A head built with ``clip_summary`` needs one (batch, dim) vector per clip; one without
    takes none."""
    if norm is None:
        if summary is not None:
            raise ValueError("summary given to a head built without clip_summary")
        return
    expected = (len(video_tokens), video_tokens.shape[-1])
    if summary is None or tuple(summary.shape) != expected:
        got = None if summary is None else tuple(summary.shape)
        raise ValueError(f"summary must be {expected} (clip_summary is on), got {got}")


# -- heads -----------------------------------------------------------------------------------


class VideoQAHead(nn.Module):
    """Answer classification for a question about a clip: question word embeddings and
    positions → ``num_layers`` self-attention layers (PAD keys masked) → one layer whose
    question tokens cross-attend to the video tokens → LayerNorm → mean over the question's
    non-PAD tokens → linear answer logits.

    Args:
        dim: width of the video tokens and of the question encoder.
        vocab_size: the tokenizer's size; num_answers: the answer vocabulary's size.
        num_layers, num_heads, mlp_ratio: the question encoder's shape.
        max_question_len: longest question (in tokens) the positions cover.
        drop: dropout after attention and in the MLPs.
        clip_summary: ``forward`` takes a pooled clip vector too, LayerNormed and concatenated
            with the pooled question before the answer logits.
    """

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        num_answers: int,
        num_layers: int = 2,
        num_heads: int = 4,
        max_question_len: int = 16,
        mlp_ratio: float = 2.0,
        drop: float = 0.0,
        clip_summary: bool = False,
    ):
        super().__init__()
        if num_answers < 1:
            raise ValueError(f"VideoQAHead: num_answers must be >= 1, got {num_answers}")
        self.dim = dim
        self.embed = TokenEmbedding(vocab_size, dim, max_question_len)
        self.video_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.layers = nn.ModuleList(
            TextLayer(dim, num_heads, mlp_ratio, drop, cross_attention=False)
            for _ in range(num_layers)
        )
        self.fusion = TextLayer(dim, num_heads, mlp_ratio, drop, self_attention=False)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.summary_norm = _summary_norm(dim, clip_summary)
        self.head = nn.Linear(dim * (1 + clip_summary), num_answers)
        init_vit_weights(self)

    def forward(
        self, video_tokens: Tensor, questions: Tensor, summary: Tensor | None = None
    ) -> Tensor:
        """video_tokens (batch, L, dim), questions (batch, Lq) int64, summary (batch, dim) with
        ``clip_summary`` → (batch, num_answers)."""
        x = self.embed(questions, "questions")
        _check_video(video_tokens, self.dim, len(questions))
        _check_summary(summary, self.summary_norm, video_tokens)
        words = questions != PAD
        # A question of only PAD attends to all its positions (and is pooled from none), so
        # its softmax never sees an all-masked row.
        key_mask = words | ~words.any(1, keepdim=True)
        for layer in self.layers:
            x = layer(x, key_mask=key_mask)
        x = self.norm(self.fusion(x, self.video_norm(video_tokens)))
        weights = words.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        if summary is not None:
            pooled = torch.cat([pooled, self.summary_norm(summary)], -1)
        return self.head(pooled)


class CaptionDecoder(nn.Module):
    """Autoregressive caption decoder: word embeddings and positions → ``num_layers`` pre-norm
    layers (causal self-attention, cross-attention to the video tokens, MLP) → LayerNorm →
    logits through the word embedding's transpose (tied weights).

    Args:
        dim: width of the video tokens and of the decoder.
        vocab_size: the tokenizer's size.
        num_layers, num_heads, mlp_ratio: the decoder's shape.
        max_len: longest input sequence (BOS and words); also the most tokens ``greedy`` and
            ``beam_search`` generate.
        drop: dropout after attention and in the MLPs.
        clip_summary: every method takes a pooled clip vector too (``summary``), LayerNormed,
            projected and added to every word's input embedding.

    ``greedy``, ``beam_search`` and ``generate`` run without gradients in whichever mode the
    module is in (call ``eval()`` first to turn dropout off).
    """

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        num_layers: int = 2,
        num_heads: int = 4,
        max_len: int = 24,
        mlp_ratio: float = 2.0,
        drop: float = 0.0,
        clip_summary: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.max_len = max_len
        self.embed = TokenEmbedding(vocab_size, dim, max_len)
        self.video_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.layers = nn.ModuleList(
            TextLayer(dim, num_heads, mlp_ratio, drop) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.summary_norm = _summary_norm(dim, clip_summary)
        self.summary_proj = nn.Linear(dim, dim) if clip_summary else None
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        init_vit_weights(self)
        # Generation never emits these: PAD is no target and BOS only starts the input.
        never = torch.zeros(vocab_size)
        never[[PAD, BOS]] = float("-inf")
        self.register_buffer("never_generated", never, persistent=False)

    def _decode(
        self,
        captions_in: Tensor,
        summary_input: Tensor | None,
        video: Tensor | None = None,
        caches: list[DecodingCache] | None = None,
        offset: int = 0,
    ) -> Tensor:
        """Logits after each position of ``captions_in``: the whole sequence reading ``video``,
        or (with ``caches``) the positions from ``offset`` on, after the cached ones;
        ``summary_input`` (``_summary_input``) is added to every position's input."""
        x = self.embed(captions_in, "captions", offset)
        if summary_input is not None:
            x = x + summary_input
        for layer, cache in zip(self.layers, caches or [None] * len(self.layers)):
            x = layer(x, video, causal=True, cache=cache)
        return F.linear(self.norm(x), self.embed.words.weight, self.bias)

    def forward(
        self, video_tokens: Tensor, captions_in: Tensor, summary: Tensor | None = None
    ) -> Tensor:
        """video_tokens (batch, L, dim), captions_in (batch, Lc) int64 (BOS first), summary
        (batch, dim) with ``clip_summary`` → logits (batch, Lc, vocab) for the token after each
        position."""
        _check_video(video_tokens, self.dim, len(captions_in))
        _check_summary(summary, self.summary_norm, video_tokens)
        return self._decode(
            captions_in, self._summary_input(summary), self.video_norm(video_tokens)
        )

    def _summary_input(self, summary: Tensor | None) -> Tensor | None:
        """What a clip's summary adds to every word's input: (batch, 1, dim), or None."""
        return None if summary is None else self.summary_proj(self.summary_norm(summary))[:, None]

    def loss(self, video_tokens: Tensor, captions: Tensor, summary: Tensor | None = None) -> Tensor:
        """Teacher-forced cross-entropy per target token; captions (batch, Lc ≤ max_len + 1)
        are BOS, words, EOS, then PAD, which is ignored (0 for a batch with no target
        token)."""
        if captions.dim() != 2 or captions.shape[1] < 2:
            raise ValueError(f"captions must be (batch, length >= 2), got {tuple(captions.shape)}")
        logits = self(video_tokens, captions[:, :-1], summary)
        targets = captions[:, 1:]
        total = F.cross_entropy(
            logits.flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=PAD,
            reduction="sum",
        )
        return total / (targets != PAD).sum().clamp(min=1)

    def _generation_length(self, max_len: int | None) -> int:
        max_len = self.max_len if max_len is None else max_len
        if not 1 <= max_len <= self.max_len:
            raise ValueError(f"max_len must be in [1, {self.max_len}], got {max_len}")
        return max_len

    def _start(
        self, video_tokens: Tensor, summary: Tensor | None, copies: int
    ) -> tuple[list[DecodingCache], Tensor | None, Tensor]:
        """Each layer's cache for ``copies`` rows per clip, the summary's input of each row
        (``_summary_input``, computed once for every step), and a BOS token per row."""
        _check_video(video_tokens, self.dim)
        _check_summary(summary, self.summary_norm, video_tokens)
        video = self.video_norm(video_tokens).repeat_interleave(copies, 0)
        caches = [DecodingCache(layer.cross_attn.keys_values(video)) for layer in self.layers]
        summary_input = self._summary_input(summary)
        if summary_input is not None:
            summary_input = summary_input.repeat_interleave(copies, 0)
        return (
            caches,
            summary_input,
            torch.full((len(video),), BOS, device=video.device),
        )

    def _next_log_probs(
        self, tokens: Tensor, step: int, caches: list[DecodingCache], summary_input: Tensor | None
    ) -> Tensor:
        """(rows, vocab) log-probabilities of the token after each row's ``tokens`` (at position
        ``step``) and its cached past, PAD and BOS excluded."""
        logits = self._decode(tokens[:, None], summary_input, caches=caches, offset=step)
        logits = logits[:, -1].float()
        return (logits + self.never_generated).log_softmax(-1)

    @torch.no_grad()
    def greedy(
        self, video_tokens: Tensor, max_len: int | None = None, *, summary: Tensor | None = None
    ) -> Tensor:
        """(batch, ≤ max_len) int64: the most likely token at each step, until every clip has
        emitted EOS; PAD after a clip's EOS, no BOS."""
        max_len = self._generation_length(max_len)
        caches, summary_input, tokens = self._start(video_tokens, summary, 1)
        finished = torch.zeros_like(tokens, dtype=torch.bool)
        generated = []
        for step in range(max_len):
            tokens = self._next_log_probs(tokens, step, caches, summary_input).argmax(-1)
            tokens = tokens.masked_fill(finished, PAD)
            generated.append(tokens)
            finished |= tokens == EOS
            if finished.all():
                break
        return torch.stack(generated, 1)

    @torch.no_grad()
    def beam_search(
        self,
        video_tokens: Tensor,
        beam_size: int = 3,
        max_len: int | None = None,
        length_penalty: float = 0.0,
        *,
        summary: Tensor | None = None,
    ) -> Tensor:
        """(batch, ≤ max_len) int64: per clip, the best of ``beam_size`` hypotheses by the sum of
        their tokens' log-probabilities / length ** ``length_penalty`` (length counts the EOS).
        A finished hypothesis stays in the beam, extended by PAD at no cost, until
        ``beam_size`` better ones push it out; PAD after EOS, no BOS."""
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        max_len = self._generation_length(max_len)
        batch, device = len(video_tokens), video_tokens.device
        caches, summary_input, tokens = self._start(video_tokens, summary, beam_size)
        sequences = tokens.new_empty(len(tokens), 0)
        vocab = self.never_generated.numel()
        # Only the first beam is live at the start, so the first step's candidates are distinct.
        totals = torch.full((batch, beam_size), float("-inf"), device=device)
        totals[:, 0] = 0
        lengths = torch.zeros_like(totals)
        finished = torch.zeros_like(totals, dtype=torch.bool)
        pad_only = torch.full((vocab,), float("-inf"), device=device)
        pad_only[PAD] = 0
        for step in range(max_len):
            log_probs = self._next_log_probs(tokens, step, caches, summary_input)
            log_probs = log_probs.view(batch, beam_size, vocab)
            log_probs = torch.where(finished[..., None], pad_only, log_probs)
            candidate_totals = (totals[..., None] + log_probs).flatten(1)
            candidate_lengths = (lengths + ~finished).repeat_interleave(vocab, 1)
            scores = candidate_totals / candidate_lengths.clamp(min=1) ** length_penalty
            chosen = scores.topk(beam_size, dim=1).indices
            beam, tokens = chosen // vocab, (chosen % vocab).flatten()
            totals = candidate_totals.gather(1, chosen)
            lengths = candidate_lengths.gather(1, chosen)
            finished = finished.gather(1, beam) | (tokens == EOS).view(batch, -1)
            rows = (beam + torch.arange(batch, device=device)[:, None] * beam_size).flatten()
            sequences = torch.cat([sequences[rows], tokens[:, None]], 1)
            for cache in caches:
                cache.select(rows)
            if finished.all():
                break
        best = (totals / lengths.clamp(min=1) ** length_penalty).argmax(1)
        return sequences.view(batch, beam_size, -1)[torch.arange(batch), best]

    def generate(
        self,
        video_tokens: Tensor,
        beam_size: int = 1,
        max_len: int | None = None,
        *,
        summary: Tensor | None = None,
    ) -> Tensor:
        """Captions as ids (batch, ≤ max_len): greedy for ``beam_size`` 1, else beam search."""
        if beam_size == 1:
            return self.greedy(video_tokens, max_len, summary=summary)
        return self.beam_search(video_tokens, beam_size, max_len, summary=summary)
