"""Inference steps and training iterations against the machine's floor and a straightforward baseline (issue 6).

The same measurement as ``fond bench`` (``fond.bench``): per row fond's time, the floor (the step's
matrix-product FLOPs at the float32 product rate measured in this run) and a straightforward
implementation timed in this run (autograd on, three products per step, two ``torch.poisson`` draws in
inference / two unfused relaxed samples with n_exp arrival times in training), plus the peak memory of a
training iteration (fresh subprocess each). A trained run gives realistic rates.

    python benchmarks/bench_engine.py [RUN_DIR] [--inputs 256 784] [--steps 100] [--repeats 3]
"""

from __future__ import annotations

import sys

from fond.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
