"""Domain experts: a router over pooled clip features and a mixture of expert FFNs.

``DomainRouter`` turns a pooled clip feature into one gate per expert, either a soft mixture
(every expert, weighted by the router's softmax) or top-k gating (the k most probable experts,
renormalised). ``ExpertFFN`` applies those gates to its experts, each an MLP like a block's, to
every token of the clip. The losses keep the router healthy: Switch Transformer's load-balancing
loss against collapse onto one expert, ST-MoE's router z-loss against growing logits, and a
cross-entropy towards the clip's domain when it is known; ``routing_accuracy`` and
``expert_usage`` report how the router behaves.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Mlp

DEFAULT_DOMAINS = ("sports", "tutorials", "news", "general")
ROUTING_MODES = ("soft", "top_k")
UNKNOWN_DOMAIN = -1  # the domain index of a clip whose domain is not known


@dataclass
class RouterOutput:
    """A router's decision for a batch: ``logits`` and ``probs`` (softmax) (batch, experts),
    float32, and the ``gates`` that weight each expert's output (batch, experts): ``probs``
    for soft routing, the top-k probabilities renormalised to sum to 1 (zeros elsewhere) for
    top-k routing."""

    logits: Tensor
    probs: Tensor
    gates: Tensor


def _check_positive(owner: str, **sizes: int | None) -> None:
    """Sizes must be >= 1 (None: not used)."""
    for name, size in sizes.items():
        if size is not None and size < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {size}")


class DomainRouter(nn.Module):
    """Pooled clip features (batch, dim) → one gate per expert: LayerNorm → (with
    ``hidden_dim``) linear → GELU → linear to ``num_experts`` logits, computed in float32 even
    under autocast (small logit errors flip top-k choices).

    Args:
        dim: width of the pooled features.
        num_experts: number of experts to route between.
        mode: "soft" (mix every expert by its probability) or "top_k".
        top_k: how many experts each clip goes to in "top_k" mode (1 ≤ top_k ≤ num_experts).
        hidden_dim: width of an optional hidden layer (None: a single linear layer).
    """

    def __init__(
        self,
        dim: int,
        num_experts: int = len(DEFAULT_DOMAINS),
        mode: str = "soft",
        top_k: int = 1,
        hidden_dim: int | None = None,
    ):
        super().__init__()
        _check_positive("DomainRouter", num_experts=num_experts, hidden_dim=hidden_dim)
        if mode not in ROUTING_MODES:
            raise ValueError(f"DomainRouter: mode must be one of {ROUTING_MODES}, got {mode!r}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(
                f"DomainRouter: top_k must be in [1, num_experts={num_experts}], got {top_k}"
            )
        self.dim = dim
        self.num_experts = num_experts
        self.mode = mode
        self.top_k = top_k
        layers: list[nn.Module] = [nn.LayerNorm(dim)]
        if hidden_dim is not None:
            layers += [nn.Linear(dim, hidden_dim), nn.GELU()]
        layers.append(nn.Linear(dim if hidden_dim is None else hidden_dim, num_experts))
        self.net = nn.Sequential(*layers)

    def forward(self, pooled: Tensor) -> RouterOutput:
        if pooled.dim() != 2 or pooled.shape[1] != self.dim:
            raise ValueError(
                f"DomainRouter: expected pooled features (batch, {self.dim}), "
                f"got shape {tuple(pooled.shape)}"
            )
        with torch.autocast(pooled.device.type, enabled=False):
            logits = self.net(pooled.float())
        probs = logits.softmax(-1)
        return RouterOutput(logits, probs, self.gates(probs))

    def gates(self, probs: Tensor) -> Tensor:
        """The gates for these router probabilities (see ``RouterOutput``)."""
        if self.mode == "soft":
            return probs
        kept, experts = probs.topk(self.top_k, dim=-1)
        return torch.zeros_like(probs).scatter(-1, experts, kept / kept.sum(-1, keepdim=True))

    def extra_repr(self) -> str:
        top_k = f", top_k={self.top_k}" if self.mode == "top_k" else ""
        return f"num_experts={self.num_experts}, mode={self.mode}{top_k}"


class ExpertFFN(nn.Module):
    """A block's FFN as a mixture of ``num_experts`` MLPs (``Mlp(dim, hidden_dim, drop)`` each,
    in ``experts``): tokens (batch, L, dim) and per-clip gates (batch, experts) → Σ_e
    gates[:, e] · expert_e(tokens). Each expert runs only on the clips whose gate for it is
    not zero, so top-k routing skips the rest. The sum is accumulated in float32 and returned
    in the tokens' dtype."""

    def __init__(
        self, dim: int, hidden_dim: int, num_experts: int = len(DEFAULT_DOMAINS), drop: float = 0.0
    ):
        super().__init__()
        _check_positive("ExpertFFN", num_experts=num_experts)
        self.experts = nn.ModuleList(Mlp(dim, hidden_dim, drop) for _ in range(num_experts))

    def forward(self, x: Tensor, gates: Tensor) -> Tensor:
        if x.dim() != 3 or gates.shape != (x.shape[0], len(self.experts)):
            raise ValueError(
                f"ExpertFFN: expected tokens (batch, L, dim) and gates (batch, "
                f"{len(self.experts)}), got shapes {tuple(x.shape)} and {tuple(gates.shape)}"
            )
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for expert, gate in zip(self.experts, gates.float().unbind(1)):
            clips = gate.nonzero().squeeze(1)
            if len(clips) == 0:
                continue
            tokens = x if len(clips) == len(x) else x[clips]
            out.index_add_(0, clips, gate[clips, None, None] * expert(tokens).float())
        return out.to(x.dtype)


