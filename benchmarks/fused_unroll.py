"""The training unroll as one autograd Function (``fond.unroll_engine``, with the model's workspace, as training
runs it) against the step-by-step autograd unroll (``fond.dynamics.unroll(..., fused=False)``), in the same run:
``fond bench``'s training row (the shipped iP-VAE of that D on held-out inputs, B 200, T_train 16, τ 0.5, β 24),
best of 5 iterations (forward and backward) each, three alternating pairs.

    python benchmarks/fused_unroll.py [D]        (D 256 or 784)
"""

import sys

from fond.bench import _inputs, _model, _shipped_run, best_time
from fond.device import seeded_generator
from fond.dynamics import unroll


def main() -> None:
    d = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    source = _shipped_run(d, 512)
    model, x = _model(source, d, 512), _inputs(source, 200, d)

    def iteration(fused: bool):
        def run() -> None:
            model.zero_grad(set_to_none=True)
            out = unroll(model.components(), x, 16, beta=24.0, temperature=0.5, clamp_fraction=1.0,
                         generator=seeded_generator(0, x.device), fused=fused,
                         workspace=model.unroll_workspace if fused else None)
            out.loss.backward()
        return run

    for _ in range(3):
        graph, whole = best_time(iteration(False), 5) * 1e3, best_time(iteration(True), 5) * 1e3
        print(f"D {d}: step-by-step autograd {graph:.1f} ms, one Function {whole:.1f} ms ({graph / whole:.2f}×)")


if __name__ == "__main__":
    main()
