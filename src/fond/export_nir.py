"""NIR export: an iP-VAE's inference dynamics as a Neuromorphic Intermediate Representation graph, and back.

``write_nir(model, path)`` writes a ``.nir`` file (HDF5, the ``nir`` package's format) that holds the iterative
Poisson VAE's evaluation rollout — the loop ``fond.engine.PoissonLinearEngine`` runs — as NIR nodes;
``read_nir(path)`` rebuilds the fond model from that file alone, and its ``infer`` reproduces the original's
rollout bit for bit with the same seed (same parameters, same code, same draws). ``to_nir`` / ``from_nir`` do
the same without a file. Only an iP-VAE (Poisson family, ``IterativeVAE``) with the linear decoder can be
exported: a Gaussian or Bernoulli family has no spike-count generator, and a nonlinear decoder has no fixed
recurrent matrix (its explaining-away term J_g(z)ᵀ(x − g(z)) changes with z), so neither is a NIR graph of
these nodes; both are refused with one ``ConfigError`` line.

The graph (K neurons, D inputs; one NIR time step = one inference step; NIR edges are identities and the
inputs a node receives over several edges are summed)::

    input (Input, D) ─► drive (Affine) ─► membrane (I) ─► spikes (Threshold + fond metadata) ─► spikes_out (Output, K)
                                             ▲                   │
                                             └── recurrent (Linear) ◄─┤
                                                                 └─► decoder (Linear) ─► reconstruction (Output, D)

* ``drive``: Affine, weight η·Φᵀ·diag(σ_x⁻²) (K, D), bias −η·b (K,): the feed-forward current
  η(Φᵀx/σ² − b) (nats per step). Its metadata holds the raw ``log_sigma_x`` (D,), ``log_bias`` (K,) and
  ``sigma_clamp`` it was made from (σ_x = exp(c·tanh(log_sigma_x / c)), b = exp(log_bias)).
* ``recurrent``: Linear, weight −η·ΦᵀΣ⁻¹Φ (K, K): the explaining-away current from the previous step's
  spike counts (the loop membrane → spikes → recurrent → membrane carries one step of delay).
* ``membrane``: I (integrator, dv/dt = R·I) with r = 1 (K,) in the Euler step dt = 1, but with fond's soft
  clamps, which NIR's I lacks (metadata ``fond_node = "SoftClampedIntegrator"``): with I the summed input,
  c = ``clamp`` and ``floor``, ``soft(y) = c − softplus(c − max(y, floor))``, one step is
  ``v ← soft(v + soft(I))``. ``v_init`` (K,) are the learned initial potentials (nats); ``log_step_size``
  (1,) is log η, already folded into ``drive`` and ``recurrent``.
* ``spikes``: the Poisson spike generator, a node NIR does not have yet. It is stored as the closest
  documented primitive, a ``Threshold``, whose metadata (``fond_node = "PoissonSpikeGenerator"``) says what
  it is: each step z ~ Poisson(exp(v)) per neuron, an integer count 0, 1, 2, ... (several spikes per step).
  A reader that ignores the metadata sees a Heaviside at v = log(log 2) ≈ −0.367: one spike exactly where
  the Poisson draw gives at least one with probability above ½ (``POISSON_THRESHOLD``) — a deterministic
  stand-in, not the model.
* ``decoder``: Linear, weight Φ (D, K): the reconstruction x̂ = Φz of the spike counts.

The graph's own metadata holds the format name and version, the fond ``ModelConfig`` (JSON), the
preprocessing record (JSON, "" for none) and the sampler's identity and seeding: the initial counts
z₀ ~ Poisson(exp(v_init)) and then one draw per step, all from ``fond.families.sampling.sample_poisson``'s
counter-based stream keyed from ``torch.Generator().manual_seed(seed)``. ``from_nir`` checks the structure,
rebuilds the model from the raw tensors (``decoder`` weight and the metadata above) and refuses a file whose
standard parameters no longer match them (edited after export). See docs/hardware.md, "NIR export".
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fond.errors import CheckpointError, ConfigError, FondError

__all__ = ["FORMAT", "FORMAT_VERSION", "POISSON_THRESHOLD", "NODE_TYPES", "EDGES", "check_exportable",
           "standard_parameters", "to_nir", "from_nir", "write_nir", "read_nir", "read_graph"]

FORMAT = "fond-nir"
FORMAT_VERSION = 1
#: where a Heaviside stands in for the Poisson generator: P(Poisson(e^v) ≥ 1) > ½ ⇔ v > log(log 2)
POISSON_THRESHOLD = math.log(math.log(2.0))
#: the node names and their NIR types
NODE_TYPES = {"input": "Input", "drive": "Affine", "membrane": "I", "spikes": "Threshold", "recurrent": "Linear",
              "decoder": "Linear", "spikes_out": "Output", "reconstruction": "Output"}
#: the edges (identity maps; inputs arriving at one node are summed)
EDGES = (("input", "drive"), ("drive", "membrane"), ("membrane", "spikes"), ("spikes", "recurrent"),
         ("recurrent", "membrane"), ("spikes", "decoder"), ("decoder", "reconstruction"), ("spikes", "spikes_out"))

SOFT_CLAMP = "soft(y) = c - softplus(c - max(y, floor)); v <- soft(v + soft(I)), I = the summed input current"
POISSON_MEANING = ("z ~ Poisson(exp(v)) independently per neuron and step: integer spike counts 0, 1, 2, ... "
                   "(rate exp(v) spikes per step); the Threshold fields are a deterministic stand-in only")
SAMPLER = ("fond.families.sampling.sample_poisson: inverse CDF of one 53-bit uniform per element (PTRS for large "
           "rates), uniforms from a counter-based stream keyed by 126 bits drawn from torch.Generator().manual_seed"
           "(seed); z0 ~ Poisson(exp(v_init)) first, then one draw per step after the membrane update")


def check_exportable(model) -> None:
    """Refuse (one ``ConfigError`` line, saying why) a model that is not an iP-VAE with a linear decoder."""
    from fond.decoders import LinearDecoder
    from fond.families.poisson import PoissonFamily
    from fond.models.iterative import IterativeVAE

    name = getattr(getattr(model, "config", None), "model", type(model).__name__)
    if not isinstance(model, IterativeVAE) or not isinstance(model.family, PoissonFamily):
        raise ConfigError(f"NIR export needs an iP-VAE (Poisson spike counts driven by FOND dynamics); {name!r} "
                          "has no Poisson spike generator to export")
    if not isinstance(model.decoder, LinearDecoder):
        raise ConfigError(f"NIR export needs the linear decoder: {name!r} has a {model.config.decoder} decoder, "
                          "whose explaining-away term J_g(z)ᵀ(x − g(z)) is no fixed recurrent matrix")


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


def standard_parameters(model) -> dict[str, np.ndarray]:
    """The NIR nodes' standard fields computed from the model (model dtype): drive weight (K, D) and bias (K,),
    recurrent weight (K, K), decoder weight Φ (D, K)."""
    from fond.decoders import precision_gram

    parts = model.components()
    with torch.no_grad():
        step = torch.exp(parts.family_params["log_step_size"]).reshape(())
        phi = model.decoder.dictionary
        weighted, gram = precision_gram(phi, parts.inv_variance)
        return {"drive.weight": _array(step * weighted.T), "drive.bias": _array(-step * parts.bias),
                "recurrent.weight": _array(-step * gram.T), "decoder.weight": _array(phi)}


def _graph_metadata(model) -> dict[str, Any]:
    record = getattr(model, "preprocessing", None)
    return {"format": FORMAT, "version": FORMAT_VERSION, "model_config": json.dumps(asdict(model.config)),
            "preprocessing": "" if record is None else json.dumps(record.to_dict()),
            "time_step": "one NIR time step = one FOND inference step (dt = 1)",
            "edges": "identity maps; the currents arriving at a node over several edges are summed",
            "recurrent_delay": "recurrent carries the previous step's spike counts (one step of delay)",
            "sampler": SAMPLER}


def _nodes(model, params: dict[str, np.ndarray]) -> dict[str, Any]:
    import nir

    state = model.state_dict()
    family = model.family
    k, d = model.n_latents, model.n_inputs
    dtype = params["drive.weight"].dtype
    membrane_meta = {"fond_node": "SoftClampedIntegrator", "update": SOFT_CLAMP, "clamp": float(family.clamp(1.0)),
                     "floor": float(family.floor), "v_init": _array(state["u_init"]),
                     "log_step_size": _array(state["log_step_size"]), "units": "nats"}
    spike_meta = {"fond_node": "PoissonSpikeGenerator", "distribution": POISSON_MEANING, "rate": "exp(v)",
                  "multi_spike": "yes", "sampler": SAMPLER}
    drive_meta = {"log_sigma_x": _array(state["log_sigma_x"]), "log_bias": _array(state["log_bias"]),
                  "sigma_clamp": float(model.config.sigma_clamp)}
    return {
        "input": nir.Input(input_type={"input": np.array([d])}),
        "drive": nir.Affine(weight=params["drive.weight"], bias=params["drive.bias"], metadata=drive_meta),
        "membrane": nir.I(r=np.ones(k, dtype=dtype), metadata=membrane_meta),
        "spikes": nir.Threshold(threshold=np.full(k, POISSON_THRESHOLD, dtype=dtype), metadata=spike_meta),
        "recurrent": nir.Linear(weight=params["recurrent.weight"]),
        "decoder": nir.Linear(weight=params["decoder.weight"]),
        "spikes_out": nir.Output(output_type={"output": np.array([k])}),
        "reconstruction": nir.Output(output_type={"output": np.array([d])}),
    }


def to_nir(model):
    """The model's inference dynamics as a ``nir.NIRGraph`` (layout: the module docstring)."""
    import nir

    check_exportable(model)
    nodes = _nodes(model, standard_parameters(model))
    return nir.NIRGraph(nodes=nodes, edges=[tuple(e) for e in EDGES], metadata=_graph_metadata(model))


