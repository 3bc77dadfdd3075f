"""Oracles for FOND's prescription: the step is the natural gradient of the written-out free energy."""

import torch

from fond.dynamics import DynamicsParams, EvalOperators, natural_gradient_step, pullback, soft_clamp_upper
from fond.families.poisson import poisson_kl


def _params(d=12, k=20, seed=0, clamp=60.0, step_size=1.0, bias=None):
    gen = torch.Generator().manual_seed(seed)
    phi = torch.randn(d, k, generator=gen, dtype=torch.float64) * 0.3
    inv_var = torch.exp(torch.randn(d, generator=gen, dtype=torch.float64) * 0.3)
    b = bias if bias is not None else torch.rand(k, generator=gen, dtype=torch.float64)
    return DynamicsParams(phi, inv_var, b, torch.tensor(step_size, dtype=torch.float64), clamp, floor=-60.0)


def test_step_is_natural_gradient_of_free_energy():
    """With rates in place of spikes and b = ½diag(ΦᵀΣ⁻¹Φ), u_{t+1} − u_t = −η G(u)⁻¹ ∂F/∂u at the online
    prior, where F is the written-out free energy E_q‖x − Φz‖²_Σ⁻¹/2 + β KL(q‖q_prior), G = diag(e^u)."""
    base = _params()
    phi, inv_var = base.dictionary, base.inv_variance
    b_exact = 0.5 * (phi.pow(2) * inv_var.unsqueeze(1)).sum(0)
    params = DynamicsParams(phi, inv_var, b_exact, base.step_size, base.clamp, base.floor)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    u0 = torch.randn(5, 20, generator=gen, dtype=torch.float64) * 0.5 - 1.0
    u = u0.clone().requires_grad_(True)
    r = u.exp()
    # E_q‖x − Φz‖²: squared error of the mean plus Σ_k Var(z_k)‖Φ_k‖² with Var z_k = r_k (Poisson).
    expected_sq = ((x - r @ phi.T).pow(2) * inv_var).sum(-1) + (r * (phi.pow(2) * inv_var.unsqueeze(1)).sum(0)).sum(-1)
    free_energy = 0.5 * expected_sq + 7.0 * poisson_kl(u, u0).sum(-1)
    (grad,) = torch.autograd.grad(free_energy.sum(), u)
    natural = grad / u0.exp()
    step = natural_gradient_step(params, u0, pullback(params, x, r.detach() @ phi.T)) - u0
    assert torch.allclose(step, -natural, atol=1e-8)


def test_leak_appears_away_from_the_online_prior():
    """Away from the prior the natural gradient of β·KL adds the leak −β(u − u₀), which online updating removes."""
    u = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    u0 = torch.tensor([-0.2, -0.5], dtype=torch.float64)
    (grad,) = torch.autograd.grad((3.0 * poisson_kl(u, u0)).sum(), u)
    assert torch.allclose(grad / u.detach().exp(), 3.0 * (u.detach() - u0))


def test_rate_form_is_divisive_normalisation():
    """r_{t+1,i} = r_{t,i}·exp(η(Φᵀx/σ²)_i − ηb_i) / ∏_j exp(η W_ij z_j): the membrane update in rate form."""
    params = _params(step_size=0.7)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    u = torch.randn(3, 20, generator=gen, dtype=torch.float64) - 2.0
    z = torch.poisson(u.exp() * 3, generator=gen)
    u_next = natural_gradient_step(params, u, pullback(params, x, z @ params.dictionary.T))
    ops = EvalOperators.build(params, x)
    eta = params.step_size
    numerator = torch.exp(eta * (ops.drive - params.bias))
    denominator = torch.exp(eta * ops.gram.unsqueeze(0) * z.unsqueeze(1)).prod(-1)
    assert torch.allclose(u_next.exp(), u.exp() * numerator / denominator, rtol=1e-9)
    assert (torch.diagonal(ops.gram) > 0).all()  # self-inhibition


def test_precomputed_operators_equal_direct_pullback():
    """The evaluation engine's drive − zW must equal Φᵀ(x − Φz)/σ² computed directly."""
    params = _params()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    z = torch.poisson(torch.full((4, 20), 0.8, dtype=torch.float64), generator=gen)
    direct = pullback(params, x, z @ params.dictionary.T)
    assert torch.allclose(EvalOperators.build(params, x).pullback(z), direct, atol=1e-12)


def test_soft_clamp_bounds_and_identity_far_below():
    """The clamp never exceeds c, is ≈ identity well below c, and the floor is hard."""
    x = torch.linspace(-20, 40, 1001, dtype=torch.float64)
    y = soft_clamp_upper(x, 10.0, -8.0)
    assert (y < 10.0).all()
    assert y.min() >= 10.0 - torch.nn.functional.softplus(torch.tensor(18.0, dtype=torch.float64)) - 1e-12
    mid = (x > -5) & (x < 0)
    assert torch.allclose(y[mid], x[mid], atol=1e-4)
    assert torch.all(torch.diff(y) >= 0)


def test_clamp_limits_runaway_rates():
    """A huge drive cannot push the potential past c (what keeps 1000-step rollouts finite)."""
    params = _params(clamp=2.0)
    u = torch.zeros(1, 20, dtype=torch.float64)
    out = natural_gradient_step(params, u, torch.full((1, 20), 1e6, dtype=torch.float64))
    assert (out < 2.0).all()
    # Δu saturates at c, then u + Δu = c is clamped again: c − softplus(0).
    assert torch.allclose(out, torch.full_like(out, 2.0 - torch.log(torch.tensor(2.0)).item()))
