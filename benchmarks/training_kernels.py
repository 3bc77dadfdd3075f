"""One training iteration of ``fond bench`` (B 200, T_train 16, τ 0.5, β 24, the shipped iP-VAE of that D on its
held-out inputs): its wall time (best of 5) and, in that best iteration, the time spent inside each compiled
kernel (timed around each call; what is left is torch's products and small operations, and Python).

    python benchmarks/training_kernels.py [D]           (D 256 or 784; threads as torch has them)
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 taskset -c 1 python benchmarks/training_kernels.py 256

To compare two source trees, run it under each (``PYTHONPATH=<tree>/src``), alternating.
"""

import sys
import time
from collections import defaultdict

import torch

import fond.families.kernels as kernels
import fond.likelihood as likelihood
from fond.bench import _inputs, _model, _shipped_run, _training_call

#: the kernels timed, by module (the wrappers look them up by name at each call, so the patch takes effect)
TIMED = {kernels: ("relaxed_counts", "poisson_update_forward32", "poisson_update_forward", "poisson_update_backward"),
         likelihood: ("_forward", "_backward")}


def _instrument(spent: dict, calls: dict) -> None:
    for module, names in TIMED.items():
        for name in names:
            kernel = getattr(module, name)

            def timed(*args, _kernel=kernel, _name=name):
                began = time.perf_counter()
                out = _kernel(*args)
                spent[_name] += time.perf_counter() - began
                calls[_name] += 1
                return out

            setattr(module, name, timed)


def main() -> None:
    d = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    spent, calls = defaultdict(float), defaultdict(int)
    _instrument(spent, calls)
    source = _shipped_run(d, 512)
    model, x = _model(source, d, 512), _inputs(source, 200, d)
    call = _training_call("fond", model, x, 16, 24.0, 0.5, 30)
    call()
    best, split = float("inf"), {}
    for _ in range(5):
        spent.clear()
        calls.clear()
        began = time.perf_counter()
        call()
        total = time.perf_counter() - began
        if total < best:
            best, split = total, {name: (spent[name] * 1e3, calls[name]) for name in spent}
    inside = sum(ms for ms, _ in split.values())
    cells = ", ".join(f"{name} {ms:.1f} ms/{n}" for name, (ms, n) in split.items())
    print(f"D {d}: iteration {best * 1e3:.1f} ms ({torch.get_num_threads()} threads); {cells}; "
          f"in kernels {inside:.1f} ms, elsewhere {best * 1e3 - inside:.1f} ms")


if __name__ == "__main__":
    main()
