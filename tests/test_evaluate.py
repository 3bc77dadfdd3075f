"""Evaluation: metrics against hand computations, chunking, and divergence is reported, not hidden."""

import math

import numpy as np
import pytest
import torch

from fond.errors import DataError
from fond.evaluate import evaluate
from fond.metrics import convergence_step, r2_per_sample, rate_distortion_distance, zeros_fraction


def test_r2_per_sample_against_hand_computation():
    """R² is per sample: 1 − SS_res/SS_tot with each sample's own mean (DESIGN §2.5)."""
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    x_hat = torch.tensor([[1.0, 2.0, 2.0], [1.0, 0.0, 3.0]])
    expected = [1 - 1 / 2, 1 - 1 / 6]
    assert torch.allclose(r2_per_sample(x, x_hat), torch.tensor(expected))
    assert torch.allclose(r2_per_sample(x, x), torch.ones(2))


def test_zeros_and_distance():
    """zeros counts exact zeros; d = √((1 − R²)² + (1 − zeros)²) ranks (0.83, 0.77) ahead of (0.87, 0.0)."""
    assert torch.allclose(zeros_fraction(torch.tensor([[0.0, 1.0, 0.0, 2.0]])), torch.tensor([0.5]))
    assert rate_distortion_distance(1.0, 1.0) == 0.0
    assert rate_distortion_distance(0.83, 0.773) == pytest.approx(0.284, abs=1e-3)  # the paper's iP-VAE
    assert rate_distortion_distance(0.83, 0.773) < rate_distortion_distance(0.874, 0.0)


def test_convergence_step_definition():
    """First step reaching 99 % of the final R²; undefined when the final R² is not positive."""
    trace = np.array([0.1, 0.5, 0.95, 0.989, 0.99, 1.0])
    assert convergence_step(trace) == 5  # 0.989 < 0.99 at step 4; 0.99 reaches it at step 5 (1-based)
    assert convergence_step(np.array([0.2, -0.1])) is None


def test_evaluate_one_chunk_equals_infer(tiny_model, tiny_data):
    """With one chunk, evaluate's numbers are exactly those of model.infer (no hidden reweighting)."""
    ev = evaluate(tiny_model, tiny_data, 25, seed=4, chunk_size=1000)
    res = tiny_model.infer(torch.from_numpy(tiny_data), 25, seed=4)
    assert ev.r2 == pytest.approx(float(r2_per_sample(torch.from_numpy(tiny_data), res.reconstruction).mean()))
    assert np.allclose(ev.trace["r2"], res.trace["r2"])
    assert ev.zeros == pytest.approx(res.trace["zeros"][-1])
    assert ev.n_params == tiny_model.n_params() and ev.steps == 25


def test_uncentred_r2_is_the_same_residual_over_the_shifted_inputs(tiny_data):
    """r2_uncentred: R² of reconstruction + offset against x + offset, per input, by the formula written out (the
    paper's R² on raw digits for a model trained on centred ones); a zero offset gives the trace's own R²."""
    from fond import IPVAE

    tiny_model = IPVAE(16, 24, seed=3, init_scale=0.1)  # (tiny_model's rollouts blow up: R² −7·10⁸)
    with torch.no_grad():
        tiny_model.log_bias.fill_(-2.0)
    offset = np.linspace(-0.5, 1.5, tiny_data.shape[1])
    ev = evaluate(tiny_model, tiny_data, 25, seed=4, chunk_size=7, offset=offset)
    expected = []
    for i, begin in enumerate(range(0, len(tiny_data), 7)):
        chunk = tiny_data[begin:begin + 7].astype(np.float64)
        res = tiny_model.infer(torch.from_numpy(tiny_data[begin:begin + 7]), 25, seed=4 + i)
        for rec in (res.reconstruction, res.reconstruction_from_rates):
            images, fit = chunk + offset, rec.double().numpy() + offset
            residual = ((images - fit) ** 2).sum(1)
            expected.append((i, rec is res.reconstruction, 1 - residual / ((images - images.mean(1, keepdims=True))
                                                                             ** 2).sum(1)))
    sample = np.concatenate([r for _, is_sample, r in expected if is_sample])
    rates = np.concatenate([r for _, is_sample, r in expected if not is_sample])
    assert ev.r2_uncentred == pytest.approx(sample.mean(), abs=1e-9)
    assert ev.r2_rates_uncentred == pytest.approx(rates.mean(), abs=1e-9)
    assert ev.summary()["r2_uncentred"] == ev.r2_uncentred and "r2_uncentred" not in evaluate(
        tiny_model, tiny_data, 5).summary()
    plain = evaluate(tiny_model, tiny_data, 25, seed=4, offset=np.zeros(tiny_data.shape[1]))
    assert plain.r2_uncentred == pytest.approx(plain.r2, abs=1e-5)
    with pytest.raises(DataError, match="offset"):
        evaluate(tiny_model, tiny_data, 5, offset=np.zeros(3))


