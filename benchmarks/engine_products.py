"""The engine's recurrent product on a trained model: ms per untraced inference step with each product forced
("float", "limbs" where AMX exists, "sparse") and with "auto" as it chooses on this CPU and as it would choose
on a CPU without AMX (limbs unavailable), against the float32 floor measured in the same run.

    python benchmarks/engine_products.py [MODEL ...]      (default: ipvae-natural16 ipvae-mnist)

B 1000 held-out inputs of the model's own split, K 512, 50 steps (``per_step.per_step_ms``),
best of 5; threads as torch has them (set OMP_NUM_THREADS / taskset to pin).
"""

import sys

import torch
from per_step import per_step_ms  # (this script's folder is on sys.path)

import fond
import fond.engine as engine_module
from fond.bench import matmul_rate


def forced(product: str, amx: bool):
    """The engine factory with ``product`` forced (and AMX hidden when ``amx`` is False)."""
    original = engine_module.PoissonLinearEngine.__init__
    available = engine_module.limb_product_available

    def init(self, *args, **kwargs):
        kwargs["product"] = product
        original(self, *args, **kwargs)

    class Forced:
        def __enter__(self):
            engine_module.PoissonLinearEngine.__init__ = init
            engine_module.limb_product_available = available if amx else (lambda: False)

        def __exit__(self, *exc):
            engine_module.PoissonLinearEngine.__init__ = original
            engine_module.limb_product_available = available

    return Forced()


def main() -> None:
    from fond.pretrained import held_out_data
    from fond.resume import read_run

    names = sys.argv[1:] or ["ipvae-natural16", "ipvae-mnist"]
    amx = engine_module.limb_product_available()
    floor = 2.0 * 1000 * 512 * 512 / matmul_rate(1000, 512) * 1e3
    print(f"threads {torch.get_num_threads()}, AMX {amx}, floor {floor:.2f} ms")
    variants = [("float", "float", True), ("sparse", "sparse", True), ("auto without AMX", "auto", False)]
    if amx:
        variants += [("limbs", "limbs", True), ("auto", "auto", True)]
    for name in names:
        model = fond.pretrained(name)
        x = held_out_data(read_run(fond.pretrained.run_folder(name))).val[:1000]
        density = float((model.infer(x, 100, seed=0, trace=False).spikes != 0).float().mean())
        for label, product, with_amx in variants:
            with forced(product, with_amx):
                ms = per_step_ms(model, x, trace=False)
            print(f"{name} (density {density:.3f}): {label}: {ms:.2f} ms/step, {ms / floor:.2f}× floor")


if __name__ == "__main__":
    main()
