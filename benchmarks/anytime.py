"""Anytime inference against the fixed 1000-step rollout, on held-out data of the shipped reference models.

For each model, ``fond.evaluate.evaluate`` runs the same held-out inputs (same seeds) twice, alternating
``--repeats`` times: fixed ``--steps`` steps, and with ``tol`` (each input freezes once its mean code has
settled, a chunk stops when all have). Prints the accuracy numbers of both (R² from the sample and from the
mean code, zeros), the steps the inputs used and the chunks ran, and the wall-time ratio (best of repeats).

    python benchmarks/anytime.py [--models ipvae-natural16 ipvae-mnist] [--samples 1000] [--tol 0.02 0.05]
"""

from __future__ import annotations

import argparse
import time

import torch

import fond
from fond.evaluate import evaluate
from fond.pretrained import held_out_data
from fond.resume import read_run


def _timed(function, repeats: int):
    best, value = float("inf"), None
    for _ in range(repeats):
        began = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - began)
    return best, value


def _compare(name: str, args: argparse.Namespace) -> None:
    """One model: the fixed rollout, then each tolerance, as table rows."""
    model = fond.pretrained(name)
    x = held_out_data(read_run(fond.pretrained.run_folder(name))).val[: args.samples]
    fixed_s, fixed = _timed(lambda: evaluate(model, x, args.steps, chunk_size=args.chunk), args.repeats)
    print(f"| {name} | — | {fixed.r2:.4f} | {fixed.r2_rates:.4f} | {fixed.zeros:.4f} | {args.steps} | "
          f"{args.steps} | {fixed_s:.1f} | 1.0× |")
    for tol in args.tol:
        seconds, ev = _timed(lambda t=tol: evaluate(model, x, args.steps, tol=t, window=args.window,
                                                    chunk_size=args.chunk), args.repeats)
        print(f"| {name} | {tol:g} | {ev.r2:.4f} | {ev.r2_rates:.4f} | {ev.zeros:.4f} | {ev.steps_used:.0f} | "
              f"{ev.steps_run:.0f} | {seconds:.1f} | {fixed_s / seconds:.2f}× |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ipvae-natural16", "ipvae-mnist"])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--tol", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=1000, help="inputs per rollout (a rollout stops when all its "
                                                               "inputs have frozen)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.samples} held-out inputs, "
          f"{args.steps} steps, window {args.window}, "
          f"chunks of {args.chunk}")
    print("| model | tol | R² | mean-code R² | zeros | steps used | steps run | seconds | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        _compare(name, args)


if __name__ == "__main__":
    main()
