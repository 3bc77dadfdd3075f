"""NIR export (fond.export_nir): the graph says what the model computes, and reads back to the same model.

Oracles: (1) the model itself — a model read back from the file runs ``infer`` bit for bit like the one
exported, with the same seed (same parameters, same code, same draws: torch.equal, not a tolerance);
(2) an independent plain-numpy simulator written here from the NIR node parameters alone (read with
``nir.read``, not fond's reader), fed the same spike counts, whose membrane potentials must match fond's
rates to float32 rounding — that is what shows the nodes mean what the docs say they mean.
"""

import math

import nir
import numpy as np
import pytest
import torch

from fond import IGVAE, IPVAE
from fond.cli import main
from fond.errors import CheckpointError, ConfigError
from fond.export_nir import (
    EDGES,
    NODE_TYPES,
    POISSON_THRESHOLD,
    from_nir,
    read_nir,
    to_nir,
    write_nir,
)
from fond.families.sampling import sample_poisson

STEPS = 30


@pytest.fixture
def model():
    """A small iP-VAE (D = 16, K = 24) with non-default learned tensors everywhere, so that a tensor lost or
    mixed up on the way changes the rollout: per-pixel σ_x, per-neuron b and initial potentials, η ≠ 1."""
    m = IPVAE(16, 24, seed=3, init_scale=0.3, family_options={"clamp_final": 4.0})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        m.log_sigma_x.copy_(0.3 * torch.randn(16, generator=gen))
        m.log_bias.copy_(-2.0 + 0.5 * torch.randn(24, generator=gen))
        m.log_step_size.fill_(math.log(0.7))
    return m


@pytest.fixture
def x():
    return torch.randn(5, 16, generator=torch.Generator().manual_seed(2))


def assert_same_rollout(a, b, x, steps, seed):
    """Every output of ``infer`` (state, rates, spikes, reconstructions, trace, history) is identical."""
    ra = a.infer(x, steps, seed=seed, record=[1, steps])
    rb = b.infer(x, steps, seed=seed, record=[1, steps])
    for name in ("rates", "spikes", "reconstruction", "reconstruction_from_rates"):
        assert torch.equal(getattr(ra, name), getattr(rb, name)), name
    assert torch.equal(ra.state["u"], rb.state["u"])
    assert all(np.array_equal(ra.trace[k], rb.trace[k], equal_nan=True) for k in ra.trace)
    assert all(np.array_equal(ra.history[k], rb.history[k]) for k in ("rates", "spikes"))
    return ra


def test_round_trip_reproduces_the_rollout_bit_for_bit(model, x, tmp_path):
    """The reader's model is the exported one: same tensors exactly, same rollout with the same seed."""
    path = write_nir(model, tmp_path / "m.nir")
    back = read_nir(path)
    assert isinstance(back, IPVAE) and back.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    result = assert_same_rollout(model, back, x, STEPS, seed=7)
    assert result.spikes.sum() > 0 and (result.spikes > 1).any()  # the recurrent loop and multi-spike counts ran
    other = back.infer(x, STEPS, seed=8)
    assert not torch.equal(other.spikes, result.spikes)  # the seed matters: equality above is not vacuous


def test_round_trip_of_the_shipped_model_on_natural_patches(tmp_path):
    """pretrained:ipvae-natural16 (K = 512) round-trips: 50 steps on whitened photo patches, bit for bit,
    and the preprocessing record travels with it."""
    import fond
    from fond.data.natural import load_photo
    from fond.pretrained import resolve_run

    shipped = fond.load(resolve_run("pretrained:ipvae-natural16"))
    back = read_nir(write_nir(shipped, tmp_path / "natural16.nir"))
    assert back.preprocessing == shipped.preprocessing
    patches = shipped.preprocess([load_photo("chelsea")], n=4, seed=0)
    result = assert_same_rollout(shipped, back, patches, 50, seed=0)
    assert result.trace["r2"][-1] > 0.3  # a real inference, not a silent network


