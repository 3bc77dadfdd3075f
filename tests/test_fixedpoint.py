"""The fixed-point engine (fond.fixedpoint): integers inside the loop, the float engine's numbers outside it.

Oracles: the float engine's own uniforms (``uniforms_reference``) and exact sampler (``sample_poisson``) on the
same generator state; the library's float step (``fond.dynamics.fond_step``) from the same state and counts;
the error bound that the stated scales imply; the float engine's rollout statistics on held-out patches.
"""

import json
import re

import numpy as np
import pytest
import torch

from fond import fixedpoint as fp
from fond.errors import CheckpointError, ConfigError, DataError


@pytest.fixture(scope="module")
def shipped():
    """The shipped iP-VAE and 100 patches of its own held-out split."""
    from fond import pretrained
    from fond.pretrained import held_out_data, run_folder
    from fond.resume import read_run

    model = pretrained("ipvae-natural16")
    x = torch.as_tensor(held_out_data(read_run(run_folder("ipvae-natural16"))).val[:100])
    return model, x


def _keyed(seed: int):
    from fond.families.sampling import draw_key

    return draw_key(torch.Generator().manual_seed(seed))


def test_integer_uniforms_are_the_top_32_bits_of_the_float_engines_uniforms():
    """Same draws: U = ⌊u·2³²⌋ for the 53-bit uniform u the float kernels draw at the same counter and key."""
    from fond.families.kernels import uniforms_reference

    key = _keyed(3)
    counters = np.arange(5000, dtype=np.uint64)
    expected = np.floor(uniforms_reference(int(key[0]), int(key[1]), counters) * 2.0**32).astype(np.int64)
    np.testing.assert_array_equal(fp.integer_uniforms(int(key[0]), int(key[1]), counters), expected)


def test_integer_counts_equal_the_float_samplers_counts_from_the_same_generator(shipped):
    """Below the float sampler's PTRS cutoff (r < 20) the integer CDF table and the float inverse CDF give the
    same count for the same uniform: a count can differ only where U falls within 2⁻³³ of a CDF level."""
    from fond.families.sampling import sample_poisson

    q = fp.quantize(shipped[0], 16, 16)
    rows = np.arange(0, int((np.log(19.0) + 8.0) * 256))  # grid points of u from the floor up to log 19
    u = np.tile((rows * 16 - 8 * 4096).astype(np.int32), (8, 1))  # u units 2⁻¹², grid step 2⁻⁸ nats
    rates = torch.from_numpy(np.exp(u.astype(np.float64) / 4096))
    counts = fp.integer_draw(q.tables, u, _keyed(5))
    float_counts = sample_poisson(rates, torch.Generator().manual_seed(5)).numpy()
    assert counts.dtype == np.int32 and counts.max() > 10
    np.testing.assert_array_equal(counts, float_counts)


def test_counts_at_high_rates_have_the_poisson_mean_and_variance(shipped):
    """Above the cutoff the table is the same construction: mean and variance e^u within 5 standard errors."""
    q = fp.quantize(shipped[0], 16, 16)
    u = np.full((50, 400), 5 * 4096, np.int32)  # e⁵ ≈ 148 spikes per step
    counts = fp.integer_draw(q.tables, u, _keyed(7)).astype(np.float64)
    rate, n = np.exp(5.0), counts.size
    assert abs(counts.mean() - rate) < 5 * np.sqrt(rate / n)
    assert abs(counts.var() - rate) < 5 * rate * np.sqrt(2.0 / n)


def _float_step(model, u, spikes, x):
    """The library's float step (fond_step) in float64 from potentials u and counts ``spikes``."""
    from fond.decoders import LinearDecoderOperators
    from fond.dynamics import fond_step
    from fond.families.base import Sample

    parts = model.components()
    params = {k: v.detach().double() for k, v in parts.family_params.items()}
    operators = LinearDecoderOperators(model.dictionary.detach().double(), x.double(),
                                       parts.inv_variance.detach().double())
    state = fond_step(parts.family, params, (u,), Sample(spikes), operators.pullback(spikes),
                      parts.bias.detach().double())
    return state[0].numpy()


