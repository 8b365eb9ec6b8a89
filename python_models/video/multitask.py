"""MultiTaskVLM: one HierarchicalVLM backbone read by the action, temporal detection, video QA
and captioning heads, with optional domain experts between the backbone and the heads.

clips → backbone tokens (class token + frames × patches) → [domain experts: a router over the
clip's appearance picks a mixture of expert FFNs, applied to every token as a residual] →

- ``action``: the backbone's own head on the pooled tokens;
- ``detection``: ``DetectionHead`` on the mean token of each time step, per input frame;
- ``qa``: ``VideoQAHead``, each question cross-attending to the tokens and the appearance ones;
- ``captioning``: ``CaptionDecoder`` over the same, teacher-forced in training, ``generate``
  at inference.

The appearance tokens (``AppearanceTokens``: the middle frame through a small stem of its own)
feed the router and the text heads. LoRA adapters (``lora``) wrap the backbone's linear layers
by name, one adapter set per domain.
"""

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..layers import init_vit_weights
from ..vit import NORM_EPS
from .detection import DetectionHead, DetectionOutput, step_features
from .experts import DomainRouter, ExpertFFN, RouterOutput
from .model import HierarchicalVLM, MotionConvStem
from .text import CaptionDecoder, VideoQAHead

TASKS = ("action", "detection", "qa", "captioning")


@dataclasses.dataclass
class MultiTaskOutput:
    """What ``MultiTaskVLM.forward`` returns; a task that is off or not asked for is None."""

    action: Tensor | None = None  # (batch, classes)
    detection: DetectionOutput | None = None  # per input frame
    qa: Tensor | None = None  # (batch, questions, answers)
    captioning: Tensor | None = None  # (batch, caption length - 1, vocabulary): next-word logits
    routing: RouterOutput | None = None
    features: Tensor | None = None  # the backbone's tokens after the experts (batch, L, dim)
    appearance: Tensor | None = None  # the middle frame's tokens (batch, patches, dim)


class AppearanceTokens(nn.Module):
    """Tokens of the clip's middle frame through a stem of its own (``MotionConvStem`` on one
    frame): the background (the domain), colour and shape, which a backbone trained for motion
    need not keep. On the built-in video set a router over the backbone's pooled tokens stayed
    at chance when it did not train the backbone, and held back action learning when it did."""

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.stem = MotionConvStem(patch_size, 1, in_chans, dim)

    def forward(self, clips: Tensor) -> Tensor:
        """Normalised clips (batch, T, C, H, W) → (batch, patches, dim)."""
        middle = clips.shape[1] // 2
        return self.stem(clips[:, middle : middle + 1])


class DomainExperts(nn.Module):
    """tokens + Σ_e gate_e · FFN_e(norm(tokens)), one mixture per clip (the domain is a property
    of the whole clip), the gates from a router over a pooled clip feature."""

    def __init__(
        self, dim: int, num_experts: int, hidden_dim: int, routing: str = "soft", top_k: int = 1
    ):
        super().__init__()
        self.router = DomainRouter(dim, num_experts, routing, top_k)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.ffn = ExpertFFN(dim, hidden_dim, num_experts)

    def forward(self, tokens: Tensor, pooled: Tensor) -> tuple[Tensor, RouterOutput]:
        routing = self.router(pooled)
        return tokens + self.ffn(self.norm(tokens), routing.gates.to(tokens.dtype)), routing


