"""Domain experts: the router's soft and top-k gates, the expert mixture against its explicit
sum, the losses and metrics against hand-computed values, gradients, autocast, bad input."""

import math

import pytest
import torch

from python_models.video import (
    DomainRouter,
    ExpertFFN,
    expert_usage,
    load_balancing_loss,
    router_z_loss,
    routing_accuracy,
    routing_loss,
)

DIM, HIDDEN, EXPERTS = 8, 16, 4


def router_with_probs(probs: list[float], **kwargs) -> DomainRouter:
    """A router whose output is ``probs`` for every input: a zero last weight, log-prob bias."""
    router = DomainRouter(DIM, len(probs), **kwargs)
    with torch.no_grad():
        router.net[-1].weight.zero_()
        router.net[-1].bias.copy_(torch.tensor(probs).log())
    return router


def tokens(batch: int = 3, length: int = 5) -> torch.Tensor:
    return torch.randn(batch, length, DIM, generator=torch.Generator().manual_seed(0))


# -- router ------------------------------------------------------------------------------------


def test_soft_gates_are_the_probabilities():
    out = DomainRouter(DIM, EXPERTS, hidden_dim=HIDDEN)(torch.randn(6, DIM))
    assert out.logits.shape == out.probs.shape == out.gates.shape == (6, EXPERTS)
    torch.testing.assert_close(out.probs, out.logits.softmax(-1))
    assert out.gates is out.probs


def test_top_k_keeps_the_k_largest_renormalised_with_gradient_through_them():
    router = router_with_probs([0.1, 0.4, 0.2, 0.3], mode="top_k", top_k=2)
    out = router(torch.randn(2, DIM))
    expected = torch.tensor([0.0, 4 / 7, 0.0, 3 / 7]).expand(2, -1)
    torch.testing.assert_close(out.gates, expected)
    (out.gates * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    grad = router.net[-1].bias.grad
    # Renormalised, the kept gates depend only on the kept logits (up to rounding).
    assert grad[[0, 2]].abs().max() < 1e-6 and grad[[1, 3]].abs().min() > 0.1


def test_router_logits_stay_float32_under_autocast():
    router = DomainRouter(DIM, EXPERTS, hidden_dim=HIDDEN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = router(torch.randn(3, DIM, dtype=torch.bfloat16))
    assert out.logits.dtype == out.probs.dtype == out.gates.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "hard"}, r"mode must be one of \('soft', 'top_k'\), got 'hard'"),
        ({"mode": "top_k", "top_k": 0}, r"top_k must be in \[1, num_experts=4\], got 0"),
        ({"mode": "top_k", "top_k": 5}, r"top_k must be in \[1, num_experts=4\], got 5"),
        ({"hidden_dim": 0}, r"DomainRouter: hidden_dim must be >= 1, got 0"),
    ],
)
def test_router_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DomainRouter(DIM, EXPERTS, **kwargs)


def test_router_rejects_features_of_the_wrong_shape():
    with pytest.raises(
        ValueError, match=r"expected pooled features \(batch, 8\), got shape \(3, 5, 8\)"
    ):
        DomainRouter(DIM, EXPERTS)(torch.randn(3, 5, DIM))


# -- expert mixture ----------------------------------------------------------------------------


def test_expert_mixture_equals_the_explicit_sum():
    ffn, x = ExpertFFN(DIM, HIDDEN, EXPERTS), tokens()
    gates = torch.randn(3, EXPERTS).softmax(-1)
    expected = sum(gates[:, e, None, None] * expert(x) for e, expert in enumerate(ffn.experts))
    torch.testing.assert_close(ffn(x, gates), expected)


def test_one_hot_gates_give_that_expert():
    ffn, x = ExpertFFN(DIM, HIDDEN, EXPERTS), tokens()
    gates = torch.eye(EXPERTS)[[2, 0, 2]]
    expected = torch.stack([ffn.experts[e](clip) for e, clip in zip([2, 0, 2], x)])
    torch.testing.assert_close(ffn(x, gates), expected)


def test_each_expert_runs_only_on_the_clips_routed_to_it():
    ffn, x = ExpertFFN(DIM, HIDDEN, EXPERTS), tokens()
    seen = [[] for _ in ffn.experts]
    for expert, clips in zip(ffn.experts, seen):
        expert.register_forward_hook(lambda _m, args, _o, clips=clips: clips.append(len(args[0])))
    gates = torch.tensor([[0.6, 0.4, 0, 0], [0.5, 0, 0, 0.5], [1.0, 0, 0, 0]])
    ffn(x, gates)
    assert seen == [[3], [1], [], [1]]