def _one_step(model, x, weight_bits, state_bits, input_bits):
    q = fp.quantize(model, weight_bits, state_bits, input_bits=input_bits)
    result = model.infer(x, 40, seed=2)
    u = np.rint(result.state["u"].double().numpy() * 2.0**q.fmt.fraction_bits).astype(np.int32)
    spikes = result.spikes.numpy().astype(np.int32)
    drive = fp.integer_drive(q.tables, q.fmt, x)
    new_u, _ = fp.integer_step(q.tables, q.fmt, u, spikes, drive, _keyed(0))
    expected = _float_step(model, torch.from_numpy(u * q.fmt.unit), torch.from_numpy(spikes).double(), x)
    return q, new_u * q.fmt.unit, expected, spikes


def test_one_wide_integer_step_is_the_float_step(shipped):
    """16-bit weights, 24-bit state, 16-bit input: the integer step lands on fond_step's potentials to the
    rounding of its formats (measured: max 6e-5 nats over 51 200 neurons)."""
    model, x = shipped
    _, got, expected, _ = _one_step(model, x, 16, 24, 16)
    error = np.abs(got - expected)
    assert error.max() < 3e-4 and error.mean() < 1e-5


def test_a_narrow_step_stays_within_the_error_its_stated_scales_allow(shipped):
    """6-bit weights: each weight is off by at most half its scale, so d — and u, the soft clamps having slope
    ≤ 1 — is off by at most Σ_j z_j·s_k/2 + z_k·s_own/2 + Σ_d |x_d|·s_E,k/2 + ADC and rounding terms."""
    model, x = shipped
    q, got, expected, spikes = _one_step(model, x, 6, 20, 12)
    off_diagonal = spikes.sum(1, keepdims=True) - spikes
    levels = np.abs(np.clip(np.rint(x.numpy() / q.fmt.input_scale), -2047, 2047))
    encoder_float = q.tables.encoder * q.scales["encoder_scale"]
    bound = (off_diagonal * q.scales["recurrent_scale"] / 2 + spikes * q.scales["own_scale"] / 2
             + levels @ np.ones_like(encoder_float) * q.fmt.input_scale * q.scales["encoder_scale"] / 2
             + np.abs(encoder_float).sum(0) * q.fmt.input_scale / 2 + 8 * q.fmt.unit)
    error = np.abs(got - expected)
    assert np.all(error <= bound)
    assert error.max() > 10 * q.fmt.unit  # 6 bits do cost something: the bound is not vacuous here


def test_the_soft_clamps_are_the_family_rule_in_integers(shipped):
    """Without spikes u ← G(u + G(d)) with G(y) = c − softplus(c − max(y, floor)) (soft_clamp_upper), to 2 units,
    for d far below the floor to far above the clamp."""
    from fond.families.poisson import soft_clamp_upper

    model, _ = shipped
    q = fp.quantize(model, 8, 16)
    family, unit = model.family, q.fmt.unit
    d = np.linspace(-30.0, 30.0, 512)[None, :].repeat(64, 0)
    u = np.linspace(family.floor, family.clamp_final, 64)[:, None].repeat(512, 1)
    u_int, d_int = np.rint(u / unit).astype(np.int32), np.rint(d / unit).astype(np.int64)
    new_u, _ = fp.integer_step(q.tables, q.fmt, u_int, np.zeros_like(u_int), d_int, _keyed(1))
    c, floor = family.clamp_final, family.floor
    expected = soft_clamp_upper(torch.from_numpy(u_int * unit) + soft_clamp_upper(torch.from_numpy(d_int * unit), c,
                                                                                 floor), c, floor).numpy()
    assert np.abs(new_u * unit - expected).max() <= 2 * unit