class MultiTaskVLM(nn.Module):
    """A video backbone with the heads of ``tasks``.

    Args:
        backbone: a ``HierarchicalVLM`` with a classification head (the action task).
        tasks: which of ``TASKS`` to build (the action head is the backbone's and always there).
        vocab_size: words of the question/caption tokenizer (QA and captioning).
        num_answers: answers of the QA vocabulary.
        num_domains: domain experts and router outputs (0: no experts).
        routing: ``soft`` (every expert, weighted) or ``top_k`` gating.
        top_k: experts per clip for ``top_k`` routing.
        head_layers, head_heads: depth and heads of the QA and captioning transformers.
        max_question_len, max_caption_len: token lengths the text heads are built for.
    """

    def __init__(
        self,
        backbone: HierarchicalVLM,
        tasks: Sequence[str] = TASKS,
        vocab_size: int = 0,
        num_answers: int = 0,
        num_domains: int = 0,
        routing: str = "soft",
        top_k: int = 1,
        head_layers: int = 2,
        head_heads: int = 4,
        max_question_len: int = 16,
        max_caption_len: int = 24,
    ):
        super().__init__()
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown or not tasks:
            raise ValueError(
                f"tasks must be a non-empty subset of {list(TASKS)}, got {list(tasks)}"
            )
        if backbone.num_classes <= 0:
            raise ValueError(
                "MultiTaskVLM: the backbone needs a classification head (num_classes > 0)"
            )
        text_tasks = [t for t in ("qa", "captioning") if t in tasks]
        if text_tasks and vocab_size <= 4:
            raise ValueError(
                f"tasks {text_tasks} need vocab_size > 4 (the special tokens), got {vocab_size}"
            )
        if "qa" in tasks and num_answers < 1:
            raise ValueError(f"task qa needs num_answers >= 1, got {num_answers}")
        self.tasks = tuple(t for t in TASKS if t in tasks)
        self.backbone = backbone
        dim, heads = backbone.embed_dim, head_heads
        self.experts = (
            DomainExperts(dim, num_domains, 2 * dim, routing, top_k) if num_domains else None
        )
        self.appearance = (
            AppearanceTokens(backbone.patch_embed.patch_size, backbone.clip_shape[1], dim)
            if num_domains or text_tasks
            else None
        )
        self.detection_head = (
            DetectionHead(dim, backbone.num_classes, backbone.patch_embed.tubelet_size)
            if "detection" in tasks
            else None
        )
        self.qa_head = (
            VideoQAHead(dim, vocab_size, num_answers, head_layers, heads, max_question_len)
            if "qa" in tasks
            else None
        )
        self.caption_decoder = (
            CaptionDecoder(dim, vocab_size, head_layers, heads, max_caption_len)
            if "captioning" in tasks
            else None
        )
        if self.experts is not None:
            init_vit_weights(self.experts)

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def clip_shape(self) -> tuple[int, ...]:
        return self.backbone.clip_shape

    def set_merge_ratio(self, ratio: float) -> None:
        self.backbone.set_merge_ratio(ratio)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enabled)

    def forward_features(self, clips: Tensor) -> MultiTaskOutput:
        """The backbone's tokens after the experts (``features``), the middle frame's appearance
        tokens and the router's output, where the model has them."""
        clips = self.backbone.prepare(clips)  # once: the backbone takes float clips as given
        tokens = self.backbone.forward_features(clips)
        output = MultiTaskOutput(features=tokens)
        if self.appearance is not None:
            output.appearance = self.appearance(clips)
        if self.experts is not None:
            output.features, output.routing = self.experts(tokens, output.appearance.mean(1))
        return output

    def text_memory(self, output: MultiTaskOutput) -> Tensor:
        """What the QA and caption heads attend to: the video tokens and the appearance ones."""
        return torch.cat([output.features, output.appearance], 1)

    def forward(
        self, clips: Tensor, questions: Tensor | None = None, captions: Tensor | None = None
    ) -> MultiTaskOutput:
        """``clips`` (batch, T, C, H, W); ``questions`` (batch, Q, words) token ids, several per
        clip; ``captions`` (batch, words) BOS … EOS token ids (teacher forcing). Heads whose
        input is not given are skipped."""
        output = self.forward_features(clips)
        tokens = output.features
        output.action = self.backbone.forward_head(tokens)
        if self.detection_head is not None:
            layout = self.backbone.feature_layout(clips.shape)
            output.detection = self.detection_head(step_features(tokens, layout))
        if self.qa_head is not None and questions is not None:
            per_clip = questions.shape[1]
            memory = self.text_memory(output).repeat_interleave(per_clip, 0)
            output.qa = self.qa_head(memory, questions.flatten(0, 1)).unflatten(0, (len(clips), -1))
        if self.caption_decoder is not None and captions is not None:
            output.captioning = self.caption_decoder(self.text_memory(output), captions[:, :-1])
        return output

    def generate_captions(
        self, clips: Tensor, beam_size: int = 1, max_len: int | None = None
    ) -> Tensor:
        """Caption token ids (batch, ≤ max_len), greedy (beam 1) or by beam search."""
        if self.caption_decoder is None:
            raise ValueError("generate_captions: the model was built without the captioning task")
        memory = self.text_memory(self.forward_features(clips))
        return self.caption_decoder.generate(memory, beam_size=beam_size, max_len=max_len)
