"""The recurrent product z·W by 16-column panels of W: a C (AVX2 intrinsics) reference against fond's two kernels.

fond's ``sparse_addmm`` adds, for each input, whole rows of W (K floats) at the input's non-zero counts: the rows
come from L2/L3. The panel form stores W as panels of 16 columns (K×16, 32 KB at K 512) and keeps each input's 16
outputs of a panel in registers while its non-zero counts (packed CSR) are visited. This C prototype (session 34)
is what ``fond.families.panel_kernels.panel_addmm`` now does in numba through LLVM vector intrinsics (session 35);
the script times all three on the same counts. Needs gcc; one thread each:

    python benchmarks/prototypes/panel_product.py        # B 1000, K 512, Gamma–Poisson counts of density ~0.1

Results: BENCHMARKS.md (sessions 34 and 35).
"""

import ctypes
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

from fond.families.panel_kernels import CompressedCounts, panel_addmm
from fond.families.sparse_kernels import sparse_addmm

HERE = Path(__file__).resolve().parent


def _library() -> ctypes.CDLL:
    target = HERE / "libpanel_product.so"
    subprocess.run(["gcc", "-O3", "-mavx2", "-mfma", "-shared", "-fPIC", str(HERE / "panel_product.c"), "-o",
                    str(target)], check=True)
    return ctypes.CDLL(str(target))


def _best_ms(call, repeats: int = 20) -> float:
    call()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e3


def main(batch: int = 1000, latents: int = 512) -> None:
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    z = rng.poisson(rng.gamma(0.3, 0.4, size=(batch, latents))).astype(np.float32)
    w = rng.standard_normal((latents, latents)).astype(np.float32)
    base = rng.standard_normal((batch, latents)).astype(np.float32)
    rows, cols = np.nonzero(z)
    index, values = cols.astype(np.int32), z[rows, cols].astype(np.float32)
    counts = (z != 0).sum(1)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    end = (start + counts).astype(np.int64)
    panels = np.ascontiguousarray(w.reshape(latents, latents // 16, 16).transpose(1, 0, 2))
    out = np.empty_like(base)
    lib = _library()
    pointer = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731

    def panel_product():
        lib.panels(batch, latents // 16, latents, latents, pointer(base), pointer(panels), pointer(out),
                   pointer(index), pointer(values), pointer(start), pointer(end))

    expected = base + z.astype(np.float64) @ w.astype(np.float64)
    fond_ms = _best_ms(lambda: sparse_addmm(base, z, w, out))
    panel_ms = _best_ms(panel_product)
    assert np.abs(out - expected).max() < 1e-3
    compressed = CompressedCounts(batch, latents).of(z, 1)
    numba_ms = _best_ms(lambda: panel_addmm(base, panels, *compressed, out, 1))
    assert np.abs(out - expected).max() < 1e-3
    zt, wt, bt = map(torch.from_numpy, (z, w, base))
    dense_ms = _best_ms(lambda: torch.addmm(bt, zt, wt))
    print(f"density {counts.sum() / z.size:.3f}; one thread: fond sparse_addmm {fond_ms:.2f} ms, panels (C) "
          f"{panel_ms:.2f} ms ({fond_ms / panel_ms:.2f}× faster), fond panel_addmm (numba) {numba_ms:.2f} ms "
          f"({fond_ms / numba_ms:.2f}× faster), dense addmm {dense_ms:.2f} ms")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
