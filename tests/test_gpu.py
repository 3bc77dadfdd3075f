"""On a CUDA GPU (skipped elsewhere; CI has none): the samplers' distributions on the device, inference and
training there against the CPU's numbers, no host synchronisation per inference step, checkpoints that move
between the GPU and the CPU. Run by ``benchmarks/gpu_check.sh`` (``pytest -m gpu``)."""

import numpy as np
import pytest
import torch
from scipy import stats

import fond
from fond.device import seeded_generator
from fond.families.poisson import relaxed_poisson
from fond.families.sampling import sample_poisson

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _held_out(n: int) -> torch.Tensor:
    from fond.data import load_data

    return torch.as_tensor(load_data("natural16", n_train=10, n_val=n, seed=0).val, dtype=torch.float32)


@pytest.mark.parametrize("rate", [0.01, 1.0, 30.0])
def test_exact_counts_on_the_gpu_are_poisson(rate):
    """χ² of torch.poisson on the device against the Poisson pmf (the CPU kernel passes the same test)."""
    counts = sample_poisson(torch.full((200_000,), rate, device="cuda"), seeded_generator(1, "cuda")).cpu().numpy()
    support = np.arange(int(rate + 8 * rate ** 0.5 + 10))
    observed = np.bincount(counts.astype(int), minlength=support.size)[: support.size]
    expected = stats.poisson.pmf(support, rate) * counts.size
    keep = expected > 5
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert stats.chi2.sf(statistic, keep.sum() - 1) > 1e-4


def test_relaxed_counts_on_the_gpu_have_the_poisson_mean_and_unit_gradient():
    rate = torch.tensor(2.0, device="cuda", requires_grad=True)
    z = relaxed_poisson(rate.expand(200_000), 0.05, seeded_generator(2, "cuda"), tail=1e-9)
    (grad,) = torch.autograd.grad(z.mean(), rate)
    assert float(z.mean()) == pytest.approx(2.0, abs=0.02)
    assert float(grad) == pytest.approx(1.0, abs=0.05)


def test_inference_on_the_gpu_reaches_the_cpus_r2():
    model, x = fond.pretrained.load("ipvae-natural16"), _held_out(1000)
    cpu = model.infer(x, 300, seed=0).trace["r2"][-1]
    gpu = fond.pretrained.load("ipvae-natural16", device="cuda").infer(x.cuda(), 300, seed=0)
    assert gpu.rates.device.type == "cuda"
    assert abs(gpu.trace["r2"][-1] - cpu) < 0.01


def test_an_inference_step_never_waits_for_the_host():
    """The number of host synchronisations of a rollout does not grow with its steps (trace on)."""
    model, x = fond.pretrained.load("ipvae-natural16", device="cuda"), _held_out(500).cuda()

    def syncs(steps: int) -> int:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model.infer(x, steps, seed=0)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(50) == syncs(10)


def test_a_run_trained_on_the_gpu_resumes_on_the_cpu_and_loads_anywhere(tmp_path):
    from fond.config import ModelConfig, TrainConfig
    from fond.data import load_data
    from fond.train import train

    data = load_data("natural16", n_train=2000, n_val=200, seed=0)
    cfg = TrainConfig(iterations=60, batch_size=100, steps=8, checkpoint_every=30, eval_every=60, eval_steps=20,
                      eval_samples=100)
    model_cfg = ModelConfig(n_inputs=256, n_latents=128)
    first = train(data, cfg, tmp_path, model_config=model_cfg, progress=False, device="cuda", stop_at=30)
    assert first.iterations == 30 and first.model.log_bias.device.type == "cuda"
    second = train(data, cfg, tmp_path, model_config=model_cfg, progress=False, device="cpu")
    assert second.iterations == 60 and second.model.log_bias.device.type == "cpu"
    on_gpu = fond.load(tmp_path, device="cuda")
    assert all(torch.equal(a.cpu(), b) for a, b in zip(on_gpu.state_dict().values(),
                                                        second.model.state_dict().values(), strict=True))
