"""Speed measured against the machine's floor and a straightforward implementation, in the same run.

``fond bench`` (and ``benchmarks/bench_engine.py``) print, for the iP-VAE at the paper's sizes:

* inference, ms per step of a rollout without trace, with ``infer``'s default trace (every key but the
  per-step ``r2_rates``) and with every key (``trace=True``): fond's engine; the **floor**, one (B×K)·(K×K)
  product at the float32 matrix-product rate measured now (best of several products); and a
  **straightforward** step as research code writes it — autograd on, three products (Φz, Φᵀ(x − Φz)/σ²,
  and the reconstruction of a second sample for the loss), two ``torch.poisson`` draws;
* training, ms per iteration (unroll of T_train steps + backward) and the peak resident memory the
  iteration adds to its process (measured in a fresh subprocess per variant): fond's ``unroll_loss``
  against a straightforward unroll — autograd through the same dynamics, two relaxed samples per step
  drawn with ``n_exp`` arrival times for every element (the paper's code; all (B, K, n_exp) tensors kept
  for the backward pass), three products per step.

Times are best-of-``repeats`` wall clock; every ratio compares numbers taken in the same process. On a CUDA
device (``device``) every timing waits for the device (``fond.device.synchronize``), the floor is the
product on that device, and the peak memory is the device memory the iteration allocates
(``torch.cuda.max_memory_allocated``), measured in this process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import Tensor

from fond.device import device_name, resolve_device, seeded_generator, synchronize

__all__ = ["BenchRow", "matmul_rate", "straightforward_rollout", "straightforward_unroll_loss", "run_bench",
           "format_table"]


def best_time(fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu") -> float:
    """Best wall-clock seconds of ``repeats`` calls (after one warm-up call), each waited for on ``device``
    (CUDA kernels run asynchronously: the clock stops when the device is done)."""
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(batch: int, k: int, repeats: int = 20, device: torch.device | str = "cpu") -> float:
    """Best observed float32 FLOP/s of a (batch×k)·(k×k) product on ``device`` now."""
    a, b = torch.randn(batch, k, device=device), torch.randn(k, k, device=device)
    out = torch.empty(batch, k, device=device)
    return 2.0 * batch * k * k / best_time(lambda: torch.mm(a, b, out=out), repeats, device)


def straightforward_rollout(model, x: Tensor, steps: int, generator: torch.Generator) -> Tensor:
    """The evaluation step as a direct transcription: autograd on, three products and two Poisson draws."""
    fp = model.family_params()
    phi = model.dictionary  # (D, K), requires grad
    inv_var = torch.exp(-2.0 * model.log_sigma())
    eta = torch.exp(fp["log_step_size"])
    bias = torch.exp(model.log_bias)
    u = fp["u_init"].expand(x.shape[0], -1)
    for _ in range(steps):
        z = torch.poisson(torch.exp(u), generator=generator)
        error = (x - z @ phi.T) * inv_var
        u = _clamped_update(model.family, u, eta * (error @ phi - bias))
        z_loss = torch.poisson(torch.exp(u), generator=generator)
        _ = ((x - z_loss @ phi.T) ** 2).sum()  # the reconstruction a loss would use
    return u


def _clamped_update(family, u: Tensor, du: Tensor) -> Tensor:
    """The family's rule written out: soft upper clamp c − softplus(c − ·) after the floor, on Δu then on u."""
    c, floor = family.clamp_final, family.floor
    du = c - torch.nn.functional.softplus(c - du.clamp_min(floor))
    return c - torch.nn.functional.softplus(c - (u + du).clamp_min(floor))


def _unfused_relaxed(rates: Tensor, n_exp: int, temperature: float, generator: torch.Generator) -> Tensor:
    uniforms = torch.rand((*rates.shape, n_exp), generator=generator, device=rates.device)
    arrivals = torch.cumsum(-torch.log(uniforms), dim=-1) / rates.unsqueeze(-1)
    return torch.sigmoid((1.0 - arrivals) / temperature).sum(-1)


def straightforward_unroll_loss(model, x: Tensor, steps: int, *, beta: float, temperature: float, n_exp: int,
                                generator: torch.Generator) -> Tensor:
    """The training unroll as research code writes it: per step a relaxed sample (n_exp arrival times for
    every element) drives the update, a second one is decoded for the loss; three products per step."""
    fp = model.family_params()
    phi = model.dictionary
    log_sigma = model.log_sigma()
    inv_var = torch.exp(-2.0 * log_sigma)
    eta = torch.exp(fp["log_step_size"])
    bias = torch.exp(model.log_bias)
    u = fp["u_init"].expand(x.shape[0], -1)
    total = x.new_zeros(())
    for _ in range(steps):
        z = _unfused_relaxed(torch.exp(u), n_exp, temperature, generator)
        error = (x - z @ phi.T) * inv_var
        u_new = _clamped_update(model.family, u, eta * (error @ phi - bias))
        z_loss = _unfused_relaxed(torch.exp(u_new), n_exp, temperature, generator)
        nll = 0.5 * (((x - z_loss @ phi.T) ** 2) * inv_var).sum(-1) + log_sigma.sum()
        rate = torch.exp(u_new)
        kl = (rate * (torch.expm1(u - u_new) + (u_new - u))).sum(-1)
        total = total + (nll + beta * kl).mean()
        u = u_new
    return total / steps


