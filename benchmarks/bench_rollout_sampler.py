"""Per-step time of an evaluation rollout with the fast exact sampler against torch.poisson.

Times ``IPVAE.infer`` (no trace) on B inputs of dimension 256 with K = 512 neurons, once with
``fond.families.sampling.sample_poisson`` and once with ``torch.poisson`` (both exact), alternating
twice, and prints ms per step and the ratio. A trained model gives realistic rates: pass its run
directory; without one, a randomly initialised model with a stronger dictionary is used.

    python benchmarks/bench_rollout_sampler.py [RUN_DIR] [--batch 1000] [--steps 300]
"""

from __future__ import annotations

import argparse
import time

import torch

import fond
import fond.families.poisson as poisson_family
from fond.families.sampling import sample_poisson


def _torch_poisson(rates, generator):
    return torch.poisson(rates, generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="trained run directory (default: random model)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if args.run:
        model = fond.load(args.run)
    else:
        model = fond.IPVAE(256, 512, init_scale=0.05)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, model.n_inputs, generator=gen)
    if args.run:
        from fond.data import load_data

        x = torch.from_numpy(load_data("natural16", n_train=100, n_val=args.batch).val)
    results: dict[str, list[float]] = {"sample_poisson": [], "torch.poisson": []}
    for _ in range(2):
        for name, fn in (("sample_poisson", sample_poisson), ("torch.poisson", _torch_poisson)):
            poisson_family.sample_poisson = fn
            start = time.perf_counter()
            model.infer(x, args.steps, seed=0, trace=False)
            results[name].append((time.perf_counter() - start) / args.steps)
    poisson_family.sample_poisson = sample_poisson
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B = {x.shape[0]}, K = {model.n_latents}")
    for name, times in results.items():
        print(f"  {name:>15}: {min(times) * 1e3:6.2f} ms/step (best of 2)")
    print(f"  speed-up: {min(results['torch.poisson']) / min(results['sample_poisson']):.2f}x")


if __name__ == "__main__":
    main()
