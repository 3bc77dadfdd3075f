"""Per-step time of ``model.infer`` as users call it, with its default trace, every key (``trace=True``) and two
subsets (``SUBSETS``), against the trace off (same run).

An untrained quick-sized iP-VAE (D 256, K 512, init_scale 0.05, log b = −1: a high-rate model), B 1000, best of
5 rollouts of 50 steps. To compare two source trees (e.g. before and after a refactor), run it under each:

    PYTHONPATH=<tree>/src python benchmarks/per_step.py LABEL

``python benchmarks/per_step.py LABEL ipvae-natural16``: a shipped model on 1000 held-out inputs of its own
split instead (realistic rates).
"""

import sys
import time

import torch

import fond

#: trace subsets timed beside the whole trace: the per-state terms only (no decode), and R² of the sample
SUBSETS = (("zeros", "du_norm", "kl", "rate_max", "saturated"), ("r2", "zeros", "kl"))


def per_step_ms(model, x: torch.Tensor, *, trace, steps: int = 50, repeats: int = 5) -> float:
    model.infer(x, 5, seed=0, trace=trace)  # warm-up: kernels compiled, buffers allocated
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        model.infer(x, steps, seed=0, trace=trace)
        best = min(best, time.perf_counter() - began)
    return best / steps * 1e3


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "fond"
    if len(sys.argv) > 2:
        from fond.pretrained import held_out_data
        from fond.resume import read_run

        model = fond.pretrained(sys.argv[2])
        x = held_out_data(read_run(fond.pretrained.run_folder(sys.argv[2]))).val[:1000]
    else:
        model = fond.IPVAE(256, 512, seed=0, init_scale=0.05)
        with torch.no_grad():
            model.log_bias.fill_(-1.0)
        x = torch.randn(1000, 256, generator=torch.Generator().manual_seed(0))
    off, default, on = (per_step_ms(model, x, trace=trace) for trace in (False, "default", True))
    print(f"{label}: trace off {off:.2f} ms/step, default trace {default:.2f} ms/step ({default / off:.2f}× the "
          f"untraced step), every key {on:.2f} ms/step ({on / off:.2f}×)")
    for keys in SUBSETS:
        ms = per_step_ms(model, x, trace=keys)
        print(f"{label}: trace={keys}: {ms:.2f} ms/step ({ms / off:.2f}× the untraced step)")


if __name__ == "__main__":
    main()