@dataclass
class BenchRow:
    """One measured configuration: ms per step (inference) or per iteration (training), and ratios."""

    kind: str
    batch: int
    latents: int
    inputs: int
    steps: int
    fond_ms: float
    floor_ms: float
    baseline_ms: float
    fond_peak_mb: float | None = None
    baseline_peak_mb: float | None = None

    @property
    def vs_floor(self) -> float:
        return self.fond_ms / self.floor_ms

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.fond_ms


def _model(run: str | None, inputs: int, latents: int):
    import fond

    if run:
        model = fond.load(run)
        if model.n_inputs != inputs or model.n_latents != latents:
            raise ValueError(f"{run} has D = {model.n_inputs}, K = {model.n_latents}; asked for D = {inputs}, "
                             f"K = {latents}")
        return model
    return fond.IPVAE(inputs, latents, init_scale=0.05, seed=0)


#: the shipped reference model ``fond bench`` measures at each D by default (K = 512): realistic rates
SHIPPED_BY_INPUTS = {256: "ipvae-natural16", 784: "ipvae-mnist"}


def _shipped_run(inputs: int, latents: int) -> str | None:
    """The run folder of the shipped iP-VAE of this size, or None (none ships: a fresh model)."""
    name = SHIPPED_BY_INPUTS.get(inputs)
    if name is None or latents != 512:
        return None
    import fond

    return str(fond.pretrained.run_folder(name))


def _inputs(run: str | None, batch: int, inputs: int, seed: int = 0, device: torch.device | str = "cpu") -> Tensor:
    """Held-out natural patches (D = 256) or centred MNIST digits (D = 784) for a trained run; else noise; on
    ``device``."""
    if run and inputs in (256, 784):
        from fond.data import load_data

        spec = "natural16" if inputs == 256 else "mnist"
        x = torch.as_tensor(load_data(spec, n_train=10, n_val=batch).val, dtype=torch.float32)
    else:
        x = torch.randn(batch, inputs, generator=torch.Generator().manual_seed(seed))
    return x.to(device)


def _training_call(variant: str, model, x: Tensor, steps: int, beta: float, temperature: float,
                   n_exp: int) -> Callable[[], None]:
    def fond_iteration() -> None:
        model.zero_grad(set_to_none=True)
        out = model.unroll_loss(x, steps, beta=beta, temperature=temperature, clamp_fraction=1.0,
                                generator=seeded_generator(0, x.device))
        out.loss.backward()

    def baseline_iteration() -> None:
        model.zero_grad(set_to_none=True)
        loss = straightforward_unroll_loss(model, x, steps, beta=beta, temperature=temperature, n_exp=n_exp,
                                           generator=seeded_generator(0, x.device))
        loss.backward()

    return fond_iteration if variant == "fond" else baseline_iteration


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise OSError(f"no {field} in /proc/self/status")


def _peak_child(spec: str) -> None:
    """Subprocess entry: one training iteration of ``spec``'s variant; prints the peak RSS it added (MB)."""
    args = json.loads(spec)
    torch.set_num_threads(args["threads"])
    model = _model(args["run"], args["inputs"], args["latents"])
    x = _inputs(args["run"], args["batch"], args["inputs"])
    call = _training_call(args["variant"], model, x, args["steps"], args["beta"], args["temperature"],
                          args["n_exp"])
    # warm-up on two inputs: one-time costs (kernel compilation or cache load, torch's lazy init) stay out
    _training_call(args["variant"], model, x[:2], 2, args["beta"], args["temperature"], args["n_exp"])()
    model.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to the current RSS (Linux ≥ 4.0)
        f.write("5")
    before = _status_mb("VmRSS")
    call()
    print(json.dumps({"peak_mb": max(0.0, _status_mb("VmHWM") - before)}))


