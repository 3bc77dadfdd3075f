"""Encoders of the amortized and hybrid VAEs (fond.encoders)."""

import math

import pytest
import torch

from fond.encoders import (
    ENCODERS,
    FINAL_WEIGHT_SCALE,
    UNBIASED_INIT_STD,
    ConvEncoder,
    LinearEncoder,
    MLPEncoder,
    UnbiasedLinearEncoder,
    make_encoder,
)
from fond.errors import ConfigError


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ENCODERS)
def test_shapes_and_types(name):
    """Every encoder maps (B, D) to (B, n_outputs), so models can split the outputs into state tensors."""
    encoder = make_encoder(name, 64, 10, generator=_gen(), hidden=8)
    expected = {"linear": LinearEncoder, "linear-nobias": UnbiasedLinearEncoder, "mlp": MLPEncoder,
                "conv": ConvEncoder}[name]
    assert isinstance(encoder, expected)
    assert (encoder.n_inputs, encoder.n_outputs) == (64, 10)
    out = encoder(torch.randn(3, 64))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_unbiased_linear_encoder_is_the_authors():
    """``linear-nobias``: one weight, no bias, N(0, 0.05²) initial weights; x ↦ x Wᵀ (zero input, zero output)."""
    encoder = make_encoder("linear-nobias", 256, 512, generator=_gen())
    assert [name for name, _ in encoder.named_parameters()] == ["weight"]
    assert UNBIASED_INIT_STD == 0.05
    weight = encoder.weight.detach()
    assert abs(float(weight.std()) - 0.05) < 0.002 and abs(float(weight.mean())) < 0.002
    assert torch.equal(encoder(torch.zeros(2, 256)), torch.zeros(2, 512))
    x = torch.randn(3, 256)
    torch.testing.assert_close(encoder(x), x @ weight.T)


def test_parameter_counts():
    """Parameter counts follow the documented architectures (reported in the paper comparison)."""
    d, n, h = 64, 10, 8
    assert sum(p.numel() for p in make_encoder("linear", d, n, generator=_gen()).parameters()) == d * n + n
    mlp = make_encoder("mlp", d, n, generator=_gen(), hidden=h)
    assert sum(p.numel() for p in mlp.parameters()) == (d * h + h) + (h * h + h) + (h * n + n)
    conv = make_encoder("conv", d, n, generator=_gen(), hidden=h)
    flat = 2 * h * (8 // 4) ** 2
    assert sum(p.numel() for p in conv.parameters()) == (h * 16 + h) + (2 * h * h * 16 + 2 * h) + (flat * n + n)


@pytest.mark.parametrize("name", ENCODERS)
def test_global_rng_untouched_and_seeded(name):
    """Initialisation draws only from the private generator: reproducible and free of global side effects."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = make_encoder(name, 16, 6, generator=_gen(7), hidden=4)
    assert torch.equal(before, torch.get_rng_state())
    b = make_encoder(name, 16, 6, generator=_gen(7), hidden=4)
    c = make_encoder(name, 16, 6, generator=_gen(8), hidden=4)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_initial_scale():
    """Weights are U(±1/√fan_in), the final layer's scaled by FINAL_WEIGHT_SCALE (small initial posteriors)."""
    mlp = make_encoder("mlp", 100, 50, generator=_gen(), hidden=400)
    assert mlp.weight1.abs().max() <= 1 / math.sqrt(100)
    assert mlp.weight1.abs().max() > 0.9 / math.sqrt(100)
    assert mlp.weight3.abs().max() <= FINAL_WEIGHT_SCALE / math.sqrt(400)


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_reach_parameters(name):
    """Encoders are trained by backprop, so every parameter must receive a gradient."""
    encoder = make_encoder(name, 16, 6, generator=_gen(), hidden=4)
    encoder(torch.randn(2, 16)).pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())


@pytest.mark.parametrize("args, kwargs, match", [
    (("rnn", 16, 4), {}, "unknown encoder"),
    (("mlp", 0, 4), {}, "n_inputs"),
    (("mlp", 16, 0), {}, "n_outputs"),
    (("mlp", 16, 4), {"hidden": 0}, "hidden"),
    (("linear", 16, 4), {"hidden": 2.5}, "hidden"),
    (("mlp", 16.0, 4), {}, "n_inputs"),
    (("conv", 15, 4), {}, "square"),
    (("conv", 36, 4), {}, "divisible by 4"),
    (("mlp", 16, 4), {"generator": 3}, "generator"),
])
def test_bad_arguments(args, kwargs, match):
    """Bad arguments raise a one-line ConfigError naming the problem (shown as-is by the CLI)."""
    kwargs = {"generator": _gen(), **kwargs}
    with pytest.raises(ConfigError, match=match) as info:
        make_encoder(*args, **kwargs)
    assert "\n" not in str(info.value)
