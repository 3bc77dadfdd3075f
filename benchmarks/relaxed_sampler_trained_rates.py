"""Time of the training sampler (``relaxed_poisson``, value and gradient) on a trained model's rates.

The rates are the shipped iP-VAE's after 32 inference steps on 200 held-out patches (B·K = 102,400; most
rates below 0.1), at the temperatures training anneals through. To compare two source trees:

    PYTHONPATH=<tree>/src python benchmarks/relaxed_sampler_trained_rates.py LABEL
"""

import sys
import time

import torch

import fond
from fond.families.poisson import relaxed_poisson
from fond.pretrained import held_out_data
from fond.resume import read_run


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "fond"
    model = fond.pretrained("ipvae-natural16")
    x = torch.as_tensor(held_out_data(read_run(fond.pretrained.run_folder("ipvae-natural16"))).val[:200])
    rates = model.infer(x, 32, seed=0, trace=False).rates.clone().requires_grad_()
    cells = []
    for temperature in (1.0, 0.3, 0.01):
        generator = torch.Generator().manual_seed(0)
        relaxed_poisson(rates, temperature, generator).sum().backward()
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(10):
                relaxed_poisson(rates, temperature, generator).sum().backward()
            best = min(best, (time.perf_counter() - began) / 10)
        cells.append(f"τ {temperature:g}: {best * 1e3:.2f} ms")
    print(f"{label}: " + ", ".join(cells) + f" ({torch.get_num_threads()} threads, {rates.numel()} rates)")


if __name__ == "__main__":
    main()