def test_gradients_reach_the_router_and_every_expert():
    router, ffn = DomainRouter(DIM, EXPERTS, hidden_dim=HIDDEN), ExpertFFN(DIM, HIDDEN, EXPERTS)
    x = tokens()
    ffn(x, router(x.mean(1)).gates).square().mean().backward()
    for name, param in [*router.named_parameters(), *ffn.named_parameters()]:
        assert param.grad is not None and param.grad.any(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_mixture_under_autocast_returns_the_tokens_dtype(dtype):
    ffn, x = ExpertFFN(DIM, HIDDEN, EXPERTS), tokens()
    gates = torch.randn(3, EXPERTS).softmax(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ffn(x.to(dtype), gates)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ffn(x, gates), atol=0.05, rtol=0.05)


def test_expert_mixture_rejects_no_experts_and_mismatched_shapes():
    with pytest.raises(ValueError, match=r"ExpertFFN: num_experts must be >= 1, got 0"):
        ExpertFFN(DIM, HIDDEN, 0)
    ffn = ExpertFFN(DIM, HIDDEN, EXPERTS)
    with pytest.raises(
        ValueError, match=r"gates \(batch, 4\), got shapes \(3, 5, 8\) and \(2, 4\)"
    ):
        ffn(tokens(), torch.ones(2, EXPERTS))
    with pytest.raises(ValueError, match=r"got shapes \(3, 8\) and \(3, 4\)"):
        ffn(tokens()[:, 0], torch.ones(3, EXPERTS))


# -- losses and metrics ------------------------------------------------------------------------

PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
# logsumexp of the rows: ln 2 and ln 4; softmax of the first row (3/4, 1/4).
LOGITS = torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [math.log(3), math.log(3)]])


def test_load_balancing_loss_by_hand():
    # argmax experts 0 and 1: f = (1/2, 1/2, 0); P = (0.4, 0.4, 0.2); 3 · (0.2 + 0.2) = 1.2.
    assert load_balancing_loss(PROBS, PROBS).item() == pytest.approx(1.2)
    one_hot = torch.eye(3)
    assert load_balancing_loss(one_hot, one_hot).item() == pytest.approx(1.0)  # balanced
    collapsed = torch.eye(3)[[0, 0, 0]]
    assert load_balancing_loss(collapsed, collapsed).item() == pytest.approx(3.0)


def test_load_balancing_loss_counts_the_gates_and_differentiates_the_probabilities():
    probs = PROBS.clone().requires_grad_()
    gates = torch.tensor(
        [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    )  # both clips to expert 2: f = (0, 0, 1)
    loss = load_balancing_loss(probs, gates)
    assert loss.item() == pytest.approx(3 * 0.2)
    loss.backward()
    torch.testing.assert_close(probs.grad, torch.tensor([[0.0, 0.0, 1.5]]).expand(2, -1))


def test_router_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])  # logsumexp ln 2 and ln 4
    assert router_z_loss(logits).item() == pytest.approx(2.5 * math.log(2) ** 2)


def test_routing_loss_ignores_unknown_domains():
    domains = torch.tensor([0, -1, 1])
    # -log(3/4) for the first clip, -log(1/2) for the third.
    expected = (math.log(4 / 3) + math.log(2)) / 2
    assert routing_loss(LOGITS, domains).item() == pytest.approx(expected)


def test_routing_loss_is_zero_with_zero_gradient_when_no_domain_is_known():
    logits = LOGITS.clone().requires_grad_()
    loss = routing_loss(logits, torch.full((3,), -1))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.eq(0).all()


def test_routing_accuracy_and_expert_usage_by_hand():
    # argmax of the logits: 0, 0, 0 (ties go to the first).
    assert routing_accuracy(LOGITS, torch.tensor([0, 1, -1])) == (1, 2)
    gates = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    torch.testing.assert_close(expert_usage(gates), torch.tensor([0.5, 0.5]))


def test_empty_batches_give_zeros_not_nan():
    empty, no_domains = torch.empty(0, EXPERTS), torch.empty(0, dtype=torch.long)
    for value in (
        load_balancing_loss(empty, empty),
        router_z_loss(empty),
        routing_loss(empty, no_domains),
        expert_usage(empty),
    ):
        assert value.dtype == torch.float32 and value.eq(0).all()
    assert routing_accuracy(empty, no_domains) == (0, 0)


def test_losses_reject_bad_shapes_and_domains():
    with pytest.raises(ValueError, match=r"load_balancing_loss: .* got \[\(2, 3\), \(2, 4\)\]"):
        load_balancing_loss(PROBS, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"router_z_loss: .* got \[\(3,\)\]"):
        router_z_loss(torch.ones(3))
    with pytest.raises(ValueError, match=r"domains of shape \(3,\) .* got \(2,\)"):
        routing_loss(LOGITS, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"in \[0, 2\) or -1 \(unknown\), got values in \[-1, 2\]"):
        routing_accuracy(LOGITS, torch.tensor([0, 2, -1]))