def _cuda_peak_mb(call: Callable[[], None], device: torch.device) -> float:
    """The device memory (MB) one call allocates beyond what was allocated before it."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    synchronize(device)
    return max(0.0, (torch.cuda.max_memory_allocated(device) - before) / 2**20)


def _peak_mb(variant: str, **args) -> float | None:
    spec = json.dumps({"variant": variant, "threads": torch.get_num_threads(), **args})
    code = "import sys; from fond.bench import _peak_child; _peak_child(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def run_bench(run: str | None = None, *, inference_batch: int = 1000, train_batch: int = 200, latents: int = 512,
              inputs: tuple[int, ...] = (256, 784), inference_steps: int = 100, train_steps: int = 16,
              beta: float = 24.0, temperature: float = 0.5, n_exp: int = 30, repeats: int = 3,
              memory: bool = True, log: Callable[[str], None] | None = None,
              device: str | torch.device | None = "cpu") -> list[BenchRow]:
    """Measure every row of the table (see the module docstring). ``run``: a trained iP-VAE for realistic
    rates (its D must be in ``inputs``); without one, the shipped iP-VAE of each D where one ships at this K
    (``SHIPPED_BY_INPUTS``), else a fresh model. ``device``: where to measure (``resolve_device``). Returns
    the rows."""
    rows: list[BenchRow] = []
    say = log or (lambda _msg: None)
    device = resolve_device(device)
    say(f"device: {device_name(device)}")
    for d in inputs:
        source = run or _shipped_run(d, latents)
        try:
            model = _model(source, d, latents)
        except ValueError:  # the run's D differs: a fresh model of this size
            model, source = _model(None, d, latents), None
        model = model.to(device)
        if source is None:
            say(f"D={d}: a fresh model on white noise; its rates run to the clamp (e^c ≈ 22,000), where the "
                "sampler is at its slowest; training starts far below it (pass a trained run for real rates)")
        # inference
        x = _inputs(source, inference_batch, d, device=device)
        rate = matmul_rate(inference_batch, latents, device=device)
        fast, traced, everything = (best_time(partial(model.infer, x, inference_steps, seed=0, trace=trace), repeats,
                                              device) / inference_steps for trace in (False, "default", True))
        slow = best_time(partial(straightforward_rollout, model, x, inference_steps, seeded_generator(0, device)),
                         repeats, device) / inference_steps
        # the rate measured before and after the timings, the better one: on a shared machine a busy moment during
        # one measurement would otherwise lower the floor's rate and flatter every ratio
        rate = max(rate, matmul_rate(inference_batch, latents, device=device))
        floor = 2.0 * inference_batch * latents * latents / rate
        say(f"inference B={inference_batch} K={latents} D={d}: matrix-product rate {rate / 1e9:.0f} GFLOP/s")
        for kind, ms in (("inference", fast), ("inference, default trace", traced),
                         ("inference, every trace key", everything)):
            rows.append(BenchRow(kind, inference_batch, latents, d, inference_steps, ms * 1e3, floor * 1e3,
                                 slow * 1e3))
        # training
        xt = _inputs(source, train_batch, d, device=device)
        rate = matmul_rate(train_batch, latents, device=device)
        say(f"training B={train_batch} K={latents} D={d} T_train={train_steps}")
        calls = {variant: _training_call(variant, model, xt, train_steps, beta, temperature, n_exp)
                 for variant in ("fond", "baseline")}
        fast, slow = (best_time(calls[variant], repeats, device) for variant in ("fond", "baseline"))
        rate = max(rate, matmul_rate(train_batch, latents, device=device))  # (before and after, as above)
        # forward: Φz (B·K·D) and the pull-back (B·D·K) per step; backward: twice the forward's products
        floor = 3 * 2 * (2.0 * train_batch * latents * d) * train_steps / rate
        peaks = {}
        if memory and device.type == "cuda":
            peaks = {variant: _cuda_peak_mb(call, device) for variant, call in calls.items()}
        elif memory:
            for variant in ("fond", "baseline"):
                peaks[variant] = _peak_mb(variant, run=source, inputs=d, latents=latents, batch=train_batch,
                                          steps=train_steps, beta=beta, temperature=temperature, n_exp=n_exp)
        rows.append(BenchRow("training", train_batch, latents, d, train_steps, fast * 1e3, floor * 1e3, slow * 1e3,
                             peaks.get("fond"), peaks.get("baseline")))
    return rows


def format_table(rows: list[BenchRow]) -> str:
    """A Markdown table of the rows, with the floor and straightforward-baseline ratios."""
    lines = ["| kind | B | K | D | steps | fond ms | floor ms | fond / floor | straightforward ms | speed-up "
             "| peak MB fond | peak MB straightforward | memory ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        unit = "/step" if r.kind.startswith("inference") else "/iteration"
        mem = ("", "", "")
        if r.fond_peak_mb is not None and r.baseline_peak_mb is not None:
            ratio = r.baseline_peak_mb / r.fond_peak_mb if r.fond_peak_mb > 0 else math.inf
            mem = (f"{r.fond_peak_mb:.0f}", f"{r.baseline_peak_mb:.0f}", f"{ratio:.1f}×")
        lines.append(f"| {r.kind} {unit} | {r.batch} | {r.latents} | {r.inputs} | {r.steps} | {r.fond_ms:.2f} | "
                     f"{r.floor_ms:.2f} | {r.vs_floor:.1f}× | {r.baseline_ms:.2f} | {r.speedup:.1f}× | "
                     f"{mem[0]} | {mem[1]} | {mem[2]} |")
    return "\n".join(lines)


def rows_to_json(rows: list[BenchRow]) -> list[dict]:
    return [{**asdict(r), "vs_floor": r.vs_floor, "speedup": r.speedup} for r in rows]
