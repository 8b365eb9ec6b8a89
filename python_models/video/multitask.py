"""MultiTaskVLM: one HierarchicalVLM backbone read by the action, temporal detection, video QA
and captioning heads, with optional domain experts between the backbone and the heads.

clips → backbone tokens (class token + frames × patches) → [domain experts: a router over the
clip's appearance picks a mixture of expert FFNs, applied to every token as a residual] →

(or, with per-domain LoRA, the same router mixes each domain's low-rank adapters on the
backbone's projections for the clip's whole forward: ``domain_lora``) →

- ``action``: the backbone's own head on the pooled tokens;
- ``detection``: ``DetectionHead`` on the mean token of each time step, per input frame;
- ``qa``: ``VideoQAHead``, each question cross-attending to the tokens and the appearance ones;
- ``captioning``: ``CaptionDecoder`` over the same, teacher-forced in training, ``generate``
  at inference.

The appearance tokens (``AppearanceTokens``: one frame through a small stem of its own) feed the
router and the text heads, which also read their channel-wise maximum as the clip's summary.
LoRA adapters (``lora``) wrap the backbone's linear layers by name, one adapter set per domain.
"""

import contextlib
import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..adapters.lora import (
    LoraConfig,
    adapter_weights,
    inject_lora,
    lora_state_dict,
    set_active_adapter,
)
from ..contract import NoWeightDecayMixin
from ..layers import init_vit_weights
from ..vit import NORM_EPS
from .detection import DetectionHead, DetectionOutput, step_features
from .experts import DomainRouter, ExpertFFN, RouterOutput
from .mixers import TokenLayout
from .model import HierarchicalVLM, conv_bn_relu, power_of_two_log2
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
    layout: TokenLayout | None = None  # how ``features`` is laid out
    appearance: Tensor | None = None  # one frame's tokens (batch, patches, dim)


