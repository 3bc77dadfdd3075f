#!/bin/bash
# Run a command as an AVX2 CPU without AVX-512 or AMX would: numba compiles the kernels without AVX-512 and
# with LLVM's Haswell cost model (NUMBA_CPU_NAME: with the host's Intel server model LLVM vectorised a loop around
# a table lookup that it left scalar for a real AMD Zen 3 — the Haswell model leaves it scalar too, so the
# emulation shows what an AVX2 CPU gets), ATen's and MKL's kernels stop at AVX2, and the engine's AMX limb
# product is hidden. The floor that `fond bench` measures in the same process is then the AVX2 product's.
#
#   bash benchmarks/as_avx2.sh fond bench --no-memory
#   bash benchmarks/as_avx2.sh python benchmarks/engine_products.py
set -euo pipefail
features=$(python -c '
import llvmlite.binding as llvm
flags = llvm.get_host_cpu_features().flatten().split(",")
print(",".join(("-" + f[1:]) if f[1:].startswith(("avx512", "amx")) else f for f in flags))')
export NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES="$features" ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 FOND_NO_AMX=1
exec "$@"