# -- losses and metrics (float32; a batch of no clips gives 0, never NaN) ------------------------


def _batch_mean(values: Tensor) -> Tensor:
    """Mean over the first axis, 0 for an empty batch."""
    return values.sum(0) / max(len(values), 1)


def _check_router_tensors(name: str, *tensors: Tensor) -> None:
    shapes = [tuple(t.shape) for t in tensors]
    if any(t.dim() != 2 for t in tensors) or len(set(shapes)) != 1:
        raise ValueError(f"{name}: expected (batch, experts) tensors of one shape, got {shapes}")


def _check_domains(name: str, logits: Tensor, domains: Tensor) -> None:
    _check_router_tensors(name, logits)
    if domains.shape != logits.shape[:1]:
        raise ValueError(
            f"{name}: expected domains of shape ({len(logits)},) for logits of shape "
            f"{tuple(logits.shape)}, got {tuple(domains.shape)}"
        )
    if domains.numel():
        low, high = int(domains.min()), int(domains.max())
        if low < UNKNOWN_DOMAIN or high >= logits.shape[1]:
            raise ValueError(
                f"{name}: domains must be in [0, {logits.shape[1]}) or {UNKNOWN_DOMAIN} "
                f"(unknown), got values in [{low}, {high}]"
            )


def expert_usage(gates: Tensor) -> Tensor:
    """(experts,) float32: the fraction of the batch whose largest gate is each expert."""
    _check_router_tensors("expert_usage", gates)
    counts = torch.bincount(gates.argmax(-1), minlength=gates.shape[1])
    return counts.float() / max(len(gates), 1)


def load_balancing_loss(probs: Tensor, gates: Tensor) -> Tensor:
    """Switch Transformer's auxiliary loss, E · Σ_e f_e · P_e: f_e the fraction of the batch
    whose largest gate is expert e, P_e the mean router probability of e. 1 when both are
    uniform; up to E when every clip goes to one expert. Only P carries a gradient."""
    _check_router_tensors("load_balancing_loss", probs, gates)
    return probs.shape[1] * (expert_usage(gates) * _batch_mean(probs.float())).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE's router z-loss: the batch mean of logsumexp(logits)², which keeps the logits
    small enough for a stable softmax."""
    _check_router_tensors("router_z_loss", logits)
    return _batch_mean(logits.float().logsumexp(-1).square())


def routing_loss(logits: Tensor, domains: Tensor) -> Tensor:
    """Cross-entropy of the router's logits against the clips' domain indices, averaged over
    the clips whose domain is known (``UNKNOWN_DOMAIN`` ignored); exactly 0, with a zero
    gradient, when none is known."""
    _check_domains("routing_loss", logits, domains)
    total = F.cross_entropy(logits.float(), domains, ignore_index=UNKNOWN_DOMAIN, reduction="sum")
    return total / (domains != UNKNOWN_DOMAIN).sum().clamp(min=1)


def routing_accuracy(logits: Tensor, domains: Tensor) -> tuple[int, int]:
    """(clips routed to their own domain's expert, clips with a known domain)."""
    _check_domains("routing_accuracy", logits, domains)
    known = domains != UNKNOWN_DOMAIN
    correct = (logits.argmax(-1) == domains) & known
    return int(correct.sum()), int(known.sum())