def test_16_bit_weights_give_the_float_engines_rollout_statistics(shipped):
    """The issue's criterion: 100 held-out patches, t = 400 (past the float engine's convergence step, 268), same
    seeds: R² (spikes and mean code) and zeros within 0.005 of the float engine's (measured: |ΔR²| ≤ 0.0012,
    |Δzeros| ≤ 0.0002; 4-bit weights fail it by 0.15)."""
    model, x = shipped
    float_trace = model.infer(x, 400, seed=0, trace=True).trace
    integer_trace = fp.quantize(model, 16, 16).infer(x, 400, seed=0, trace=True).trace
    for key in ("r2", "r2_rates", "zeros"):
        assert abs(integer_trace[key][-1] - float_trace[key][-1]) < 0.005, key
    assert abs(integer_trace["r2"][-1] - 0.78) < 0.05  # a working model, not two identical failures


def _float_types(text: str) -> set[str]:
    return set(re.findall(r"\b(double|float|half|fadd|fmul|fdiv|sitofp|uitofp|fptosi|fptoui)\b", text))


def _compiled_fresh(kernel):
    """``kernel``'s Python function compiled again without the cache, for every signature it has run with, so
    numba keeps its type annotations and IR (cached code keeps neither)."""
    import numba

    fresh = numba.njit(error_model="numpy")(kernel.py_func)
    for signature in kernel.signatures:
        fresh.compile(signature)
    return fresh


def test_no_floating_point_type_inside_the_integer_kernels(shipped):
    """Every argument of the compiled step and draw kernels is an integer (array), no variable of theirs (or of
    the helpers numba inlines into them) has a float type, and their LLVM IR has no float instruction or type.
    The same inspection finds floats in the float engine's kernel: the check can fail."""
    import numba
    from numba.core import types

    model, x = shipped
    fp.quantize(model, 8, 12).infer(x[:4], 3, seed=0)  # compiles (or loads) both kernels
    for kernel in (fp.step_kernel, fp.draw_kernel):
        assert kernel.signatures
        for signature in kernel.signatures:
            for arg in signature:
                assert isinstance(getattr(arg, "dtype", arg), types.Integer), (kernel.__name__, arg)
        fresh = _compiled_fresh(kernel)
        for signature, compiled in fresh.overloads.items():
            floats = [v for v in compiled.type_annotation.typemap.values() if isinstance(v, types.Float)]
            assert not floats, (kernel.__name__, floats)
            assert not _float_types(fresh.inspect_llvm(signature)), kernel.__name__
    control = numba.njit(_integer_halving)
    control(np.arange(4, dtype=np.int32))
    assert _float_types(control.inspect_llvm(control.signatures[0]))
    assert any(isinstance(v, types.Float) for v in control.overloads[control.signatures[0]].type_annotation
               .typemap.values())


def _integer_halving(counts):
    """The control: integer arrays in and out, a float inside (counts * 0.5)."""
    out = np.empty_like(counts)
    for i in range(counts.size):
        out[i] = int(counts[i] * 0.5)
    return out



def test_the_integer_step_takes_and_returns_integer_arrays_only(shipped):
    """The step's boundary is integer: int32 out, and a float array in is refused with one line."""
    q = fp.quantize(shipped[0], 8, 12)
    u = np.broadcast_to(q.tables.initial, (3, q.n_latents)).astype(np.int32)
    spikes = np.zeros_like(u)
    drive = fp.integer_drive(q.tables, q.fmt, shipped[1][:3])
    assert drive.dtype == np.int64
    new_u, new_spikes = fp.integer_step(q.tables, q.fmt, u, spikes, drive, _keyed(0))
    assert new_u.dtype == np.int32 and new_spikes.dtype == np.int32
    with pytest.raises(DataError, match="drive is float64"):
        fp.integer_step(q.tables, q.fmt, u, spikes, drive.astype(np.float64), _keyed(0))