class AppearanceTokens(nn.Module):
    """Tokens of one frame through a 2D convolution stem of its own: the background (the
    domain), colour and shape, which a backbone trained for motion need not keep. On the
    built-in video set a router over the backbone's pooled tokens stayed at chance when it did
    not train the backbone, and held back action learning when it did.

    The stem keeps full resolution for its first convolution (shapes of 15-20 pixels lose their
    corners to an early stride), then halves the side down to ``patch_size``: a strided 3×3
    convolution per stage, a second one at that resolution from the second stage on, each with
    BatchNorm and ReLU, widths ``width`` doubling to ``dim``. It reads the middle frame at
    evaluation and, in training, a random frame of each clip with a random flip and quarter
    turn: what a clip shows depends on neither, and each clip gives eight times as many views
    of its object (on the built-in set, shape is what the text heads learn last)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int = 8, width: int = 32):
        super().__init__()
        stages = power_of_two_log2("AppearanceTokens: patch_size", patch_size, 2)
        layers, channels = conv_bn_relu(2, in_chans, width, 1), width
        for stage in range(stages):
            out = dim if stage == stages - 1 else width << stage
            layers += conv_bn_relu(2, channels, out, 2)
            if stage:
                layers += conv_bn_relu(2, out, out, 1)
            channels = out
        self.stem = nn.Sequential(*layers)

    def forward(self, clips: Tensor) -> Tensor:
        """Normalised clips (batch, T, C, H, W) → (batch, patches, dim)."""
        batch, frames = clips.shape[:2]
        if not self.training:
            return self._tokens(clips[:, frames // 2])
        rows = torch.arange(batch, device=clips.device)
        images = clips[rows, torch.randint(frames, (batch,), device=clips.device)]
        flip = torch.rand(batch, device=clips.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        # A quarter turn keeps the size of square frames only; others get a half turn or none.
        square = images.shape[-1] == images.shape[-2]
        turns = torch.randint(4, (batch,)) if square else 2 * torch.randint(2, (batch,))
        images = torch.stack([image.rot90(int(k), (-2, -1)) for image, k in zip(images, turns)])
        return self._tokens(images)

    def _tokens(self, images: Tensor) -> Tensor:
        return self.stem(images).flatten(2).transpose(1, 2)


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


class MultiTaskVLM(NoWeightDecayMixin, nn.Module):
    """A video backbone with the heads of ``tasks``.

    Args:
        backbone: a ``HierarchicalVLM`` with a classification head (the action task).
        tasks: which of ``TASKS`` to build (the action head is the backbone's and always there).
        vocab_size: words of the question/caption tokenizer (QA and captioning).
        num_answers: answers of the QA vocabulary.
        num_domains: domains the router tells apart (0: no routing).
        domain_lora: None: each domain is an expert FFN after the backbone (``DomainExperts``);
            a ``LoraConfig``: each domain owns low-rank adapters of that shape on the
            backbone's layers it names (``domain_<i>``), mixed per clip by the router's gates.
        routing: ``soft`` (every domain, weighted) or ``top_k`` gating.
        top_k: domains per clip for ``top_k`` routing.
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
        domain_lora: LoraConfig | None = None,
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
        if domain_lora is not None and num_domains < 1:
            raise ValueError(f"MultiTaskVLM: domain_lora needs num_domains >= 1, got {num_domains}")
        self.experts = (
            DomainExperts(dim, num_domains, 2 * dim, routing, top_k)
            if num_domains and domain_lora is None
            else None
        )
        self.domain_names = ()
        self.domain_router = None
        if domain_lora is not None:
            self.domain_names = tuple(f"domain_{index}" for index in range(num_domains))
            self.domain_router = DomainRouter(dim, num_domains, routing, top_k)
            inject_lora(backbone, domain_lora, adapters=self.domain_names)
            set_active_adapter(backbone, None)  # only the router's mixture applies
        self.appearance = (
            AppearanceTokens(backbone.clip_shape[1], dim) if num_domains or text_tasks else None
        )
        self.detection_head = (
            DetectionHead(dim, backbone.num_classes, backbone.patch_embed.tubelet_size)
            if "detection" in tasks
            else None
        )
        self.qa_head = (
            VideoQAHead(
                dim,
                vocab_size,
                num_answers,
                head_layers,
                heads,
                max_question_len,
                clip_summary=True,
            )
            if "qa" in tasks
            else None
        )
        self.caption_decoder = (
            CaptionDecoder(dim, vocab_size, head_layers, heads, max_caption_len, clip_summary=True)
            if "captioning" in tasks
            else None
        )
        for router_module in (self.experts, self.domain_router):
            if router_module is not None:
                init_vit_weights(router_module)

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

    def domain_parameters(self) -> dict[str, int]:
        """Parameters of each domain's LoRA adapters (empty without ``domain_lora``)."""
        return {
            name: sum(t.numel() for t in lora_state_dict(self.backbone, name).values())
            for name in self.domain_names
        }

    def forward_features(self, clips: Tensor) -> MultiTaskOutput:
        """The backbone's tokens after the experts (``features``) and their layout, the
        appearance tokens and the router's output, where the model has them."""
        clips = self.backbone.prepare(clips)  # once: the backbone takes float clips as given
        output = MultiTaskOutput()
        if self.appearance is not None:
            output.appearance = self.appearance(clips)
        adapters = contextlib.nullcontext()
        if self.domain_router is not None:
            output.routing = self.domain_router(output.appearance.mean(1))
            adapters = adapter_weights(self.backbone, output.routing.gates)
        with adapters:
            output.features, output.layout = self.backbone.forward_tokens(clips)
        if self.experts is not None:
            output.features, output.routing = self.experts(
                output.features, output.appearance.mean(1)
            )
        return output

    def text_inputs(self, output: MultiTaskOutput) -> tuple[Tensor, Tensor]:
        """What the QA and caption heads read: the tokens they attend to (the video tokens and
        the appearance ones) and the clip's summary (the appearance tokens' maximum)."""
        memory = torch.cat([output.features, output.appearance], 1)
        return memory, output.appearance.amax(1)

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
            output.detection = self.detection_head(step_features(tokens, output.layout))
        wants_qa = self.qa_head is not None and questions is not None
        wants_captions = self.caption_decoder is not None and captions is not None
        if wants_qa or wants_captions:
            memory, summary = self.text_inputs(output)
        if wants_qa:
            per_clip = questions.shape[1]
            answers = self.qa_head(
                memory.repeat_interleave(per_clip, 0),
                questions.flatten(0, 1),
                summary.repeat_interleave(per_clip, 0),
            )
            output.qa = answers.unflatten(0, (len(clips), -1))
        if wants_captions:
            output.captioning = self.caption_decoder(memory, captions[:, :-1], summary)
        return output

    def caption(
        self, output: MultiTaskOutput, beam_size: int = 1, max_len: int | None = None
    ) -> Tensor:
        """Caption token ids (batch, ≤ max_len) for the clips of ``output`` (from ``forward`` or
        ``forward_features``), greedy (beam 1) or by beam search."""
        if self.caption_decoder is None:
            raise ValueError("caption: the model was built without the captioning task")
        memory, summary = self.text_inputs(output)
        return self.caption_decoder.generate(memory, beam_size, max_len, summary=summary)

    def generate_captions(
        self, clips: Tensor, beam_size: int = 1, max_len: int | None = None
    ) -> Tensor:
        """Caption token ids (batch, ≤ max_len), greedy (beam 1) or by beam search."""
        return self.caption(self.forward_features(clips), beam_size, max_len)