def test_graph_layout_nodes_edges_and_shapes(model):
    """The graph has the documented nodes, types, edges and weight shapes (D = 16 inputs, K = 24 neurons)."""
    graph = to_nir(model)
    assert {name: type(node).__name__ for name, node in graph.nodes.items()} == NODE_TYPES
    assert sorted(graph.edges) == sorted(EDGES)
    assert ("recurrent", "membrane") in graph.edges and ("drive", "membrane") in graph.edges  # summed currents
    nodes = graph.nodes
    assert nodes["drive"].weight.shape == (24, 16) and nodes["drive"].bias.shape == (24,)
    assert nodes["recurrent"].weight.shape == (24, 24) and nodes["decoder"].weight.shape == (16, 24)
    assert np.array_equal(nodes["membrane"].r, np.ones(24))
    np.testing.assert_array_equal(nodes["decoder"].weight, model.decoder.dictionary.detach().numpy())
    np.testing.assert_allclose(nodes["recurrent"].weight, nodes["recurrent"].weight.T, rtol=1e-6, atol=1e-7)


def test_poisson_node_holds_its_documented_meaning(model, tmp_path):
    """The spike generator's metadata survives the file: what it is, its rate, the clamp constants, and a
    stand-in threshold at log(log 2), where P(Poisson(e^v) ≥ 1) is exactly ½."""
    graph = nir.read(write_nir(model, tmp_path / "m.nir"))
    spikes, membrane = graph.nodes["spikes"], graph.nodes["membrane"]
    assert spikes.metadata["fond_node"] == "PoissonSpikeGenerator" and spikes.metadata["rate"] == "exp(v)"
    assert "Poisson(exp(v))" in spikes.metadata["distribution"] and "sample_poisson" in spikes.metadata["sampler"]
    assert 1.0 - math.exp(-math.exp(POISSON_THRESHOLD)) == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(spikes.threshold, POISSON_THRESHOLD, rtol=1e-6)
    assert membrane.metadata["fond_node"] == "SoftClampedIntegrator"
    assert float(membrane.metadata["clamp"]) == 4.0 and float(membrane.metadata["floor"]) == model.family.floor
    np.testing.assert_array_equal(membrane.metadata["v_init"], model.u_init.detach().numpy())
    assert graph.metadata["format"] == "fond-nir" and int(graph.metadata["version"]) == 1


def simulate(graph, x: np.ndarray, fed: list[np.ndarray]) -> list[np.ndarray]:
    """The graph's dynamics in float64 numpy from its node parameters alone: step t integrates the drive and
    the recurrent current of the counts ``fed[t]`` (z₀, z₁, …) through the soft-clamped integrator."""
    drive, membrane, recurrent = graph.nodes["drive"], graph.nodes["membrane"], graph.nodes["recurrent"]
    c, floor = float(membrane.metadata["clamp"]), float(membrane.metadata["floor"])

    def soft(y):
        return c - np.logaddexp(0.0, c - np.maximum(y, floor))

    w, b = drive.weight.astype(np.float64), drive.bias.astype(np.float64)
    r, resistance = recurrent.weight.astype(np.float64), membrane.r.astype(np.float64)
    u = np.broadcast_to(membrane.metadata["v_init"].astype(np.float64), (x.shape[0], b.size))
    potentials = []
    for z in fed:
        current = x @ w.T + b + z @ r.T  # the two edges into the membrane, summed
        u = soft(u + resistance * soft(current))  # Euler step of dv/dt = R·I, dt = 1, then the clamps
        potentials.append(u)
    return potentials


