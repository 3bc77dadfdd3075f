"""Devices: --device resolution, the GPU's code paths run on the CPU, no tensor made on the wrong device
(the meta device: a tensor created without the input's device fails to mix with it), checkpoints that move
between devices. CI has no GPU, so these are the tests that keep the CUDA path honest; the GPU itself is
exercised by benchmarks/gpu_check.sh."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import fond
from fond.device import resolve_device, seeded_generator
from fond.dynamics import fond_step
from fond.errors import ConfigError
from fond.families.base import Sample
from fond.families.poisson import relaxed_poisson
from fond.families.sampling import sample_poisson

NO_CUDA = not torch.cuda.is_available()


def test_cpu_and_auto_resolve_to_a_usable_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cpu" if NO_CUDA else "cuda")
    assert resolve_device(None) == resolve_device("auto")


@pytest.mark.parametrize("spec", ["tpu", "meta", "gpu0", ""])
def test_a_device_fond_cannot_run_on_is_one_config_error(spec):
    with pytest.raises(ConfigError, match="--device"):
        resolve_device(spec)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a GPU")
def test_cuda_asked_for_without_a_gpu_says_so_in_one_line():
    with pytest.raises(ConfigError, match="no CUDA device is available here") as info:
        resolve_device("cuda:0")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a GPU")
def test_the_command_line_refuses_cuda_without_a_gpu_before_any_work():
    proc = subprocess.run([sys.executable, "-m", "fond", "eval", "pretrained:ipvae-natural16", "--device", "cuda",
                           "--steps", "2", "--samples", "2", "--no-report"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("fond: error: --device cuda: no CUDA device")


# ---- the GPU's code paths, run on the CPU --------------------------------------------------------------------


@pytest.fixture
def torch_paths(monkeypatch):
    """Every sampler on its torch path and no fused engine: what a CUDA device runs, here on the CPU."""
    import fond.dynamics
    import fond.families.poisson
    import fond.families.sampling

    for module in (fond.families.poisson, fond.families.sampling):
        monkeypatch.setattr(module, "use_compiled_sampler", lambda rates, backend="auto": False)
    monkeypatch.setattr(fond.dynamics, "fused_engine", lambda parts, operators, x: None)
    calls = {"poisson": 0, "rand": 0}
    for name in calls:  # proof the torch paths ran: their draws come from these two
        original = getattr(torch, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, name, counted)
    return calls


def _held_out(n: int = 300) -> torch.Tensor:
    from fond.data import load_data

    return torch.as_tensor(load_data("natural16", n_train=10, n_val=n, seed=0).val, dtype=torch.float32)


def _final_r2(model, x, seeds=(0, 1)) -> float:
    return float(np.mean([model.infer(x, 100, seed=s).trace["r2"][-1] for s in seeds]))


def test_the_gpu_inference_path_reaches_the_compiled_paths_r2(torch_paths, request):
    """torch.poisson draws + the generic step (the CUDA path) against the compiled sampler + fused engine on
    the shipped model: the same distributions, so the same held-out R² to sampling noise."""
    model, x = fond.pretrained.load("ipvae-natural16"), _held_out()
    gpu_path = _final_r2(model, x)
    assert torch_paths["poisson"] >= 200  # one exact draw per step and seed
    request.getfixturevalue("monkeypatch").undo()
    compiled = _final_r2(model, x)
    assert abs(gpu_path - compiled) < 0.01
    assert compiled > 0.5  # a trained model: the comparison is between two working rollouts


def test_the_gpu_training_path_gives_the_compiled_paths_loss_and_gradient(torch_paths, request):
    """The relaxed sampler's torch path in a full unroll + backward: loss and gradient norm agree with the
    compiled kernel's in expectation (averaged over draws), and nothing goes non-finite."""
    model, x = fond.pretrained.load("ipvae-natural16"), _held_out(100)

    def loss_and_grad(seed: int) -> tuple[float, float]:
        model.zero_grad(set_to_none=True)
        out = model.unroll_loss(x, 8, beta=1.0, temperature=0.5, generator=seeded_generator(seed))
        out.loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        assert torch.isfinite(grad).all()
        return float(out.loss.detach()), float(grad.norm())

    gpu_path = np.mean([loss_and_grad(s) for s in range(4)], axis=0)
    assert torch_paths["rand"] >= 4 * 8  # the relaxed sampler's uniforms, every step
    request.getfixturevalue("monkeypatch").undo()
    compiled = np.mean([loss_and_grad(s) for s in range(4)], axis=0)
    np.testing.assert_allclose(gpu_path, compiled, rtol=0.05)


