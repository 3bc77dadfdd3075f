"""``infer(..., record=)`` histories and online input sequences, for every model behind the interface."""

import pytest
import torch

from fond.config import MODELS, ModelConfig
from fond.errors import DataError
from fond.models import build_model

D, K, B = 16, 12, 3
ONLINE = ("ipvae", "igvae", "igvae-relu", "ibvae", "pvae", "gvae", "gvae-relu")


def _model(name):
    return build_model(ModelConfig(n_inputs=D, n_latents=K, model=name), seed=1)


def _x(seed=0, n=B):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS)
def test_history_last_step_is_the_result(name):
    """The history is what the analyses read; its last entry must be the rollout's own final code."""
    model = _model(name)
    res = model.infer(_x(), 6, seed=3, record=range(1, 7))
    assert res.history["steps"].tolist() == [1, 2, 3, 4, 5, 6]
    assert res.history["rates"].shape == (6, B, K)
    torch.testing.assert_close(res.history["rates"][-1], res.rates, rtol=0, atol=0)
    torch.testing.assert_close(res.history["spikes"][-1], res.spikes, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["ipvae", "igvae", "pvae", "savae", "lca", "pc"])
def test_recording_is_causal_and_changes_nothing(name):
    """Step t of a long rollout equals a t-step rollout with the same seed, and recording does not perturb it."""
    model = _model(name)
    x = _x(1)
    long = model.infer(x, 8, seed=5, record=[3, 8], trace=False)
    short = model.infer(x, 3, seed=5, trace=False)
    plain = model.infer(x, 8, seed=5, trace=False)
    assert long.history["steps"].tolist() == [3, 8]
    torch.testing.assert_close(long.history["rates"][0], short.rates, rtol=0, atol=0)
    torch.testing.assert_close(long.rates, plain.rates, rtol=0, atol=0)
    assert plain.history is None


@pytest.mark.parametrize("name", ONLINE)
def test_constant_sequence_equals_fixed_input(name):
    """An online input that never changes must give exactly the fixed-input rollout (same trace, same code)."""
    model = _model(name)
    x = _x(2)
    fixed = model.infer(x, 5, seed=7)
    online = model.infer(x.expand(5, B, D).clone(), 5, seed=7)
    torch.testing.assert_close(online.rates, fixed.rates)
    for key in ("r2", "zeros", "nll"):
        torch.testing.assert_close(torch.as_tensor(online.trace[key]), torch.as_tensor(fixed.trace[key]))


def test_online_input_switch_carries_the_posterior_over():
    """After the input switches, an iterative model's code differs from a fresh start on the new input (memory)."""
    model = _model("ipvae")
    a, b = _x(3), _x(4)
    sequence = torch.cat([a.expand(4, B, D), b.expand(2, B, D)])
    carried = model.infer(sequence, 6, seed=0, trace=False).rates
    fresh = model.infer(b, 2, seed=0, trace=False).rates
    assert not torch.allclose(carried, fresh)


@pytest.mark.parametrize("record, message", [([0], "1..4"), ([5], "1..4"), (["a"], "integer"), ([1.5], "integer")])
def test_bad_record_is_named(record, message):
    """A record step outside the rollout is a user error, not an empty history."""
    with pytest.raises(DataError, match=message):
        _model("ipvae").infer(_x(), 4, record=record)


@pytest.mark.parametrize("name", ["savae", "iavae", "lca", "pc"])
def test_models_without_online_input_say_so(name):
    """Models with a fixed-input solver refuse a sequence with a one-line message rather than misreading it."""
    with pytest.raises(DataError, match="fixed input"):
        _model(name).infer(torch.zeros(3, B, D), 3)


def test_sequence_length_must_match_steps():
    """One frame per step: a sequence of the wrong length is named, not silently truncated."""
    with pytest.raises(DataError, match="one frame per step"):
        _model("ipvae").infer(torch.zeros(4, B, D), 3)


@torch.no_grad()
def test_frame_t_drives_step_t():
    """Online input must feed frame t to step t: compare with the step function applied frame by frame."""
    from fond.dynamics import fond_step

    model = _model("ipvae")
    frames = torch.stack([_x(10), _x(11), _x(12)])
    res = model.infer(frames, 3, seed=4, trace=False, record=[1, 2, 3])
    parts, gen = model.components(), torch.Generator().manual_seed(4)
    family, fp, decoder = parts.family, parts.family_params, parts.decoder
    state = family.initial_state(fp, B)
    sample = family.sample(state, fp, gen, None)
    for t, frame in enumerate(frames):
        pullback = decoder.operators(frame, parts.inv_variance).pullback(family.activation(sample.value, fp))
        state = fond_step(family, fp, state, sample, pullback, parts.bias)
        sample = family.sample(state, fp, gen, None)
        # (the fused engine computes the same clamps in rate space: equal up to float32 rounding)
        torch.testing.assert_close(res.history["rates"][t], family.mean_code(state, fp), rtol=1e-5, atol=1e-6)
