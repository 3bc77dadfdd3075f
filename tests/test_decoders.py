"""Decoders g(f) and their pull-back J_g(f)ᵀ e (fond.decoders, DESIGN §2.3)."""

import pytest
import torch

from fond.decoders import DECODERS, ConvDecoder, LinearDecoder, MLPDecoder, make_decoder
from fond.errors import ConfigError

D, K, B = 16, 6, 3  # conv: 4×4 images (side divisible by 4)


def _decoder(name: str, seed: int = 0, hidden: int = 8):
    """A small float64 decoder with parameters large enough to make g clearly nonlinear."""
    decoder = make_decoder(name, D, K, generator=torch.Generator().manual_seed(seed), init_scale=0.3, hidden=hidden)
    return decoder.double()


def _batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(B, K, generator=gen, dtype=torch.float64)
    x = torch.randn(B, D, generator=gen, dtype=torch.float64)
    inv_variance = torch.rand(D, generator=gen, dtype=torch.float64) + 0.5
    return f, x, inv_variance


def _energy(decoder, f, x, inv_variance):
    """½‖x − g(f)‖²_{σ⁻²}, summed over the batch."""
    return 0.5 * (((x - decoder(f)) ** 2) * inv_variance).sum()


def _pullback(decoder, f, x, inv_variance):
    reconstruction, pull = decoder.with_pullback(f)
    return pull((x - reconstruction) * inv_variance)


@pytest.mark.parametrize("name", DECODERS)
def test_pullback_is_minus_gradient_of_weighted_error(name):
    """The pull-back must be −∂/∂f ½‖x − g(f)‖²_{σ⁻²}, or the FOND step descends the wrong objective."""
    decoder = _decoder(name)
    f, x, inv_variance = _batch()
    with torch.no_grad():
        pulled = _pullback(decoder, f, x, inv_variance)
        numeric = torch.zeros_like(f)
        h = 1e-6
        for i in range(B):
            for j in range(K):
                step = torch.zeros_like(f)
                step[i, j] = h
                numeric[i, j] = -(_energy(decoder, f + step, x, inv_variance)
                                  - _energy(decoder, f - step, x, inv_variance)) / (2 * h)
    torch.testing.assert_close(pulled, numeric, rtol=1e-6, atol=1e-8)


def test_linear_pullback_and_operators_are_the_matrix_products():
    """The linear decoder must reproduce the original dictionary arithmetic exactly (existing results)."""
    decoder = _decoder("linear")
    f, x, inv_variance = _batch()
    phi = decoder.dictionary
    error = (x - f @ phi.T) * inv_variance
    reconstruction, pull = decoder.with_pullback(f)
    assert torch.equal(reconstruction, f @ phi.T)
    assert torch.equal(pull(error), error @ phi)
    ops = decoder.operators(x, inv_variance)
    torch.testing.assert_close(ops.pullback(f), error @ phi)
    assert torch.equal(ops.reconstruct(f), f @ phi.T)


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_operators_pullback_matches_with_pullback(name):
    """Evaluation rollouts (operators) and training (with_pullback) must run the same dynamics."""
    decoder = _decoder(name)
    f, x, inv_variance = _batch()
    ops = decoder.operators(x, inv_variance)
    torch.testing.assert_close(ops.pullback(f), _pullback(decoder, f, x, inv_variance))
    torch.testing.assert_close(ops.reconstruct(f), decoder(f))