def test_chunked_evaluation_weights_by_chunk_size(tiny_model, tiny_data):
    """Chunks of unequal size are averaged per input, not per chunk."""
    ev = evaluate(tiny_model, tiny_data[:50], 10, seed=0, chunk_size=40)
    a = tiny_model.infer(torch.from_numpy(tiny_data[:40]), 10, seed=0).trace["zeros"]
    b = tiny_model.infer(torch.from_numpy(tiny_data[40:50]), 10, seed=1).trace["zeros"]
    assert np.allclose(ev.trace["zeros"], (40 * a + 10 * b) / 50)


def test_divergence_is_flagged(tiny_model, tiny_data):
    """An unstable rollout (huge step size) must be reported as diverged, not summarised as a number."""
    with torch.no_grad():
        tiny_model.log_step_size.fill_(math.log(50.0))
        tiny_model.log_bias.fill_(-10.0)
    ev = evaluate(tiny_model, tiny_data, 50)
    assert ev.diverged and ev.diverged_fraction > 0


def test_gaussian_means_pinned_at_the_clamp_are_flagged(tiny_data):
    """For Gaussian latents the blow-up sign is a mean held at the tanh clamp |μ| → 7; a healthy rollout
    of the same model is not flagged (large but free means are legitimate)."""
    from fond import IGVAE

    model = IGVAE(16, 24, seed=0, init_scale=0.3)
    with torch.no_grad():
        model.log_step_size.fill_(math.log(0.1))  # η_μσ²·‖W‖ < 1 even at σ = 1: a stable rollout
        model.log_bias.fill_(-30.0)
    healthy = evaluate(model, tiny_data, steps=60)
    assert not healthy.diverged and healthy.diverged_fraction == 0.0
    with torch.no_grad():
        model.log_bias.fill_(6.0)  # b ≈ 400 drives every mean down to −7 within a few steps
    pinned = evaluate(model, tiny_data, steps=60)
    assert pinned.diverged and pinned.diverged_fraction == 1.0


class _StubModel:
    """A model whose every input sits at its clamp bound (trace ``saturated`` = 1) and whose mean code
    reconstructs ``scale``·x (+ ``offset``): evaluate sees only what infer returns."""

    def __init__(self, scale: float, offset: float = 0.0) -> None:
        self.scale, self.offset = scale, offset

    def n_params(self) -> int:
        return 0

    def infer(self, x, steps, *, seed=0, trace=True):
        from types import SimpleNamespace

        recon = self.scale * x + self.offset
        r2 = r2_per_sample(x, recon).mean().item()
        per_step = {"r2": r2, "r2_rates": r2, "zeros": 0.5, "nelbo": 1.0, "saturated": 1.0, "rate_max": 7.0}
        return SimpleNamespace(reconstruction_from_rates=recon, rates=torch.ones(x.shape[0], 4),
                               trace={k: np.full(steps, v) for k, v in per_step.items()})


def test_a_state_at_its_bound_is_not_divergence_a_blown_up_reconstruction_is(tiny_data):
    """A low clamp keeps healthy states at the bound (the quick P-VAE's rates ≤ e²): flagging them hid good
    fits behind 'diverged' (78–86 % of inputs); a reconstruction error far above the input's variance, or a
    non-finite one, is a blow-up and must still be flagged, input by input."""
    from fond.evaluate import DIVERGED_R2, diverged_inputs

    bounded = evaluate(_StubModel(0.9), tiny_data, 5)
    assert not bounded.diverged and bounded.diverged_fraction == 0.0 and bounded.r2 > 0.9
    blown = evaluate(_StubModel(30.0), tiny_data, 5)
    assert blown.diverged and blown.diverged_fraction == 1.0
    x = torch.from_numpy(tiny_data[:3])
    recon = torch.stack([0.5 * x[0], x[1] * (1 + math.sqrt(1 - DIVERGED_R2) * 1.01), torch.full_like(x[2], math.nan)])
    result = _StubModel(1.0).infer(x, 1)
    result.reconstruction_from_rates = recon
    assert diverged_inputs(x, result).tolist() == [False, True, True]
