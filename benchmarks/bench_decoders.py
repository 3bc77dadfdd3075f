"""Cost of an inference step with each decoder, as a ratio to the linear dictionary measured in the same run.

A linear decoder's pull-back Φᵀ(x − Φf)/σ² costs one (B×K)·(K×K) product per step (the Gram matrix is
precomputed); an MLP or conv decoder pays a forward pass and a vector–Jacobian product (``torch.func.vjp``)
per step. Times ``model.infer`` (no trace) of an iG_relu-VAE for each decoder, alternating, and prints
ms per step (best of ``--repeats``) and the ratio to linear; then the same for one training step
(``unroll_loss`` + backward over T_train steps).

    python benchmarks/bench_decoders.py [--batch 200] [--latents 512] [--steps 50] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

import fond
from fond.bench import best_time as _best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--latents", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512, help="MLP hidden units; conv channels are hidden/8")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x = torch.randn(args.batch, 256, generator=torch.Generator().manual_seed(0))
    models = {name: fond.IGVAE(256, args.latents, activation="relu", decoder=name, init_scale=0.05,
                               decoder_hidden=args.hidden if name != "conv" else max(1, args.hidden // 8))
              for name in ("linear", "mlp", "conv")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={args.batch}, K={args.latents}, D=256")
    infer_ms, train_ms = {}, {}
    for name, model in models.items():
        model.infer(x, 2, trace=False)  # warm-up (vjp tracing, allocator)
        infer_ms[name] = _best(lambda m=model: m.infer(x, args.steps, trace=False), args.repeats) / args.steps * 1e3

        def train_step(m=model):
            m.zero_grad()
            m.unroll_loss(x, args.train_steps, beta=1.0, temperature=1.0).loss.backward()

        train_step()
        train_ms[name] = _best(train_step, args.repeats) * 1e3
    for name in models:
        print(f"  {name:>6} decoder: inference {infer_ms[name]:7.2f} ms/step "
              f"({infer_ms[name] / infer_ms['linear']:5.1f}x linear), training {train_ms[name]:8.1f} ms/iteration "
              f"({train_ms[name] / train_ms['linear']:5.1f}x)")


if __name__ == "__main__":
    main()
