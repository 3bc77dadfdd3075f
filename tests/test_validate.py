"""Tests of fond.validate: each shared check accepts what it documents, refuses the rest with one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fond.errors import ConfigError, DataError
from fond.validate import finite_float, float_array, integer, patch_dims, positive_int, require


def test_require_names_the_config_key():
    require(True, "beta", "unused")
    with pytest.raises(ConfigError, match=r"^config key 'beta': must be ≥ 0$"):
        require(False, "beta", "must be ≥ 0")


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(2), np.array(4)])
def test_positive_int_accepts_integers_of_any_kind(value):
    out = positive_int(value, "n")
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value, needle", [
    (0, "n must be an integer ≥ 1, got 0"), (-3, "≥ 1"), (True, "must be an integer, got True"),
    (2.0, "got 2.0"), ("3", "got '3'"), (None, "got None"),
])
def test_positive_int_refuses_the_rest_naming_the_value(value, needle):
    with pytest.raises(ConfigError) as exc:
        positive_int(value, "n")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_integer_minimum_and_error_class():
    assert integer(0, "seed", minimum=0) == 0
    assert integer(-5, "offset") == -5
    with pytest.raises(DataError, match="seed must be an integer ≥ 0, got -1"):
        integer(-1, "seed", minimum=0, error=DataError)


@pytest.mark.parametrize("value", [1.5, 2, np.float32(0.25), np.int64(-4), -0.0])
def test_finite_float_accepts_real_numbers(value):
    out = finite_float(value, "x")
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value, needle", [
    ("1.5", "x must be a real number, got '1.5'"),  # text is parsed by the CLI, never by the library
    (True, "real number"), (None, "real number"), ([1.0], "real number"), (1 + 2j, "real number"),
    (math.nan, "x is nan (must be finite)"), (-math.inf, "x is -inf"),
])
def test_finite_float_refuses_text_and_non_finite_values(value, needle):
    with pytest.raises(ConfigError) as exc:
        finite_float(value, "x")
    assert needle in str(exc.value)


def test_finite_float_minimum_and_error_class():
    assert finite_float(0, "beta", minimum=0.0) == 0.0
    with pytest.raises(DataError, match="beta must be ≥ 0.0, got -0.5"):
        finite_float(-0.5, "beta", minimum=0.0, error=DataError)


def test_float_array_converts_tensors_and_checks_finiteness():
    out = float_array(torch.ones(2, 3, requires_grad=True), "w")
    assert out.dtype == np.float64 and out.shape == (2, 3)
    assert np.isnan(float_array([np.nan], "w")).all()
    with pytest.raises(DataError, match="w contains NaN or Inf"):
        float_array([1.0, np.inf], "w", finite=True)
    with pytest.raises(DataError, match="w must be a numeric array, got str"):
        float_array("abc", "w")


def test_patch_dims_grey_and_colour():
    assert patch_dims((16, 8)) == (16, 8)
    assert patch_dims([np.int64(4), 4.0]) == (4, 4)
    assert patch_dims((4, 5, 3), colour=True) == (4, 5, 3)
    for bad in [(16,), (16, -16), (2.5, 4), (4, 4, 3), "ab", None]:
        with pytest.raises(DataError, match="patch_shape must be two positive integers"):
            patch_dims(bad)
    with pytest.raises(DataError, match=r"\(or h, w, 3\)"):
        patch_dims((4, 4, 2), colour=True)
