"""A ViT with modern Hopfield memories (Ramsauer et al. 2021) inserted after the attention or the
FFN of chosen blocks, read with the fused ``hopfield_retrieval`` kernel.

A ``HopfieldLayer`` holds ``mem_size`` patterns per head, shared by the whole batch, and adds
what the tokens retrieve from them to the residual stream through a gate. Its memory is either
trained (``learned``) or written without gradient from labelled features: by a Hebbian rule
(``associative``) or as one running class mean per slot (``class_prototype``). A written memory
also classifies: each slot carries the labels written into it, and the retrieval reads them
out as class probabilities (a soft nearest-neighbour or nearest-class-mean classifier).
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvision_ext.ops import hopfield_retrieval
from hvision_ext.ops.hopfield_retrieval import HOPFIELD_MAX_DIM

from .registry import register_model
from .vit import NORM_EPS
from .vit_baselines import DEFAULT_BACKBONE, FrozenViT, build_frozen_vit

MEMORY_MODES = ("associative", "class_prototype", "learned")
POSITIONS = ("after_attn", "after_ffn")


def rms_normalise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Scales each vector (last axis) to unit root-mean-square, i.e. to norm √d, the scale of
    LayerNorm'd features: β ξ·x is then β·d·cos(ξ, x)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class HopfieldLayer(nn.Module):
    """A residual modern-Hopfield memory read: x + gate · proj(dropout(retrieve(query(norm(x))))).

    Queries and patterns are split into ``num_heads`` heads and RMS-normalised per head; the
    patterns, (heads, mem_size, head_dim), are one bank shared by the batch and passed to
    ``hopfield_retrieval`` as is (never expanded). The query projection starts as the identity
    (a written memory is read in the features' own space) and the gate at 0 (inserting the layer
    leaves a pretrained network's function unchanged until the gate is trained).

    Memory modes:

    - ``learned``: the patterns are parameters, trained by backpropagation.
    - ``associative``: written without gradient by a Hebbian rule. Each written feature k (the
      normalised query of a feature vector) is compared with every used slot by the mean over
      heads of cos(k, slot). If the best similarity is at least ``match_threshold``, that slot
      (the lowest index among ties) is strengthened: slot ← slot + k, its usage count +1, its
      label count for k's label +1. Otherwise k replaces the least-used slot (the lowest index
      among ties; unused slots have usage 0): slot ← k, usage ← 1, its label counts ← k's label.
      Features are written one at a time in the order given, so a write is deterministic, and
      the memory never grows past ``mem_size`` slots.
    - ``class_prototype``: slot c is class c's prototype, the running mean of the normalised
      features written with label c (usage counts them); writing one class leaves every other
      slot untouched, so classes can be added at any time. Reading the slots' labels is a soft
      nearest-class-mean classifier.

    Only used slots are read (an empty written memory reads nothing: the layer is the
    identity). ``class_probabilities`` reads, instead of the patterns, each slot's label
    distribution (its label counts, normalised): softmax(β ξ Xᵀ) L.

    Args:
        dim: token width.
        mem_size: number of slots, ≥ 1.
        num_heads: heads the tokens and patterns are split into (dim must be a multiple).
        beta: inverse temperature of the retrieval (0.125 is attention's 1/√d at d = 64).
        n_steps: Hopfield updates per read, ≥ 1.
        mode: ``associative``, ``class_prototype`` or ``learned``.
        num_classes: label width of a written memory (class_prototype: classes < mem_size).
        match_threshold: ``associative``: the similarity at which a feature joins a slot.
        dropout: dropout on the retrieved read while training.
    """

    def __init__(
        self,
        dim: int,
        mem_size: int,
        num_heads: int = 1,
        beta: float = 0.125,
        n_steps: int = 1,
        mode: str = "associative",
        num_classes: int = 0,
        match_threshold: float = 0.9,
        dropout: float = 0.0,
    ):
        super().__init__()
        _check_layer_args(dim, mem_size, num_heads, beta, n_steps, mode, num_classes)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.mem_size = mem_size
        self.beta = beta
        self.n_steps = n_steps
        self.mode = mode
        self.num_classes = num_classes
        self.match_threshold = match_threshold
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.query = nn.Linear(dim, dim)
        nn.init.eye_(self.query.weight)
        nn.init.zeros_(self.query.bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        self.read_drop = nn.Dropout(dropout)
        self.gate = nn.Parameter(torch.zeros(()))
        shape = (num_heads, mem_size, self.head_dim)
        if mode == "learned":
            self.patterns = nn.Parameter(torch.randn(shape))
        else:
            self.register_buffer("patterns", torch.zeros(shape))
            self.register_buffer("usage", torch.zeros(mem_size))
            self.register_buffer("label_counts", torch.zeros(mem_size, num_classes))

    @property
    def written(self) -> bool:
        return self.mode != "learned"

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, mem_size={self.mem_size}, num_heads={self.num_heads}, "
            f"beta={self.beta}, n_steps={self.n_steps}"
        )

    # -- reading -------------------------------------------------------------------------------

    def queries(self, x: Tensor) -> Tensor:
        """(batch, L, dim) → normalised per-head queries (batch, heads, L, head_dim)."""
        batch, length, _ = x.shape
        q = self.query(self.norm(x)).view(batch, length, self.num_heads, self.head_dim)
        return rms_normalise(q.transpose(1, 2))

    def used_slots(self) -> Tensor:
        """Indices of the slots that are read (all of them for a learned memory)."""
        if not self.written:
            return torch.arange(self.mem_size, device=self.patterns.device)
        return self.usage.nonzero().squeeze(1)

    def stored_patterns(self, slots: Tensor) -> Tensor:
        return rms_normalise(self.patterns[:, slots])

    def forward(self, x: Tensor) -> Tensor:
        slots = self.used_slots()
        if slots.numel() == 0:
            return x
        retrieved = hopfield_retrieval(
            self.queries(x), self.stored_patterns(slots), beta=self.beta, n_steps=self.n_steps
        )
        read = self.read_drop(retrieved.transpose(1, 2).flatten(2))
        return x + self.gate * self.proj(read)

    def class_probabilities(self, features: Tensor) -> Tensor:
        """(batch, dim) features → (batch, num_classes) probabilities read from the slots'
        labels (a written memory only)."""
        if not self.written:
            raise RuntimeError("class_probabilities: a learned memory holds no labels")
        slots = self.used_slots()
        if slots.numel() == 0:
            raise RuntimeError("class_probabilities: the memory is empty; write labelled features")
        counts = self.label_counts[slots]
        labels = (counts / counts.sum(-1, keepdim=True)).expand(self.num_heads, -1, -1)
        out = hopfield_retrieval(
            self.queries(features[:, None]),
            self.stored_patterns(slots),
            labels.to(features.dtype),
            beta=self.beta,
            n_steps=self.n_steps,
        )
        return out.mean(dim=1).squeeze(1)

    # -- writing -------------------------------------------------------------------------------

    @torch.no_grad()
    def write(self, features: Tensor, labels: Tensor) -> None:
        """Writes (n, dim) features with their (n,) labels into a written memory."""
        if not self.written:
            raise RuntimeError("write: a learned memory is trained, not written")
        labels = labels.long()
        if labels.shape != features.shape[:1]:
            raise ValueError(
                f"write: expected one label per feature ({features.shape[0]}), got labels of "
                f"shape {tuple(labels.shape)}"
            )
        if labels.numel() and not 0 <= labels.min() <= labels.max() < self.num_classes:
            raise ValueError(
                f"write: labels must lie in [0, num_classes={self.num_classes}), got "
                f"[{labels.min().item()}, {labels.max().item()}]"
            )
        keys = self.queries(features[None].float())[0].transpose(0, 1)  # (n, heads, head_dim)
        one_hot = F.one_hot(labels, self.num_classes).float()
        if self.mode == "class_prototype":
            self._write_prototypes(keys, labels, one_hot)
        else:
            for key, label in zip(keys, one_hot):
                self._write_hebbian(key, label)

    def _write_prototypes(self, keys: Tensor, labels: Tensor, one_hot: Tensor) -> None:
        per_slot = F.one_hot(labels, self.mem_size).float()  # (n, mem_size); labels < mem_size
        sums = torch.einsum("nm,nhd->hmd", per_slot, keys)
        counts = per_slot.sum(0)
        touched = counts > 0
        total = self.usage + counts
        mean = (self.patterns * self.usage[:, None] + sums) / total.clamp_min(1)[:, None]
        self.patterns[:, touched] = mean[:, touched]
        self.usage += counts
        self.label_counts += per_slot.T @ one_hot

    def _write_hebbian(self, key: Tensor, label: Tensor) -> None:
        slots = self.used_slots()
        if slots.numel():
            similarity = (self.stored_patterns(slots) * key[:, None]).mean(-1).mean(0)
            best = int(similarity.argmax())
            if similarity[best] >= self.match_threshold:
                slot = int(slots[best])
                self.patterns[:, slot] += key
                self.usage[slot] += 1
                self.label_counts[slot] += label
                return
        slot = int(self.usage.argmin())  # argmin returns the first of equal minima
        self.patterns[:, slot] = key
        self.usage[slot] = 1
        self.label_counts[slot] = label

    @torch.no_grad()
    def clear(self) -> None:
        """Empties a written memory."""
        if not self.written:
            raise RuntimeError("clear: a learned memory is trained, not written")
        for buffer in (self.patterns, self.usage, self.label_counts):
            buffer.zero_()

    def reset_labels(self, num_classes: int) -> None:
        """Empties a written memory and makes its labels ``num_classes`` wide."""
        _check_layer_args(
            self.num_heads * self.head_dim,
            self.mem_size,
            self.num_heads,
            self.beta,
            self.n_steps,
            self.mode,
            num_classes,
        )
        self.clear()
        self.label_counts = self.label_counts.new_zeros(self.mem_size, num_classes)
        self.num_classes = num_classes


def _check_layer_args(dim, mem_size, num_heads, beta, n_steps, mode, num_classes) -> None:
    if mode not in MEMORY_MODES:
        raise ValueError(f"mode: expected one of {MEMORY_MODES}, got {mode!r}")
    if isinstance(mem_size, bool) or not isinstance(mem_size, int) or mem_size < 1:
        raise ValueError(f"mem_size: expected an int >= 1, got {mem_size!r}")
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"num_heads: expected a divisor of dim={dim}, got {num_heads}")
    if not beta > 0:
        raise ValueError(f"beta: expected > 0, got {beta}")
    if n_steps < 1:
        raise ValueError(f"n_steps: expected >= 1, got {n_steps}")
    # A written memory's values are its slots' label distributions: the kernel's value width.
    if mode != "learned" and not 1 <= num_classes <= HOPFIELD_MAX_DIM:
        raise ValueError(
            f"num_classes: a {mode} memory needs 1 <= num_classes <= {HOPFIELD_MAX_DIM}, "
            f"got {num_classes}"
        )
    if mode == "class_prototype" and num_classes > mem_size:
        raise ValueError(
            f"mem_size: class_prototype keeps one slot per class, so needs mem_size >= "
            f"num_classes={num_classes}, got {mem_size}"
        )


class MemoryAugmentedViT(FrozenViT):
    """A ViT with a ``HopfieldLayer`` after the attention or the FFN of chosen blocks.

    The defaults train as they are (``python -m train.memory``, ``python -m train.classify``): a
    frozen backbone, a learned memory of 1000 patterns after the last block (β 0.125) and a
    linear head, with dropout 0.1; with ``hopfield_position='after_attn'`` (the ``memory_vit``
    preset) this is the source design's model.

    With a ``learned`` memory the class token goes on through the remaining blocks and the final
    norm to a linear head. With a written memory (``associative``, ``class_prototype``) the
    model classifies by the last memory layer's label read of the class token at that layer
    (``HopfieldLayer.class_probabilities``; ``forward`` returns log-probabilities), and the
    blocks after it are not run. ``write_memory`` writes labelled images into every memory
    layer, each at its own depth.

    Args:
        backbone_name: a registered ViT preset.
        pretrained: the preset's ``pretrained`` (True: timm's weights; a path: a local file).
        num_classes: classes of the head (learned) or of the memories' labels.
        mem_size: slots of each memory.
        hopfield_position: ``after_attn`` or ``after_ffn``.
        beta: inverse temperature of the retrieval.
        freeze_backbone: no gradient to the backbone, which stays in eval mode.
        memory_mode: ``associative``, ``class_prototype`` or ``learned``.
        hopfield_blocks: indices of the blocks that get a memory (negative from the end);
            default: the last block.
        num_heads: heads of each memory.
        n_steps: Hopfield updates per read.
        match_threshold: ``associative``: similarity at which a feature joins a slot.
        backbone_args: overrides of the preset's arguments.
        dropout: dropout on the memories' reads and on the features before the head.
    """

    def __init__(
        self,
        backbone_name: str = DEFAULT_BACKBONE,
        pretrained: bool | str | Path = False,
        num_classes: int = 10,
        mem_size: int = 1000,
        hopfield_position: str = "after_ffn",
        beta: float = 0.125,
        freeze_backbone: bool = True,
        memory_mode: str = "learned",
        hopfield_blocks: tuple[int, ...] = (-1,),
        num_heads: int = 1,
        n_steps: int = 1,
        match_threshold: float = 0.9,
        backbone_args: dict | None = None,
        dropout: float = 0.1,
    ):
        if hopfield_position not in POSITIONS:
            raise ValueError(
                f"hopfield_position: expected one of {POSITIONS}, got {hopfield_position!r}"
            )
        super().__init__(
            backbone_name,
            pretrained,
            freeze_backbone,
            backbone_args,
            dropout,
            num_classes,
            with_head=memory_mode == "learned",
        )
        depth = len(self.backbone.blocks)
        if not hopfield_blocks or any(not -depth <= i < depth for i in hopfield_blocks):
            raise ValueError(
                f"hopfield_blocks: expected block indices in [-{depth}, {depth}), got "
                f"{hopfield_blocks!r}"
            )
        self.hopfield_position = hopfield_position
        self.memory_mode = memory_mode
        self.hopfield = nn.ModuleDict(
            {
                str(index): HopfieldLayer(
                    self.embed_dim,
                    mem_size,
                    num_heads,
                    beta,
                    n_steps,
                    memory_mode,
                    num_classes,
                    match_threshold,
                    dropout,
                )
                for index in sorted({i % depth for i in hopfield_blocks})
            }
        )
        self.last_memory_block = max(int(index) for index in self.hopfield)

    @property
    def classifying_memory(self) -> HopfieldLayer | None:
        """The memory whose label read is the output (the last one, if written), or None."""
        last = self.hopfield[str(self.last_memory_block)]
        return last if last.written else None

    def _memory_pass(self, images: Tensor, labels: Tensor | None) -> Tensor:
        """Runs the blocks with their memories; with ``labels``, each memory first stores the
        class token it sees. Returns the tokens ``forward_features`` describes."""
        x = self.backbone.embed(images)
        for index, block in enumerate(self.backbone.blocks):
            layer = self.hopfield[str(index)] if str(index) in self.hopfield else None
            for position, residual in zip(
                POSITIONS, (block.attention_residual, block.mlp_residual)
            ):
                x = residual(x)
                if position != self.hopfield_position or layer is None:
                    continue
                if labels is not None:
                    layer.write(x[:, 0], labels)
                if layer is self.classifying_memory:
                    return x
                x = layer(x)
        return self.backbone.norm(x)

    def forward_features(self, images: Tensor) -> Tensor:
        """(batch, 1 + num_patches, dim) tokens, the class token first: with a learned memory,
        after every block (and its memories) and the final norm; with a written one, as the
        last memory reads them (the blocks after it are not run)."""
        return self._memory_pass(images, None)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """The class token's features (``pre_logits=True``); otherwise the head's logits
        (learned memory) or the log-probabilities read from the last memory's labels
        (written)."""
        memory = self.classifying_memory
        if memory is None:
            return super().forward_head(features, pre_logits)
        if pre_logits:
            return features[:, 0]
        probabilities = memory.class_probabilities(features[:, 0])
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()

    def reset_classifier(self, num_classes: int) -> None:
        """A new head (learned memory), or, for written memories, empty memories whose
        labels are ``num_classes`` wide (a written memory is the classifier: ≥ 1 class)."""
        if self.classifying_memory is None:
            super().reset_classifier(num_classes)
            return
        for layer in self.hopfield.values():
            layer.reset_labels(num_classes)
        self.num_classes = num_classes

    @torch.no_grad()
    def write_memory(self, images: Tensor, labels: Tensor) -> None:
        """Writes labelled images into every (written) memory, each at its block."""
        self._memory_pass(images, labels)

    def clear_memory(self) -> None:
        for layer in self.hopfield.values():
            layer.clear()


@register_model
def memory_vit(**overrides) -> MemoryAugmentedViT:
    """``MemoryAugmentedViT`` on ``vit_micro_patch4_32`` with the source design's defaults: a
    learned memory of 1000 patterns after the last block's attention, β 0.125, frozen
    backbone, trained head, dropout 0.1."""
    return build_frozen_vit(MemoryAugmentedViT, {"hopfield_position": "after_attn", **overrides})
