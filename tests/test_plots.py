"""Tests for fond.plots: every figure is a real PNG written atomically, and bad input fails loudly."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fond import plots
from fond.errors import DataError
from fond.plots import (
    _atom_order,
    plot_dictionary,
    plot_inference_curves,
    plot_reconstructions,
    plot_training_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert min(im.size) >= min_side
        extrema = im.convert("L").getextrema()
        assert extrema[0] < extrema[1], "image is a single flat colour"


def _assert_no_temp_files(directory: Path, expected: set[str]) -> None:
    assert {p.name for p in directory.iterdir()} == expected


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def trace(rng) -> dict[str, np.ndarray]:
    t = np.arange(1, 1001)
    return {
        "r2": 1 - np.exp(-t / 50) * 1.5,
        "r2_rates": 1 - np.exp(-t / 30),
        "zeros": 0.9 - 0.2 * np.exp(-t / 100),
        "du_norm": np.exp(-t / 100) + 1e-6,
        "nelbo": 100 + 50 * np.exp(-t / 80),
        "ignored_extra": rng.normal(size=7),
    }


# --------------------------------------------------------------------------- plot_dictionary


def test_dictionary_writes_png_into_new_dirs(tmp_path, rng):
    """A 16x16x512 dictionary renders to a loadable PNG, creating missing parent directories."""
    out = tmp_path / "a" / "b" / "dict.png"
    w = rng.normal(size=(256, 512))
    w[:, 10] = 0.0  # a dead atom must not break per-atom normalisation
    written = plot_dictionary(w, (16, 16), out, max_atoms=64)
    assert written == out and isinstance(written, Path)
    _assert_png(out)
    _assert_no_temp_files(out.parent, {"dict.png"})


def test_dictionary_accepts_torch_tensor_and_index_order(tmp_path):
    """Callers pass the model's Φ parameter directly; a grad-requiring tensor must be accepted."""
    torch = pytest.importorskip("torch")
    w = torch.randn(64, 10, requires_grad=True)
    out = plot_dictionary(w, (8, 8), tmp_path / "d.png", order="index", title="custom")
    _assert_png(out)


def test_dictionary_overwrites_existing_file(tmp_path, rng):
    """Re-plotting to the same path replaces the file in place and leaves no temporaries."""
    out = tmp_path / "dict.png"
    out.write_bytes(b"old")
    plot_dictionary(rng.normal(size=(16, 5)), (4, 4), out)
    _assert_png(out, min_side=100)
    _assert_no_temp_files(tmp_path, {"dict.png"})


def test_atom_order_norm_puts_largest_norm_first(rng):
    """order='norm' must show the strongest atoms first and dead (all-zero) atoms last."""
    w = rng.normal(size=(16, 6))
    w[:, 4] *= 100.0
    w[:, 1] = 0.0
    idx = _atom_order(w, "norm")
    assert idx[0] == 4
    assert idx[-1] == 1
    norms = np.linalg.norm(w, axis=0)[idx]
    assert np.all(np.diff(norms) <= 0)
    assert list(_atom_order(w, "index")) == list(range(6))


@pytest.mark.parametrize(
    ("weights", "patch_shape", "match"),
    [
        (np.zeros((255, 4)), (16, 16), "D=255"),
        (np.zeros(256), (16, 16), "2-D"),
        (np.full((16, 3), np.nan), (4, 4), "non-finite"),
        (np.array([[1.0, np.inf]] * 4), (2, 2), "non-finite"),
    ],
    ids=["wrong-D", "1-D", "nan", "inf"],
)
def test_dictionary_rejects_bad_weights(tmp_path, weights, patch_shape, match):
    """Wrong D, wrong rank or non-finite weights would give a misleading picture, so they must raise."""
    out = tmp_path / "bad.png"
    with pytest.raises(ValueError, match=match):
        plot_dictionary(weights, patch_shape, out)
    assert not out.exists()


def test_dictionary_rejects_unknown_order(tmp_path, rng):
    """A typo in `order` must raise rather than silently fall back to some ordering."""
    with pytest.raises(ValueError, match="order"):
        plot_dictionary(rng.normal(size=(4, 3)), (2, 2), tmp_path / "x.png", order="size")


def test_failed_save_leaves_no_temp_file(tmp_path, rng, monkeypatch):
    """If rendering fails mid-write, neither a partial PNG nor a temporary file may remain."""

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_dictionary(rng.normal(size=(4, 3)), (2, 2), tmp_path / "x.png")
    _assert_no_temp_files(tmp_path, set())


# --------------------------------------------------------------------------- plot_inference_curves


def test_inference_curves_writes_png(tmp_path, trace):
    """The full per-step trace (T=1000) renders with a convergence marker; unknown keys are ignored."""
    out = tmp_path / "new" / "curves.png"
    assert plot_inference_curves(trace, out, title="iP-VAE", convergence_step=300) == out
    _assert_png(out)
    _assert_no_temp_files(out.parent, {"curves.png"})
    with Image.open(out) as im:
        assert im.size[0] > 2 * im.size[1], "expected one row of four panels"


def test_inference_curves_partial_trace_with_zero_du(tmp_path):
    """A trace with only some keys, du_norm hitting exactly 0 and very negative R² still plots."""
    trace = {"r2": np.linspace(-50.0, 0.9, 20), "du_norm": np.r_[np.ones(10), np.zeros(10)]}
    _assert_png(plot_inference_curves(trace, tmp_path / "c.png"))


