"""Time the training sampler: per-element (bucketed) arrival-time counts against one size for all.

The relaxed Poisson sampler needs n arrival times per element, n set by the rate. Sizing every element
for the batch's largest rate (the straightforward way, and the original code's) costs B·K·n_max; giving
each element the smallest of 4, 8, 16, … terms that keeps its own truncation probability below 10⁻³
costs Σ n_i. Both are timed forward + backward on a (200, 512) tensor of training-like rates
exp(U(−8, high)), and the ratio is printed. No thresholds are asserted.

    python benchmarks/bench_relaxed_sampler.py [--high 4.5] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fond.families.poisson import n_terms_for, relaxed_poisson


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--high", type=float, default=4.5, help="u ~ Uniform(−8, high), rates = exp(u)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    u = torch.empty(args.batch, args.k).uniform_(-8.0, args.high, generator=gen)
    rates = u.exp().requires_grad_(True)
    n_max = n_terms_for(rates, tail=1e-3, max_terms=1024)

    def bucketed():
        relaxed_poisson(rates, 0.3, gen).sum().backward()

    def uniform_size():
        relaxed_poisson(rates, 0.3, gen, n_terms=n_max).sum().backward()

    bucketed(), uniform_size()  # warm-up
    t_b, t_u = _time(bucketed, args.repeats), _time(uniform_size, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; rates ({args.batch}, {args.k}) = "
          f"exp(U(-8, {args.high})), largest rate {float(rates.detach().max()):.1f} -> n_max = {n_max}")
    print(f"  one size for all (n = {n_max}): {t_u * 1e3:8.2f} ms  (forward + backward)")
    print(f"  per-element buckets:          {t_b * 1e3:8.2f} ms")
    print(f"  speed-up: {t_u / t_b:.1f}x")


if __name__ == "__main__":
    main()