@pytest.mark.parametrize("name", DECODERS)
def test_pullback_is_differentiable_for_bptt(name):
    """BPTT differentiates through the pull-back: its parameter and f gradients must match finite differences."""
    decoder = _decoder(name)
    f, x, inv_variance = _batch()
    probe = torch.randn(B, K, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def loss(f_):
        return (torch.tanh(_pullback(decoder, f_, x, inv_variance)) * probe).sum()

    params = dict(decoder.named_parameters())
    f = f.clone().requires_grad_()
    grads = torch.autograd.grad(loss(f), [f, *params.values()])
    grad_f, grad_params = grads[0], dict(zip(params, grads[1:], strict=True))
    h = 1e-6
    with torch.no_grad():
        for pname, param in params.items():
            for index in [0, param.numel() // 2, param.numel() - 1]:
                flat = param.view(-1)
                original = flat[index].item()
                flat[index] = original + h
                up = loss(f)
                flat[index] = original - h
                down = loss(f)
                flat[index] = original
                torch.testing.assert_close(grad_params[pname].reshape(-1)[index], (up - down) / (2 * h),
                                           rtol=1e-5, atol=1e-8, msg=f"d loss / d {pname}[{index}]")
        step = torch.zeros_like(f)
        step[1, 2] = h
        torch.testing.assert_close(grad_f[1, 2], (loss(f + step) - loss(f - step)) / (2 * h), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", DECODERS)
def test_works_under_no_grad(name):
    """Evaluation rollouts run under no_grad: the pull-back must still be computed, without autograd history."""
    decoder = _decoder(name)
    f, x, inv_variance = _batch()
    expected = _pullback(decoder, f, x, inv_variance).detach()
    with torch.no_grad():
        reconstruction, pull = decoder.with_pullback(f)
        pulled = pull((x - reconstruction) * inv_variance)
        from_ops = decoder.operators(x, inv_variance).pullback(f)
        again = pull((x - reconstruction) * inv_variance)  # callable more than once
    for value in (reconstruction, pulled, from_ops):
        assert not value.requires_grad
    torch.testing.assert_close(pulled, expected)
    torch.testing.assert_close(from_ops, expected)
    assert torch.equal(again, pulled)


@pytest.mark.parametrize("name", DECODERS)
def test_construction_uses_only_the_given_generator(name):
    """Models are reproducible from their seed, and building one must not shift anyone else's random stream."""
    state = torch.get_rng_state()
    first = make_decoder(name, D, K, generator=torch.Generator().manual_seed(7), hidden=8)
    assert torch.equal(torch.get_rng_state(), state)
    second = make_decoder(name, D, K, generator=torch.Generator().manual_seed(7), hidden=8)
    other = make_decoder(name, D, K, generator=torch.Generator().manual_seed(8), hidden=8)
    for (n1, p1), (n2, p2), (_, p3) in zip(first.named_parameters(), second.named_parameters(),
                                           other.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2) and not torch.equal(p1, p3)


def test_linear_decoder_draw_and_size():
    """Φ = randn(D, K)·init_scale as the only draw, 131072 parameters at D = 256, K = 512 (the paper's model)."""
    decoder = LinearDecoder(256, 512, generator=torch.Generator().manual_seed(0))
    assert [name for name, _ in decoder.named_parameters()] == ["dictionary"]
    assert sum(p.numel() for p in decoder.parameters()) == 131072
    assert torch.equal(decoder.dictionary, torch.randn(256, 512, generator=torch.Generator().manual_seed(0)) * 1e-4)
    assert make_decoder("mlp", 256, 512, generator=torch.Generator()).dictionary is None


def test_shapes_and_classes():
    """Every registered decoder maps (B, K) to (B, D); make_decoder builds the class its name says."""
    classes = {"linear": LinearDecoder, "mlp": MLPDecoder, "conv": ConvDecoder}
    for name in DECODERS:
        decoder = _decoder(name)
        assert isinstance(decoder, classes[name])
        assert (decoder.n_inputs, decoder.n_latents) == (D, K)
        assert decoder(torch.zeros(B, K, dtype=torch.float64)).shape == (B, D)


@pytest.mark.parametrize(("args", "match"), [
    (("gru", 16, 4, {}), "unknown decoder 'gru'"),
    (("conv", 15, 4, {}), "not a square"),
    (("conv", 36, 4, {}), "divisible by 4"),
    (("mlp", 16, 4, {"hidden": 0}), "hidden"),
    (("conv", 16, 4, {"hidden": 0}), "hidden"),
    (("linear", 16, 0, {}), "n_latents"),
    (("linear", 16, 4, {"init_scale": -1.0}), "init_scale"),
])
def test_bad_arguments_raise_config_error(args, match):
    """Bad configurations must fail with a one-line ConfigError naming the problem, not a deep traceback."""
    name, d, k, options = args
    with pytest.raises(ConfigError, match=match) as info:
        make_decoder(name, d, k, generator=torch.Generator(), **options)
    assert "\n" not in str(info.value)
