"""Property-based checks of the public API: random shapes, dtypes and values find nothing but clear errors.

For every input hypothesis draws (0–3 dimensions with sizes including 0 and a mismatched D; float16/32/64,
integer, bool and complex dtypes; NaN, ±Inf, huge, tiny and ordinary values; tensors, arrays and lists), each
entry point either raises a ``FondError`` with a one-line message, or returns a result whose numbers are all
finite: no other exception and no silent NaN. Derandomized, so CI sees the same examples every run.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fond
from fond.config import ModelConfig, TrainConfig, config_from_dict
from fond.data import extract_patches, load_data, whiten
from fond.errors import ConfigError, FondError
from fond.evaluate import evaluate
from fond.models.amortized import AmortizedVAE
from fond.models.hybrid import SemiAmortizedVAE
from fond.models.sparse_coding import ISTA, LCA

D, K, STEPS = 6, 4, 2

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

DTYPES = (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_, np.complex64)
#: floating dtypes weighted up, so that the checks behind the dtype check are reached too
INPUT_DTYPES = (*DTYPES, np.float32, np.float32, np.float64, np.float64, np.float16)
SPECIAL = (math.nan, math.inf, -math.inf, 1e300, -1e300, 1e30, -1e30, 1e10, 4e9, 1e5, 1e-300, 5e-324, 1e-40,
           0.0, -0.0)


@st.composite
def arrays(draw, sizes=(0, 1, 2, 3, D - 1, D, D + 1), max_dims: int = 3, likely: tuple[tuple[int, ...], ...] = (),
           dtypes: tuple = INPUT_DTYPES):
    """A numpy array of a random shape, dtype and values (specials sprinkled over ordinary numbers).

    likely: shapes drawn three times in four (the right ones for the entry point), so that hypothesis also reaches
    the checks on values and dtypes behind the shape check, and successful calls.
    """
    if likely and draw(st.integers(0, 3)):  # three times in four
        shape = draw(st.sampled_from(likely))
    else:
        ndim = draw(st.integers(0, max_dims))
        shape = tuple(draw(st.sampled_from(sizes)) for _ in range(ndim))
    dtype = draw(st.sampled_from(dtypes))
    scale = draw(st.sampled_from((1.0, 1e-3, 1e3, 1e8)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = rng.standard_normal(shape) * scale
    if values.size and draw(st.booleans()):
        specials = draw(st.lists(st.sampled_from(SPECIAL), min_size=1, max_size=3))
        flat = values.reshape(-1)
        for value in specials:
            flat[rng.integers(flat.size)] = value
    with np.errstate(all="ignore"):
        return values.astype(dtype)


@st.composite
def model_inputs(draw, likely=((1, D), (3, D), (STEPS, 2, D))):
    """What a user might pass as x: a tensor, an array, a nested list, or something that is not numbers at all."""
    kind = draw(st.sampled_from(("tensor", "tensor", "array", "list", "junk")))
    if kind == "junk":
        return draw(st.sampled_from((None, "x", [["a"] * D], [[1.0] * D, [1.0]], {"x": 1}, object(),
                                     np.array([[None] * D], dtype=object), np.array([["1"] * D]))))
    array = draw(arrays(likely=likely))
    if kind == "array":
        return array
    if kind == "list":
        return array.tolist()
    return torch.from_numpy(np.ascontiguousarray(array))


def assert_clear_error(exc: BaseException) -> None:
    """A FondError with a non-empty message on one line."""
    assert isinstance(exc, FondError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message.strip() and "\n" not in message, repr(message)


def assert_finite(value, where: str = "result") -> None:
    """Every tensor and float array inside ``value`` (a result, dict, tuple or array) is finite."""
    if isinstance(value, torch.Tensor):
        assert torch.isfinite(value).all(), where
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "fc":
            assert np.isfinite(value).all(), where
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_finite(item, f"{where}[{key!r}]")
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            assert_finite(item, f"{where}[{i}]")
    elif isinstance(value, float):
        assert math.isfinite(value), where
    elif dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            assert_finite(getattr(value, field.name), f"{where}.{field.name}")


def clear_error_or_finite(call):
    """Run ``call``: a FondError must be clear, anything returned must be finite; returns the result or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except Exception as exc:  # noqa: BLE001  (the property: nothing but FondError)
        assert_clear_error(exc)
        return None
    assert_finite(result)
    return result