def test_save_and_load_keep_every_integer_and_scale_without_pickle(shipped, tmp_path):
    """A saved model is safetensors + JSON: loaded back it has the same integers and scales, weights stored in
    int8 at 8 bits, and the same rollout bit for bit; a float run folder or a pickle is refused in one line."""
    from safetensors.torch import load_file

    model, x = shipped
    q = fp.quantize(model, 8, 12)
    folder = q.save(tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == fp.FORMAT and config["quantization"]["weight_bits"] == 8
    assert load_file(folder / "model.safetensors")["recurrent"].dtype == torch.int8
    again = fp.load(folder)
    for name, value in vars(q.tables).items():
        np.testing.assert_array_equal(getattr(again.tables, name), value)
    for name, value in q.scales.items():
        np.testing.assert_array_equal(again.scales[name], value)
    assert again.fmt == q.fmt
    a, b = q.infer(x[:10], 30, seed=4), again.infer(x[:10], 30, seed=4)
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.rates, b.rates)
    from fond.pretrained import run_folder

    with pytest.raises(CheckpointError, match="not a quantised fond model"):
        fp.load(run_folder("ipvae-natural16"))
    (folder / "model.safetensors").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="pickle"):
        fp.load(folder)


def test_bad_widths_and_models_are_refused_in_one_line(shipped, tiny_model):
    """Widths outside their ranges, and models the engine cannot run, each raise one line."""
    from fond import IGVAE

    model = shipped[0]
    for options, pattern in (({"weight_bits": 1}, "weight_bits"), ({"state_bits": 5}, "state_bits"),
                             ({"weight_bits": True}, "weight_bits"), ({"input_range": -1.0}, "input_range")):
        with pytest.raises(ConfigError, match=pattern):
            fp.quantize(model, **options)
    with pytest.raises(DataError, match="Poisson"):
        fp.quantize(IGVAE(16, 8))
    assert fp.quantize(tiny_model, 4, 10).infer(torch.randn(3, 16), 5).spikes.shape == (3, 24)


def test_fond_quantize_writes_a_model_that_infer_runs(tmp_path, capsys):
    """The CLI's quantize writes the folder fond.fixedpoint.load reads; a bad width is one error line."""
    from fond.cli import main

    assert main(["quantize", "pretrained:ipvae-natural16", "--weight-bits", "6", "--state-bits", "12", "--out",
                 str(tmp_path / "q")]) == 0
    q = fp.load(tmp_path / "q")
    assert q.fmt.weight_bits == 6 and q.fmt.fraction_bits == 8
    assert q.infer(torch.zeros(2, 256), 3).trace["r2"].shape == (3,)
    assert main(["quantize", "pretrained:ipvae-natural16", "--weight-bits", "40", "--out", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("fond: error: weight_bits must be")


def test_fond_eval_and_fond_load_take_a_quantized_folder(tmp_path, capsys):
    """A quantized folder carries its source run's data record, so `fond eval` evaluates it on the source's
    held-out split (and writes its report) and `fond.load` returns the integer model; CUDA is refused."""
    import json

    import fond
    from fond.cli import main
    from fond.errors import ConfigError

    folder = tmp_path / "q"
    assert main(["quantize", "pretrained:ipvae-natural16", "--weight-bits", "8", "--state-bits", "16", "--out",
                 str(folder)]) == 0
    assert isinstance(fond.load(folder), fp.QuantizedModel)
    assert main(["eval", str(folder), "--steps", "20", "--samples", "50", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_samples"] == 50 and summary["r2"] > 0.3
    assert (folder / "report" / "report.md").read_text().startswith("# integer iP-VAE (8-bit weights, 16-bit")
    with pytest.raises(ConfigError, match="runs on the CPU only"):
        fond.load(folder, device="cuda")


def test_online_input_and_anytime_inference_run_as_in_the_float_model(shipped):
    """An input sequence (steps, B, D) swaps the integer drive every frame; tol= freezes settled inputs and narrows
    the integer batch (the keys still come one per step, as the float engine's)."""
    model, x = shipped
    q = fp.quantize(model, 8, 16)
    sequence = torch.stack([x[:3]] * 4 + [x[3:6]] * 4)
    online = q.infer(sequence, 8, seed=0)
    assert online.spikes.shape == (3, 512) and online.trace["r2"].shape == (8,)
    anytime = q.infer(x[:6], 400, seed=0, tol=0.2, window=20)
    assert anytime.steps_used is not None and int(anytime.steps_used.min()) < 400
    assert anytime.trace["r2"].shape == (400,) and torch.isfinite(anytime.rates).all()
