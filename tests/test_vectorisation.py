"""The compiled kernels' hot loops must vectorise on the CPU the tests run on.

A loop LLVM leaves scalar still gives the right numbers, so no other test notices; on an AMD EPYC without AVX-512
the float32 training update ran 7× slower that way (its exponential's table lookup, a gather, made LLVM's Zen 3
cost model keep the loop scalar). Each kernel is compiled afresh here (the cached ones cannot be inspected) and
its optimised LLVM IR must hold at least half as many vector float operations as scalar ones (a vectorised loop
keeps a scalar copy for its remainder).
"""

import re

import numba
import numpy as np
import pytest

from fond.families import kernels

F32 = np.float32
_VECTOR_ARITHMETIC = re.compile(r"= (fadd|fsub|fmul|fdiv)\b.*<\d+ x (float|double)>")
_SCALAR_ARITHMETIC = re.compile(r"= (fadd|fsub|fmul|fdiv) [a-z ]*(float|double) ")


def _compiled_ir(kernel, *args) -> str:
    """The optimised LLVM IR of a fresh compilation of ``kernel``'s Python function for ``args``, with the
    kernel's own options (fastmath, error model)."""
    options = {key: kernel.targetoptions[key] for key in ("fastmath", "error_model") if key in kernel.targetoptions}
    fresh = numba.njit(**options)(kernel.py_func)
    fresh(*args)
    return "\n".join(fresh.inspect_llvm().values())


def _rows(n=64, dtype=np.float64, count=1):
    rng = np.random.default_rng(0)
    return [rng.uniform(0.1, 1.0, n).astype(dtype) for _ in range(count)]


def _update_row32_args():
    u, rates, pull, bias, new, out, s1, s2, terms = _rows(dtype=F32, count=9)
    return u, rates, pull, bias, F32(0.1), F32(1e-3), F32(3e3), F32(-8.0), new, out, s1, s2, terms


def _sigmoid_round_args():
    steps, inv_r, arrival, soft, slope = _rows(count=5)
    return steps, inv_r, arrival, soft, slope, np.full(64, 8, np.int64), np.empty(64, np.bool_), 2.0, 12.0


def _exponential_steps_args():
    return np.arange(64, dtype=np.int64), np.empty(64), np.uint64(1), np.uint64(2), np.uint64(0)


def _relaxed_screen_args():
    return _rows(dtype=F32)[0], np.uint64(1), np.uint64(2), np.uint64(0), 12.0, np.empty(64, np.bool_)


def _rate_screen_args():
    drive, inv_rates, rates, spikes = _rows(dtype=F32, count=4)
    return (drive, inv_rates, rates, spikes, np.uint64(1), np.uint64(2), 3e-4, 3e3, np.uint64(0),
            np.empty(64, np.bool_))


CASES = {
    "float32 training update (_update_row32)": (kernels._update_row32, _update_row32_args),
    "training sampler's round (_sigmoid_round)": (kernels._sigmoid_round, _sigmoid_round_args),
    "training sampler's screen (_relaxed_screen)": (kernels._relaxed_screen, _relaxed_screen_args),
    "training sampler's arrival steps (_exponential_steps)": (kernels._exponential_steps, _exponential_steps_args),
    "evaluation rate step (_rate_screen_pass)": (kernels._rate_screen_pass, _rate_screen_args),
    "evaluation step's exponential (_clamped_exp_pass)": (
        kernels._clamped_exp_pass, lambda: (_rows(dtype=F32)[0], F32(-50.0), F32(11.0))),
    "trace's rate statistics (_poisson_rate_row_stats32)": (
        kernels._poisson_rate_row_stats32, lambda: tuple(_rows(dtype=F32, count=3))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hot_kernel_loop_vectorises_on_this_cpu(name):
    kernel, make_args = CASES[name]
    lines = _compiled_ir(kernel, *make_args()).splitlines()
    vector = sum(bool(_VECTOR_ARITHMETIC.search(line)) for line in lines)
    scalar = sum(bool(_SCALAR_ARITHMETIC.search(line)) for line in lines)
    # a vectorised loop keeps a scalar copy for the remainder, so about as many vector operations as scalar ones; a
    # scalar loop with a few vector operations elsewhere (the training sampler's round before session 31: 26 against
    # 211) is not vectorised
    assert vector > 0 and vector >= 0.5 * scalar, f"{name}: LLVM left the loop scalar on this CPU ({vector} vector, " \
                                                  f"{scalar} scalar float operations)"
