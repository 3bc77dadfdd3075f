"""Time ``fond.families.sampling.sample_poisson`` against ``torch.poisson`` on CPU.

Rates are those of an iterative-Poisson-VAE evaluation step: a (B, K) = (1000, 512) tensor of
exp(u), u ~ Uniform(−8, 1.5), so ≈ 78 % of the counts are zero. Two schedules are timed:
"alternating" (each repeat calls one sampler then the other, so background load hits both alike,
and each runs right after the other's work, as in a rollout where the sampler follows other torch
ops) and "back-to-back" (each sampler's repeats in one block). The script prints the median (and
the best) ns per draw and the speed-ups. torch's thread count is left at its default. No
thresholds are asserted.

    python benchmarks/bench_poisson_sampler.py [--batch 1000] [--k 512] [--repeats 41]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fond.families.sampling import sample_poisson


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000, help="B, rows of the rate tensor")
    parser.add_argument("--k", type=int, default=512, help="K, columns of the rate tensor")
    parser.add_argument("--repeats", type=int, default=41, help="timed calls per sampler")
    parser.add_argument("--low", type=float, default=-8.0, help="u ~ Uniform(low, high), rates = exp(u)")
    parser.add_argument("--high", type=float, default=1.5)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    rates = torch.exp(torch.empty(args.batch, args.k).uniform_(args.low, args.high, generator=gen))
    n = rates.numel()
    samplers = {
        "sample_poisson": lambda: sample_poisson(rates, gen),
        "torch.poisson": lambda: torch.poisson(rates, generator=gen),
    }
    with torch.inference_mode():
        for fn in samplers.values():  # warm-up: first-call costs, scratch buffers
            for _ in range(3):
                fn()
        alternating: dict[str, list[float]] = {name: [] for name in samplers}
        for _ in range(args.repeats):
            for name, fn in samplers.items():
                alternating[name].append(_time(fn))
        back_to_back = {name: [_time(fn) for _ in range(args.repeats)] for name, fn in samplers.items()}
        zeros = float((sample_poisson(rates, gen) == 0).float().mean())

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}")
    print(f"rates: ({args.batch}, {args.k}) = exp(U({args.low}, {args.high})), zero counts: {zeros:.1%}")
    for schedule, times in (("alternating", alternating), ("back-to-back", back_to_back)):
        print(f"{schedule} ({args.repeats} repeats each):")
        median = {name: statistics.median(t) for name, t in times.items()}
        for name, t in times.items():
            print(
                f"  {name:>15}: {median[name] / n * 1e9:6.2f} ns/draw median, {min(t) / n * 1e9:6.2f} best "
                f"({median[name] * 1e3:.2f} ms per call)"
            )
        ratio = median["torch.poisson"] / median["sample_poisson"]
        best = min(times["torch.poisson"]) / min(times["sample_poisson"])
        print(f"  speed-up: {ratio:.2f}x (median), {best:.2f}x (best)")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