MODELS = {
    "ipvae": lambda: fond.IPVAE(D, K, seed=0, init_scale=0.3),
    "igvae": lambda: fond.IGVAE(D, K, seed=0, init_scale=0.3),
    "igvae-relu": lambda: fond.IGVAE(D, K, activation="relu", seed=0, init_scale=0.3),
    "lca": lambda: LCA(D, K, seed=0),
    "ista": lambda: ISTA(D, K, seed=0),
    "pvae": lambda: AmortizedVAE(D, K, model="pvae", encoder="linear", seed=0),
    "savae": lambda: SemiAmortizedVAE(D, K, encoder="linear", seed=0),
}
_built: dict[str, torch.nn.Module] = {}


def model(name: str):
    if name not in _built:
        _built[name] = MODELS[name]()
    return _built[name]


@pytest.mark.parametrize("name", list(MODELS))
@SETTINGS
@given(x=model_inputs())
def test_infer_gives_a_clear_error_or_a_finite_result(name, x):
    """model.infer on anything: a one-line FondError, or rates, spikes, states, reconstructions and trace all finite."""
    result = clear_error_or_finite(lambda: model(name).infer(x, STEPS, seed=0, record=[STEPS]))
    if result is not None:
        assert result.rates.shape[-1] == K and result.reconstruction.shape[-1] == D


@pytest.mark.parametrize("name", list(MODELS))
@SETTINGS
@given(x=hnp.arrays(st.sampled_from((np.float32, np.float64)), st.tuples(st.integers(1, 3), st.just(D)),
                    elements=st.floats(-4e9, 4e9, width=32)))
def test_any_finite_input_in_range_gives_finite_codes(name, x):
    """Inputs the models accept (finite, |x| ≤ 4e9, tiny and subnormal values included) always give finite results."""
    result = model(name).infer(torch.from_numpy(x), STEPS, seed=0)
    assert_finite(result)


@SETTINGS
@given(x=model_inputs(likely=((1, D), (3, D))), clamp_fraction=st.sampled_from((1.0, 0.5, 0.0, -0.1, 2.0, math.nan)))
def test_encode_gives_a_clear_error_or_a_finite_posterior(x, clamp_fraction):
    """An amortized model's encode on anything: a one-line FondError or a finite posterior state."""
    clear_error_or_finite(lambda: model("pvae").encode(x, clamp_fraction))


@pytest.mark.parametrize("name", ["ipvae", "igvae", "lca"])
@SETTINGS
@given(x=model_inputs(likely=((1, D), (3, D))), beta=st.sampled_from((1.0, 0.0, 24.0, -1.0, math.nan, math.inf, "1")),
       temperature=st.sampled_from((0.5, 1.0, 0.01, 0.0, -1.0, math.nan)))
def test_unroll_loss_gives_a_clear_error_or_a_finite_loss(name, x, beta, temperature):
    """The training objective on anything: a one-line FondError or a finite loss and finite traces."""
    clear_error_or_finite(lambda: model(name).unroll_loss(x, STEPS, beta=beta, temperature=temperature))


@SETTINGS
@given(x=model_inputs(likely=((1, D), (5, D))), steps=st.sampled_from((1, 2, 3, 2, 0, -1, 2.5, "3", None)),
       chunk_size=st.sampled_from((1, 2, 1000, 2, 1000, 0, -3, 1.5, "a")))
def test_evaluate_gives_a_clear_error_or_finite_numbers(x, steps, chunk_size):
    """fond.evaluate.evaluate on anything: a one-line FondError or a summary whose numbers are all finite."""
    result = clear_error_or_finite(lambda: evaluate(model("igvae"), x, steps, chunk_size=chunk_size))
    if result is not None:
        assert result.steps == steps and result.n_samples >= 1


# ----------------------------------------------------------------------------------------------------------- configs

