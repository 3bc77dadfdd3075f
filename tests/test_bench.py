"""`fond bench` and fond.bench: the measurement code itself (tiny sizes; no timing thresholds)."""

import json
import math

import torch

from fond import IPVAE
from fond.bench import format_table, run_bench, straightforward_rollout, straightforward_unroll_loss
from fond.cli import main

KINDS = ["inference", "inference, default trace", "inference, every trace key", "training"]


def test_run_bench_rows_are_complete_and_consistent():
    """Every row carries positive finite times, the floor and both ratios; training rows carry peak memory."""
    rows = run_bench(None, inference_batch=30, train_batch=20, latents=12, inputs=(16,), inference_steps=3,
                     train_steps=2, n_exp=4, repeats=1, memory=True)
    assert [r.kind for r in rows] == KINDS
    for r in rows:
        for value in (r.fond_ms, r.floor_ms, r.baseline_ms):
            assert math.isfinite(value) and value > 0
        assert r.vs_floor == r.fond_ms / r.floor_ms and r.speedup == r.baseline_ms / r.fond_ms
    assert rows[3].fond_peak_mb is not None and rows[3].baseline_peak_mb is not None
    table = format_table(rows)
    assert table.count("\n") == 5 and "fond / floor" in table


def test_straightforward_baselines_follow_the_same_dynamics():
    """The baselines must be the same model, only written plainly: they keep rates under the family's clamp
    and the training loss has a finite gradient for the dictionary."""
    model = IPVAE(16, 12, init_scale=0.3)
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(0)) * 50
    u = straightforward_rollout(model, x, 5, torch.Generator().manual_seed(0))
    u = u.detach()
    assert float(u.max()) <= model.family.clamp_final and bool(torch.isfinite(u).all())
    loss = straightforward_unroll_loss(model, x / 50, 3, beta=2.0, temperature=0.5, n_exp=8,
                                       generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(model.dictionary.grad).all() and float(model.dictionary.grad.abs().sum()) > 0


def test_cli_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--batch", "20", "--train-batch", "10", "--latents", "8", "--inputs", "16", "--steps", "2",
                 "--train-steps", "2", "--n-exp", "4", "--repeats", "1", "--no-memory", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| inference /step | 20 | 8 | 16 |" in printed and "| training /iteration | 10 | 8 | 16 |" in printed
    assert [row["kind"] for row in json.loads(out.read_text())] == KINDS


def test_cli_bench_rejects_a_non_poisson_run(tmp_path, capsys):
    from fond import IGVAE

    IGVAE(16, 8).save(tmp_path / "ig")
    assert main(["bench", str(tmp_path / "ig"), "--no-memory"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fond: error:") and "iP-VAE" in err and "\n" not in err