# ---- no tensor on the wrong device (meta) --------------------------------------------------------------------


@pytest.mark.parametrize("model_cls", [fond.IPVAE, fond.IGVAE])
@pytest.mark.parametrize("decoder", ["linear", "mlp"])
def test_a_fond_step_makes_every_tensor_on_the_inputs_device(model_cls, decoder):
    """On the meta device a tensor created on the CPU by mistake cannot mix with the state: the step, the
    decoder's pull-back and the KL must all stay on meta."""
    model = model_cls(16, 8, decoder=decoder).to("meta")
    parts = model.components()
    family, fp = parts.family, parts.family_params
    x = torch.empty(4, 16, device="meta")
    state = family.initial_state(fp, 4)
    sample = Sample(torch.empty(4, 8, device="meta"), torch.empty(4, 8, device="meta"))
    reconstruction, pull = parts.decoder.with_pullback(family.activation(sample.value, fp))
    new = fond_step(family, fp, state, sample, pull((x - reconstruction) * parts.inv_variance), parts.bias, 1.0)
    assert all(t.device.type == "meta" for t in new)
    assert family.kl(new, state).device.type == "meta"


def test_the_torch_samplers_draw_on_the_rates_device():
    rates = torch.empty(5, 7, device="meta")
    assert sample_poisson(rates, backend="torch").device.type == "meta"
    assert relaxed_poisson(rates, 0.5, n_terms=8, backend="torch").device.type == "meta"


def test_inputs_on_the_cpu_go_to_the_models_device_and_other_accelerators_are_refused():
    from fond.models.common import check_input

    like = torch.empty(3, device="meta")
    assert check_input(np.ones((2, 4), np.float32), 4, like=like).device.type == "meta"
    assert check_input(torch.ones(2, 4), 4, like=like).device.type == "meta"
    with pytest.raises(fond.DataError, match="input is on device 'meta'"):
        check_input(torch.ones(2, 4, device="meta"), 4, like=torch.ones(3))


def test_a_generator_on_another_device_than_the_input_is_refused():
    from fond.models.common import make_generator

    with pytest.raises(fond.DataError, match="generator is on device"):
        make_generator(0, torch.Generator(), "meta")
    assert make_generator(3, None, "cpu").initial_seed() == 3


# ---- checkpoints between devices -----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_a_checkpoint_resumes_onto_another_device(tmp_path):
    """Optimizer moments follow their parameter's device on resume (Adamax's step count stays on the CPU):
    a run checkpointed on one device continues on another."""
    from fond.config import TrainConfig
    from fond.resume import resume_from_checkpoint, write_checkpoint
    from fond.run import RunFolder
    from fond.train import build_optimizer

    model = fond.IPVAE(16, 8)
    optimizer = build_optimizer(model, TrainConfig(iterations=2))
    model.unroll_loss(torch.randn(4, 16), 2, beta=1.0, temperature=0.5).loss.backward()
    optimizer.step()
    folder = RunFolder(tmp_path)
    cfg = TrainConfig(iterations=2)
    write_checkpoint(folder, model, optimizer, 1, {"train": cfg.__dict__, "data": {}})
    moved = fond.IPVAE(16, 8).to("meta")
    moved_optimizer = build_optimizer(moved, cfg)
    resume_from_checkpoint(folder, moved, moved_optimizer, moved.config, cfg)
    slots = [state for state in moved_optimizer.state.values()]
    assert slots and all(s["exp_avg"].device.type == "meta" and s["step"].device.type == "cpu" for s in slots)


def test_a_model_folder_loads_onto_the_device_asked_for(tmp_path):
    model = fond.IPVAE(16, 8, seed=3)
    model.save(tmp_path)
    loaded = fond.load(tmp_path, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                        strict=True))
    with pytest.raises(ConfigError, match="--device"):
        fond.load(tmp_path, device="meta")