def write_nir(model, path: str | os.PathLike[str]) -> Path:
    """Write ``to_nir(model)`` to ``path`` (HDF5, gzip) atomically (``fond.run.atomic_write``); returns the path."""
    import nir

    from fond.run import atomic_write

    graph = to_nir(model)
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    return atomic_write(path, buffer.getvalue())


def read_graph(path: str | os.PathLike[str]):
    """The ``nir.NIRGraph`` in ``path``; one ``CheckpointError`` line for a missing, damaged or foreign file."""
    import nir

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return nir.read(path)
    except Exception as exc:  # h5py (OSError, KeyError) and nir (ValueError, AssertionError) both fail here
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable NIR file ({reason})") from None


def read_nir(path: str | os.PathLike[str]):
    """The fond model a ``write_nir`` file holds (an ``IPVAE``; its ``infer`` reproduces the exported model's)."""
    return from_nir(read_graph(path), source=str(path))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_structure(graph, source: str) -> None:
    """The graph is a fond export of this format: node names and types, edges (one-line ``CheckpointError``)."""
    meta = getattr(graph, "metadata", None) or {}
    if _text(meta.get("format", "")) != FORMAT:
        raise CheckpointError(f"{source}: not a fond NIR export (graph metadata has no format '{FORMAT}')")
    if _text(meta.get("version", "")) != str(FORMAT_VERSION):
        raise CheckpointError(f"{source}: fond NIR format version {_text(meta.get('version', '?'))}; this fond reads "
                              f"version {FORMAT_VERSION}")
    types = {name: type(node).__name__ for name, node in graph.nodes.items()}
    for name, kind in NODE_TYPES.items():
        if types.get(name) != kind:
            raise CheckpointError(f"{source}: node '{name}' should be a NIR {kind}, found {types.get(name)}")
    if sorted(map(tuple, graph.edges)) != sorted(EDGES):
        raise CheckpointError(f"{source}: the graph's edges are not those of a fond iP-VAE export")
    for node, key in (("spikes", "fond_node"), ("membrane", "fond_node")):
        if key not in graph.nodes[node].metadata:
            raise CheckpointError(f"{source}: node '{node}' lost its fond metadata ({key})")


