"""Data-parallel training: two gloo processes under torchrun against one process (``fond.distributed``)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fond.distributed import SINGLE, DistributedContext, any_rank, shard_rows
from fond.errors import FondError

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

# Trains a tiny iP-VAE; records the parameters after every update (per rank, outside the run directory)
# and every write a rank other than 0 attempts under the run directory.
WORKER = textwrap.dedent('''
    import builtins, io, json, os, sys
    from dataclasses import replace
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    import fond.families.poisson as poisson
    import fond.unroll_engine as unroll_engine
    from fond.config import ModelConfig, preset
    from fond.data import load_data
    from fond.distributed import close, context_from_env
    from fond.train import train

    out, report, stop_at, fixed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "fixed"
    iterations = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    if fixed:  # the sampler's randomness fixed: the relaxed sample is its mean (step graph and fused unroll)
        poisson.relaxed_poisson = lambda rates, temperature, generator, **options: rates
        def mean_draw(rates, temperature, generator, out=None, **options):
            counts, slope = out if out is not None else (torch.empty_like(rates), torch.empty_like(rates))
            return counts.copy_(rates), slope.fill_(1.0)
        unroll_engine.relaxed_draw = mean_draw
    ctx = context_from_env()
    writes = []
    def inside(path):
        return str(path) == str(out) or str(path).startswith(str(out) + os.sep)
    if ctx.rank != 0:
        def guard(real):
            def wrapped(path, *args, **kwargs):
                mode = args[0] if args else kwargs.get("mode", "r")
                if inside(path) and any(c in str(mode) for c in "wax+"):
                    writes.append(str(path))
                return real(path, *args, **kwargs)
            return wrapped
        builtins.open = io.open = guard(io.open)
        for name in ("replace", "rename", "mkdir", "makedirs", "remove", "unlink"):
            real = getattr(os, name)
            setattr(os, name, lambda path, *a, _real=real, **k: (
                writes.append(str(path)) if inside(path) else None, _real(path, *a, **k))[1])
    data = load_data("natural16", n_train=400, n_val=50, seed=0)
    cfg = replace(preset("quick", "ipvae", "natural16"), iterations=iterations, batch_size=8, steps=3, eval_every=4,
                  checkpoint_every=1, log_every=1, eval_steps=5, eval_samples=20, n_train=400, n_val=50, seed=0)
    params = {}
    def record(done, model):
        for key, value in model.state_dict().items():
            params[f"{done}.{key}"] = value.detach().clone().contiguous()
    train(data, cfg, out, model_config=ModelConfig(n_inputs=256, n_latents=16, model="ipvae"), progress=False,
          distributed=ctx, on_iteration=record, stop_at=stop_at if stop_at > 0 else None)
    report.mkdir(parents=True, exist_ok=True)
    save_file(params, str(report / f"rank{ctx.rank}.safetensors"))
    (report / f"rank{ctx.rank}.json").write_text(json.dumps({"writes": writes, "world": ctx.world_size}))
    close(ctx)
''')


def _run(tmp_path: Path, out: Path, report: Path, *, ranks: int, stop_at: int = 0, fixed: bool = True,
         iterations: int = 4, expect_failure: bool = False) -> str:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([*launcher, str(script), str(out), str(report), str(stop_at), "fixed" if fixed else "-",
                           str(iterations)], capture_output=True, text=True, timeout=300, env=env)
    assert (done.returncode != 0) == expect_failure, done.stderr[-3000:]
    return done.stderr


def _by_step(report: Path, rank: int) -> dict[str, torch.Tensor]:
    return load_file(str(report / f"rank{rank}.safetensors"))


@pytest.mark.slow
def test_two_gloo_processes_agree_every_step_match_one_process_and_only_rank_0_writes(tmp_path):
    """DDP's promise: after every update both ranks hold the same parameters, and with the sampler's
    randomness fixed two processes on halves of each batch follow one process on the whole batch; rank 1
    never writes into the run directory (two writers would corrupt checkpoints and logs)."""
    _run(tmp_path, tmp_path / "ddp", tmp_path / "ddp-report", ranks=2)
    _run(tmp_path, tmp_path / "one", tmp_path / "one-report", ranks=1)
    rank0, rank1 = _by_step(tmp_path / "ddp-report", 0), _by_step(tmp_path / "ddp-report", 1)
    assert rank0.keys() == rank1.keys() and any(k.startswith("4.") for k in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    single = _by_step(tmp_path / "one-report", 0)
    for key in single:
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-5, atol=1e-6, msg=key)
    import json

    assert json.loads((tmp_path / "ddp-report" / "rank1.json").read_text()) == {"writes": [], "world": 2}
    assert (tmp_path / "ddp" / "checkpoint.safetensors").is_file()
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # one writer: every step logged once
    loss_ddp = [r["loss"] for r in rows if "loss" in r]
    rows_one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    loss_one = [r["loss"] for r in rows_one if "loss" in r]
    assert loss_ddp == pytest.approx(loss_one, rel=1e-5)  # the logged loss is the global batch's


@pytest.mark.slow
def test_resume_under_torchrun_ends_where_the_uninterrupted_run_ends(tmp_path):
    """A preempted multi-process job restarted with the same command must continue, not restart: stopped
    after 2 of 4 iterations and resumed, it ends with the uninterrupted run's parameters (real sampler)."""
    _run(tmp_path, tmp_path / "full", tmp_path / "full-report", ranks=2, fixed=False)
    _run(tmp_path, tmp_path / "split", tmp_path / "split-a", ranks=2, stop_at=2, fixed=False)
    _run(tmp_path, tmp_path / "split", tmp_path / "split-b", ranks=2, fixed=False)
    full, resumed = _by_step(tmp_path / "full-report", 0), _by_step(tmp_path / "split-b", 1)
    final = [k for k in full if k.startswith("4.")]
    assert final and all(k in resumed for k in final)
    for key in final:
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-6, atol=1e-7, msg=key)
    # a run folder holding another configuration is refused by every rank (none waits forever for rank 0)
    stderr = _run(tmp_path, tmp_path / "split", tmp_path / "other", ranks=2, fixed=False, iterations=6,
                  expect_failure=True)
    assert "different configuration" in stderr


