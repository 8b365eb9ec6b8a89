import pytest
import torch

import hvision_ext
from python_models import BiMamba, DirectionalConv1d, MambaBlock, SSMDirection
from python_models.mamba import HybridBlock


def _grads(module, x):
    out = module(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
    return out, grads


@pytest.mark.parametrize(
    "make_block",
    [
        lambda: MambaBlock(dim=16, d_state=4, expand=2, d_conv=4),
        lambda: HybridBlock(dim=16, num_heads=2, d_state=4, expand=2, d_conv=4),
    ],
    ids=["mamba", "hybrid"],
)
@pytest.mark.parametrize("length", [1, 5, 17])
def test_block_kernels_match_reference_switch(make_block, length):
    torch.manual_seed(0)
    block = make_block()
    x = torch.randn(2, length, 16, requires_grad=True)
    out, grads = _grads(block, x)
    with hvision_ext.use_reference():
        ref_out, ref_grads = _grads(block, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [1, 3, 4])
@pytest.mark.parametrize("reverse", [False, True])
def test_directional_conv_matches_padded_conv1d(kernel_size, reverse):
    conv = DirectionalConv1d(5, kernel_size, reverse=reverse)
    x = torch.randn(2, 5, 9)
    pad = (0, kernel_size - 1) if reverse else (kernel_size - 1, 0)
    expected = torch.nn.functional.conv1d(
        torch.nn.functional.pad(x, pad), conv.weight, conv.bias, groups=5
    )
    torch.testing.assert_close(conv(x), expected)


def test_directional_conv_sees_only_the_scan_direction():
    x = torch.zeros(1, 1, 8)
    x[..., 4] = 1.0  # an impulse at t = 4
    causal, anticausal = DirectionalConv1d(1, 3), DirectionalConv1d(1, 3, reverse=True)
    for conv in (causal, anticausal):
        conv.weight.data.fill_(1.0)
        conv.bias.data.zero_()
    assert causal(x)[0, 0].nonzero().flatten().tolist() == [4, 5, 6]  # reaches later tokens
    assert anticausal(x)[0, 0].nonzero().flatten().tolist() == [2, 3, 4]  # reaches earlier tokens


def test_reverse_direction_equals_flip_scan_flip():
    """The reverse direction, run in place, equals the forward direction (with its conv kernel
    mirrored) on the flipped sequence, flipped back — without making those copies itself."""
    torch.manual_seed(1)
    reverse = SSMDirection(8, d_state=4, dt_rank=2, d_conv=4, reverse=True)
    forward = SSMDirection(8, d_state=4, dt_rank=2, d_conv=4, reverse=False)
    forward.load_state_dict(reverse.state_dict())
    forward.conv.weight.data = reverse.conv.weight.data.flip(-1)
    x, z = torch.randn(2, 8, 11), torch.randn(2, 8, 11)
    torch.testing.assert_close(
        reverse(x, z), forward(x.flip(-1), z.flip(-1)).flip(-1), rtol=1e-5, atol=1e-6
    )


def test_bimamba_is_the_mean_of_both_directions():
    torch.manual_seed(2)
    mixer = BiMamba(dim=8, d_state=4)
    hidden = torch.randn(2, 6, 8)
    x, z = (torch.matmul(w, hidden.transpose(1, 2)) for w in mixer.in_proj.weight.chunk(2))
    y = (mixer.forward_ssm(x, z) + mixer.backward_ssm(x, z)) / 2
    torch.testing.assert_close(mixer(hidden), mixer.out_proj(y.transpose(1, 2)))


def test_dt_bias_initialisation_is_in_range():
    direction = SSMDirection(64, d_state=4, dt_rank=4, d_conv=4, reverse=False)
    dt = torch.nn.functional.softplus(direction.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


def test_hybrid_block_starts_as_an_equal_mix_of_ssm_and_attention():
    torch.manual_seed(3)
    block = HybridBlock(dim=16, num_heads=2, d_state=4)
    x = torch.randn(2, 7, 16)
    normed = block.norm(x)
    torch.testing.assert_close(block.mix_weights(), torch.tensor([0.5, 0.5]))
    expected = x + 0.5 * block.mixer(normed) + 0.5 * block.attn(normed)
    torch.testing.assert_close(block(x), expected)


def test_hybrid_block_mix_is_a_softmax_over_its_logits():
    torch.manual_seed(4)
    block = HybridBlock(dim=16, num_heads=4, d_state=4)
    mamba_only = MambaBlock(dim=16, d_state=4)
    mamba_only.load_state_dict(block.state_dict(), strict=False)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        block.mix_logits.copy_(torch.tensor([1.0, -1.0]))
        torch.testing.assert_close(
            block.mix_weights(), torch.tensor([1.0, -1.0]).softmax(0), rtol=0, atol=0
        )
        block.mix_logits.copy_(torch.tensor([30.0, -30.0]))  # all weight on the SSM branch
        torch.testing.assert_close(block(x), mamba_only(x))


def test_hybrid_block_mixing_weights_receive_gradients():
    torch.manual_seed(5)
    block = HybridBlock(dim=16, num_heads=2, d_state=4)
    block(torch.randn(2, 6, 16)).square().sum().backward()
    grad = block.mix_logits.grad
    assert grad is not None and grad.abs().sum() > 0
    # The weights sum to one, so moving both logits together changes nothing.
    torch.testing.assert_close(grad.sum(), torch.tensor(0.0), rtol=0, atol=1e-4)