ANY_VALUE = st.one_of(
    st.integers(-3, 3), st.sampled_from((0, -1, 10**30, 2**63)), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.sampled_from(("ipvae", "igvae", "lca", "laplace", "linear", "mlp", "conv", "quick")),
    st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def config_dicts(cls):
    """Dicts over the class's own keys (and a few strangers) with values of every JSON type and then some."""
    keys = [f.name for f in dataclasses.fields(cls)] + ["stepz", "family", "", "β"]
    return st.dictionaries(st.sampled_from(keys), ANY_VALUE, max_size=6)


@st.composite
def model_config_dicts(draw):
    data = draw(config_dicts(ModelConfig))
    if draw(st.booleans()):  # mostly-valid sizes, so the deeper checks (family, method options) are reached
        data.setdefault("n_inputs", 16)
        data.setdefault("n_latents", 8)
    if draw(st.booleans()):
        data["model"] = draw(st.sampled_from(("ipvae", "igvae-relu", "ibvae", "pvae", "savae", "lca", "pc")))
    if draw(st.booleans()):
        data["family_options"] = draw(st.dictionaries(
            st.sampled_from(("clamp_final", "indicator", "kl_form", "nonlinearity", "mu_clamp", "floor", "x")),
            ANY_VALUE, max_size=3))
    if draw(st.booleans()):
        data["method_options"] = draw(st.dictionaries(
            st.sampled_from(("sparsity", "step_size", "refine_steps", "prior_variance", "y")), ANY_VALUE,
            max_size=3))
    return data


@SETTINGS
@given(data=config_dicts(TrainConfig))
def test_train_config_from_any_dict_is_valid_or_names_a_key(data):
    """config_from_dict(TrainConfig, ·): a ConfigError naming a key, or a config that round-trips."""
    try:
        cfg = config_from_dict(TrainConfig, data, source="random.json")
    except Exception as exc:  # noqa: BLE001
        assert_clear_error(exc)
        assert isinstance(exc, ConfigError) and "'" in str(exc), str(exc)
        return
    assert config_from_dict(TrainConfig, dataclasses.asdict(cfg)) == cfg
    assert cfg.steps >= 1 and cfg.beta >= 0 and math.isfinite(cfg.beta)


@SETTINGS
@given(data=model_config_dicts())
def test_model_config_from_any_dict_is_valid_or_names_a_key(data):
    """config_from_dict(ModelConfig, ·): a ConfigError naming a key, or a config that round-trips."""
    try:
        cfg = config_from_dict(ModelConfig, data, source="random.json")
    except Exception as exc:  # noqa: BLE001
        assert_clear_error(exc)
        assert isinstance(exc, ConfigError) and "'" in str(exc), str(exc)
        return
    assert config_from_dict(ModelConfig, dataclasses.asdict(cfg)) == cfg
    assert cfg.n_inputs >= 1 and cfg.n_latents >= 1


# ------------------------------------------------------------------------------------------------------ data helpers

IMAGE_SIZES = (0, 1, 3, 8, 9, 20)
IMAGE_SHAPES = ((9, 20), (20, 20), (8, 8))


@SETTINGS
@given(image=arrays(sizes=IMAGE_SIZES, likely=IMAGE_SHAPES), f0=st.sampled_from((0.4, 0.1, 0.0, -1.0, math.nan)))
def test_whiten_gives_a_clear_error_or_a_finite_unit_image(image, f0):
    """whiten on any array: a one-line DataError, or a finite float32 image of the same shape with std 1."""
    out = clear_error_or_finite(lambda: whiten(image, f0=f0))
    if out is not None:
        assert out.shape == image.shape and out.dtype == np.float32
        assert abs(float(out.std()) - 1.0) < 1e-3


@SETTINGS
@given(images=st.lists(arrays(sizes=IMAGE_SIZES, likely=IMAGE_SHAPES), max_size=3) | arrays(sizes=IMAGE_SIZES),
       size=st.sampled_from((2, 3, 8, 0, -1, 2.5)), n=st.sampled_from((1, 5, 0, -2)),
       min_std=st.sampled_from((0.0, 0.1, -1.0, math.nan)))
def test_extract_patches_gives_a_clear_error_or_finite_patches(images, size, n, min_std):
    """extract_patches on any images: a one-line DataError, or n finite float32 rows of size² values."""
    patches = clear_error_or_finite(lambda: extract_patches(images, size, n, 0, min_std=min_std))
    if patches is not None:
        assert patches.shape == (n, size * size) and patches.dtype == np.float32


@SETTINGS
@given(array=arrays(sizes=(0, 1, 2, 3, 12), likely=((12, 4), (30, 2))), junk=st.none() | st.binary(max_size=64))
def test_npy_data_file_gives_a_clear_error_or_finite_patches(array, junk):
    """load_data on a .npy file of any array (or of random bytes): a one-line DataError or finite float32 splits."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npy"
        if junk is None:
            np.save(path, array)
        else:
            path.write_bytes(junk)
        data = clear_error_or_finite(lambda: load_data(str(path), n_train=20, n_val=5))
    if data is not None:
        assert data.train.dtype == np.float32 and data.train.shape[1] == data.val.shape[1] >= 1