def _tensors(graph, source: str) -> dict[str, torch.Tensor]:
    """The model's state dict from the graph: the decoder weight and the raw tensors of the metadata."""
    nodes = graph.nodes
    try:
        arrays = {"log_sigma_x": nodes["drive"].metadata["log_sigma_x"],
                  "log_bias": nodes["drive"].metadata["log_bias"],
                  "log_step_size": nodes["membrane"].metadata["log_step_size"],
                  "u_init": nodes["membrane"].metadata["v_init"], "decoder.dictionary": nodes["decoder"].weight}
    except KeyError as exc:
        raise CheckpointError(f"{source}: fond metadata {exc.args[0]!r} missing") from None
    return {name: torch.from_numpy(np.array(value)) for name, value in arrays.items()}


def _build(graph, source: str):
    from fond.config import ModelConfig, config_from_dict
    from fond.models import build_model

    meta = graph.metadata
    try:
        config = config_from_dict(ModelConfig, json.loads(_text(meta.get("model_config", ""))), source=source)
    except (ValueError, ConfigError) as exc:
        raise CheckpointError(f"{source}: bad model_config metadata ({str(exc).splitlines()[0]})") from None
    model = build_model(config)
    check_exportable(model)
    record = _text(meta.get("preprocessing", ""))
    if record:
        from fond.data.preprocessing import Preprocessing

        try:
            model.preprocessing = Preprocessing.from_dict(json.loads(record))
        except (ValueError, FondError) as exc:
            raise CheckpointError(f"{source}: bad preprocessing metadata ({str(exc).splitlines()[0]})") from None
    return model


def _check_consistent(graph, model, source: str) -> None:
    """The file's standard fields equal (to float rounding) those the rebuilt model gives: nothing was edited."""
    expected = standard_parameters(model)
    for key, value in expected.items():
        node, field = key.split(".")
        got = np.asarray(getattr(graph.nodes[node], field))
        scale = float(np.abs(value).max()) if value.size else 0.0
        if got.shape != value.shape or not np.allclose(got, value, rtol=1e-5, atol=1e-6 * scale):
            raise CheckpointError(f"{source}: node '{node}' {field} disagrees with the fond parameters it was "
                                  "exported from (edited after export?)")
    family = model.family
    meta = graph.nodes["membrane"].metadata
    if float(meta.get("clamp", math.nan)) != family.clamp(1.0) or float(meta.get("floor", math.nan)) != family.floor:
        raise CheckpointError(f"{source}: node 'membrane' clamp/floor disagree with the model configuration")


def from_nir(graph, source: str = "NIR graph"):
    """The fond ``IPVAE`` a ``to_nir`` graph holds; one-line ``CheckpointError`` for any other graph."""
    from fond.checkpoint import check_tensors

    _check_structure(graph, source)
    model = _build(graph, source)
    tensors = _tensors(graph, source)
    check_tensors(source, tensors, model.state_dict())
    with torch.no_grad():
        model.load_state_dict(tensors)
    _check_consistent(graph, model, source)
    return model