def test_inference_curves_rejects_mismatched_lengths(tmp_path, trace):
    """Curves of different lengths mean steps are misaligned, so plotting them together must raise."""
    trace["zeros"] = trace["zeros"][:-1]
    with pytest.raises(ValueError, match="different lengths"):
        plot_inference_curves(trace, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_inference_curves_rejects_no_known_key(tmp_path):
    """A trace without any recognised key would produce an empty figure, so it must raise."""
    with pytest.raises(ValueError, match="none of the keys"):
        plot_inference_curves({"loss": np.ones(5)}, tmp_path / "c.png")


# --------------------------------------------------------------------------- plot_reconstructions


def test_reconstructions_writes_png(tmp_path, rng):
    """Inputs above spike- and rate-based reconstructions render to one PNG in a new directory."""
    x = rng.normal(size=(20, 64))
    recs = {"spikes": x + rng.normal(scale=0.5, size=x.shape), "rates": 0.8 * x}
    out = tmp_path / "r" / "recon.png"
    assert plot_reconstructions(x, recs, (8, 8), out, n=6) == out
    _assert_png(out)
    _assert_no_temp_files(out.parent, {"recon.png"})


def test_reconstructions_rejects_bad_shapes(tmp_path, rng):
    """Reconstructions must match the inputs and patch shape, or columns would pair the wrong patches."""
    x = rng.normal(size=(5, 16))
    with pytest.raises(ValueError, match="D=16"):
        plot_reconstructions(x, {"s": x}, (3, 3), tmp_path / "r.png")
    with pytest.raises(ValueError, match="expected"):
        plot_reconstructions(x, {"s": x[:4]}, (4, 4), tmp_path / "r.png")


# --------------------------------------------------------------------------- plot_training_curves


def test_training_curves_writes_png_skipping_nonfinite(tmp_path):
    """Log rows with NaN/inf, missing keys and non-numeric values are skipped point-wise, not fatal."""
    records = [
        {"step": s, "loss": 100 / (s + 1), "nll": 80 / (s + 1), "kl": 20.0, "beta": min(1.0, s / 50),
         "temperature": max(0.1, 1 - s / 100), "lr": 1e-3}
        for s in range(0, 200, 10)
    ]
    records[3]["loss"] = math.nan
    records[4]["kl"] = math.inf
    records[5]["temperature"] = "n/a"
    records.append({"step": 200, "event": "eval"})
    out = tmp_path / "t" / "train.png"
    assert plot_training_curves(records, out) == out
    _assert_png(out)
    _assert_no_temp_files(out.parent, {"train.png"})


def test_training_curves_rejects_empty(tmp_path):
    """An empty log means training wrote nothing; an empty plot would hide that, so it must raise."""
    with pytest.raises(ValueError, match="non-empty"):
        plot_training_curves([], tmp_path / "t.png")
    assert not tmp_path.joinpath("t.png").exists()


def test_training_curves_rejects_rows_without_step(tmp_path):
    """Rows without a step cannot be placed on the x axis, so they must raise with a clear message."""
    with pytest.raises(ValueError, match="step"):
        plot_training_curves([{"loss": 1.0}], tmp_path / "t.png")


def test_plotting_never_touches_pyplot(tmp_path):
    """Plots are made from library code and workers; pyplot's global figure state must stay unloaded."""
    code = (
        "import sys, numpy as np\n"
        "from fond.plots import plot_dictionary\n"
        f"plot_dictionary(np.eye(4), (2, 2), {str(tmp_path / 'p.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    _assert_png(tmp_path / "p.png", min_side=100)


def test_colour_atoms_tile_channels_last(tmp_path):
    """A colour atom is shown as the RGB image its (h, w, c) row encodes: a pure red atom tiles red."""
    from fond.plots import _dictionary_mosaic

    atoms = np.zeros((4 * 4 * 3, 2))
    atoms[0::3, 0] = 1.0  # channel 0 (red) of every pixel of atom 0
    atoms[2::3, 1] = -1.0  # negative blue in atom 1
    mosaic, nrows, ncols = _dictionary_mosaic(atoms, (4, 4, 3))
    assert mosaic.shape == (4, 9, 3) and (nrows, ncols) == (1, 2)
    np.testing.assert_allclose(mosaic[0, 0], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(mosaic[0, 5], [0.5, 0.5, 0.0])
    assert plots.plot_dictionary(atoms, (4, 4, 3), tmp_path / "c.png").is_file()
    x = np.random.default_rng(0).standard_normal((3, 48))
    assert plots.plot_reconstructions(x, {"r": x / 2}, (4, 4, 3), tmp_path / "r.png").is_file()
    with pytest.raises(DataError, match="needs D=48"):
        plots.plot_dictionary(atoms[:40], (4, 4, 3), tmp_path / "bad.png")


def test_convergence_of_several_models_writes_one_png(tmp_path, trace):
    """One line per model on three panels; the title names the evaluation length (not an array)."""
    short = {key: value[:100] for key, value in trace.items()}
    out = plots.plot_convergence({"a": trace, "b": short}, tmp_path / "conv.png", t_train=16, steps=1000)
    _assert_png(out)
    _assert_no_temp_files(tmp_path, {"conv.png"})


def test_spike_raster_marks_the_most_active_neurons(tmp_path, rng):
    """Counts (steps, K) give a PNG; anything but a 2-D array is refused in one line."""
    spikes = rng.poisson(0.3, size=(50, 80)).astype(np.float32)
    _assert_png(plots.plot_spike_raster(spikes, tmp_path / "raster.png", n_neurons=16))
    with pytest.raises(DataError, match="spikes must be a 2-D"):
        plots.plot_spike_raster(spikes[0], tmp_path / "bad.png")