@pytest.mark.slow
def test_fond_train_cli_under_torchrun_trains_and_reports_once(tmp_path):
    """The README's command: `torchrun --nproc_per_node=2 -m fond train ...` trains, and rank 0 alone
    evaluates and writes the report (one summary on stdout)."""
    out = tmp_path / "run"
    done = subprocess.run([*TORCHRUN, "-m", "fond", "train", "--model", "ipvae", "--data", "natural16",
                           "--preset", "quick", "--iterations", "3", "--latents", "16", "--steps", "3",
                           "--batch-size", "8", "--eval-steps", "5", "--no-progress", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("r2 ") == 1
    assert "on 2 processes" in done.stderr
    assert (out / "report" / "report.md").is_file() and (out / "model.safetensors").is_file()


def test_shards_split_the_global_batch_evenly_or_refuse():
    """Equal shards are what makes the averaged gradient the global batch's; an uneven split is refused."""
    ranks = [DistributedContext(rank=r, world_size=4) for r in range(4)]
    rows = [list(range(12))[shard_rows(12, c)] for c in ranks]
    assert rows == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert shard_rows(10, SINGLE) == slice(0, 10)
    with pytest.raises(FondError, match="not divisible by the 4 processes"):
        shard_rows(10, ranks[0])


def test_single_process_context_needs_no_process_group(monkeypatch):
    """Without torchrun's WORLD_SIZE nothing is initialised and collectives are local no-ops."""
    from fond.distributed import context_from_env

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert context_from_env() == SINGLE and not SINGLE.distributed and SINGLE.is_main
    assert any_rank(True, SINGLE) and not any_rank(False, SINGLE)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(FondError, match="WORLD_SIZE='two' is not an integer"):
        context_from_env()
