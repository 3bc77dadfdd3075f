"""Evaluation step time against the machine's floor and a straightforward baseline (issue 6, item 3; inference).

Measured in the same run: (a) the float32 matrix-product rate (best of several (B×K)·(K×K) products),
hence the floor of one inference step = its one (B×K)·(K×K) product's FLOPs / that rate; (b) fond's
``IPVAE.infer`` without trace (Gram precomputed, exact fast sampler, no autograd); (c) a straightforward
implementation of the same step as research code writes it: autograd on, three matrix products per step
(Φz, then Φᵀ(x − Φz)/σ², and the reconstruction of a second sample for the loss) and two
``torch.poisson`` draws. Prints ms per step and the ratios. A trained run gives realistic rates.

    python benchmarks/bench_engine.py [RUN_DIR] [--batch 1000] [--steps 200] [--latents 512]
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_decoders import _best  # a sibling script: benchmarks/ is on sys.path when run

import fond


def matmul_rate(batch: int, k: int, repeats: int = 20) -> float:
    """Best observed float32 FLOP/s of a (batch×k)·(k×k) product."""
    a, b = torch.randn(batch, k), torch.randn(k, k)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * batch * k * k / best


def straightforward_rollout(model, x: torch.Tensor, steps: int, generator: torch.Generator) -> torch.Tensor:
    """The step as a direct transcription: autograd on, three products and two Poisson draws per step."""
    fp = model.family_params()
    phi = model.dictionary  # (D, K), requires grad
    inv_var = torch.exp(-2.0 * model.log_sigma())
    eta = torch.exp(fp["log_step_size"])
    bias = torch.exp(model.log_bias)
    u = fp["u_init"].expand(x.shape[0], -1)
    for _ in range(steps):
        z = torch.poisson(torch.exp(u), generator=generator)
        error = (x - z @ phi.T) * inv_var
        u = torch.clamp(u + eta * (error @ phi - bias), max=model.family.clamp_final)
        z_loss = torch.poisson(torch.exp(u), generator=generator)
        _ = ((x - z_loss @ phi.T) ** 2).sum()  # the reconstruction a loss would use
    return u


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="trained iP-VAE run directory (default: random model)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--latents", type=int, default=512)
    args = parser.parse_args()
    model = fond.load(args.run) if args.run else fond.IPVAE(256, args.latents, init_scale=0.05)
    gen = torch.Generator().manual_seed(0)
    if args.run:
        from fond.data import load_data

        x = torch.as_tensor(load_data("natural16", n_train=10, n_val=args.batch).val)
    else:
        x = torch.randn(args.batch, model.n_inputs, generator=gen)
    b, k, steps = x.shape[0], model.n_latents, args.steps
    rate = matmul_rate(b, k)
    floor = 2.0 * b * k * k / rate
    fast = _best(lambda: model.infer(x, steps, seed=0, trace=False), 3) / steps
    slow = _best(lambda: straightforward_rollout(model, x, steps, torch.Generator().manual_seed(0)), 3) / steps
    print(f"B = {b}, K = {k}, D = {model.n_inputs}, {steps} steps, {torch.get_num_threads()} threads; "
          f"matrix-product rate {rate / 1e9:.0f} GFLOP/s")
    print("| path | ms/step | vs floor | vs straightforward |")
    print("|---|---|---|---|")
    print(f"| floor: one (B×K)·(K×K) product | {floor * 1e3:.2f} | 1.0× | {floor / slow:.2f}× |")
    print(f"| fond `infer` (no trace) | {fast * 1e3:.2f} | {fast / floor:.1f}× | {fast / slow:.2f}× |")
    print(f"| straightforward (autograd, 3 products, 2 torch.poisson) | {slow * 1e3:.2f} | {slow / floor:.1f}× "
          "| 1.0× |")


if __name__ == "__main__":
    main()