def test_a_plain_numpy_simulator_of_the_graph_matches_fond(model, x, tmp_path):
    """Fed fond's spike counts, the graph's dynamics give fond's membrane potentials to float32 rounding;
    the recurrent edge matters (dropping it breaks the match), so the check can fail."""
    graph = nir.read(write_nir(model, tmp_path / "m.nir"))
    seed, steps = 5, 12
    result = model.infer(x, steps, seed=seed, record=range(1, steps + 1))
    u_init = torch.as_tensor(graph.nodes["membrane"].metadata["v_init"])
    z0 = sample_poisson(torch.exp(u_init.expand(x.shape[0], -1)), torch.Generator().manual_seed(seed))
    history = {k: np.asarray(result.history[k], dtype=np.float64) for k in ("rates", "spikes")}
    counts = [z0.numpy().astype(np.float64)] + [history["spikes"][t] for t in range(steps - 1)]
    simulated = simulate(graph, x.numpy().astype(np.float64), counts)
    fond_u = np.log(history["rates"])
    assert sum(float(np.sum(z)) for z in counts) > 0
    for t in range(steps):
        np.testing.assert_allclose(simulated[t], fond_u[t], atol=5e-5, err_msg=f"step {t + 1}")
    graph.nodes["recurrent"].weight = np.zeros_like(graph.nodes["recurrent"].weight)
    assert np.abs(simulate(graph, x.numpy().astype(np.float64), counts)[-1] - fond_u[-1]).max() > 1e-2


def test_models_that_are_no_spiking_graph_are_refused_in_one_line(tmp_path):
    """A Gaussian family has no spike generator, a nonlinear decoder no fixed recurrent matrix: one line each."""
    with pytest.raises(ConfigError, match="Poisson") as gaussian:
        write_nir(IGVAE(16, 8), tmp_path / "g.nir")
    with pytest.raises(ConfigError, match="linear decoder") as mlp:
        to_nir(IPVAE(16, 8, decoder="mlp", decoder_hidden=8))
    assert "\n" not in str(gaussian.value) and "\n" not in str(mlp.value)
    assert not (tmp_path / "g.nir").exists()


def test_damaged_foreign_or_edited_files_are_refused_in_one_line(model, tmp_path):
    """Garbage, a truncated file, a NIR graph fond did not write and an edited weight: one CheckpointError
    line each (an edited standard field would otherwise run a different network than the metadata's)."""
    good = write_nir(model, tmp_path / "m.nir").read_bytes()
    (tmp_path / "garbage.nir").write_bytes(b"not hdf5 at all")
    (tmp_path / "half.nir").write_bytes(good[: len(good) // 2])
    nir.write(tmp_path / "foreign.nir", nir.NIRGraph.from_list(nir.Linear(weight=np.ones((2, 3)))))
    edited = nir.read(tmp_path / "m.nir")
    edited.nodes["recurrent"].weight = edited.nodes["recurrent"].weight * 1.01
    cases = {"garbage.nir": "not a readable NIR file", "half.nir": "not a readable NIR file",
             "foreign.nir": "not a fond NIR export", "missing.nir": "no such file"}
    for name, needle in cases.items():
        with pytest.raises(CheckpointError, match=needle) as caught:
            read_nir(tmp_path / name)
        assert "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match="'recurrent' weight disagrees"):
        from_nir(edited)
    edited.metadata["version"] = 2
    with pytest.raises(CheckpointError, match="format version 2; this fond reads version 1"):
        from_nir(edited)


def test_cli_exports_a_pretrained_model_and_refuses_a_gaussian_one(tmp_path, capsys):
    """`fond export nir RUN OUT` writes a file the reader takes back; a Gaussian run is one error line, exit 2."""
    out = tmp_path / "natural16.nir"
    assert main(["export", "nir", "pretrained:ipvae-natural16", str(out)]) == 0
    assert read_nir(out).n_latents == 512 and "wrote" in capsys.readouterr().err
    IGVAE(16, 8).save(tmp_path / "gaussian")
    assert main(["export", "nir", str(tmp_path / "gaussian"), str(tmp_path / "g.nir")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fond: error:") and "Poisson" in lines[0]
