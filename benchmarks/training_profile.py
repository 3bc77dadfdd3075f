"""One training iteration of ``fond bench`` (B 200, T_train 16, D 256, the shipped iP-VAE's held-out patches,
τ 0.5, β 24): its wall time (best of 3) and a torch profile of one more, the ops by self time.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/training_profile.py [ROWS]
"""

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fond.bench import _inputs, _model, _shipped_run, _training_call


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    source = _shipped_run(256, 512)
    model, x = _model(source, 256, 512), _inputs(source, 200, 256)
    call = _training_call("fond", model, x, 16, 24.0, 0.5, 30)
    call()
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - began)
    print(f"training iteration: {best * 1e3:.1f} ms ({torch.get_num_threads()} threads)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


if __name__ == "__main__":
    main()
