"""The bit-width study (fond.analysis.bitwidth): its rows, its "smallest width" rule, its files.

Oracles: the rule's definition on hand-made rows; the float row equals ``fond.evaluate.evaluate`` of the float
model on the same inputs and seed.
"""

import json

import pytest
import torch

from fond.analysis.bitwidth import BitwidthRow, BitwidthStudy, bitwidth_study, plot_bitwidth


def _row(sweep, weight, state, r2, zeros=0.85):
    return BitwidthRow(sweep, weight, state, r2=r2, r2_rates=r2 + 0.05, zeros=zeros, d=0.3, diverged_fraction=0.0,
                       rate_max=50.0, min_eigenvalue=0.0, seconds=1.0)


def test_the_smallest_width_is_the_smallest_from_which_every_wider_one_is_within():
    """A width that passes below one that fails does not count (8 passes, 6 fails, 4 passes by chance → 8)."""
    from fond.analysis import bitwidth

    reference = _row("float", None, None, 0.78)
    rows = [_row("weight", 4, 20, 0.775), _row("weight", 6, 20, 0.70), _row("weight", 8, 20, 0.772),
            _row("weight", 16, 20, 0.781)]
    assert bitwidth._smallest(rows, reference, "weight_bits", 0.01) == 8
    assert bitwidth._smallest(rows[:2], reference, "weight_bits", 0.01) is None
    assert _row("weight", 8, 20, 0.769).within(reference, 0.01) is False
    sparser = _row("state", 16, 10, 0.80, zeros=0.82)  # a better R² bought with more spikes
    assert sparser.within(reference, 0.01) and not sparser.within(reference, 0.01, same_code=True)


def test_a_small_study_has_its_rows_table_json_and_figure(tmp_path):
    """Float first, one row per width of each sweep, the combined pair when both sweeps have a smallest width;
    the float row is evaluate's numbers; the JSON and the Markdown table carry every row."""
    from fond import pretrained
    from fond.evaluate import evaluate

    model = pretrained("ipvae-natural16")
    x = torch.randn(12, 256, generator=torch.Generator().manual_seed(0))
    study = bitwidth_study(model, x, steps=15, weight_bits=(6, 16), state_bits=(12, 20), tolerance=1.0)
    assert [(r.sweep, r.weight_bits, r.state_bits) for r in study.rows] == [
        ("float", None, None), ("weight", 6, 20), ("weight", 16, 20), ("state", 16, 12), ("state", 16, 20),
        ("combined", 6, 12)]
    assert study.rows[0].r2 == pytest.approx(evaluate(model, x, 15, chunk_size=500).r2)
    assert study.rows[2].r2 == study.rows[4].r2  # (16, 20) is in both sweeps: evaluated once
    data = json.loads(json.dumps(study.to_dict()))
    assert data["smallest"] == {"weight_bits": 6, "state_bits": 12} and len(data["rows"]) == 6
    assert study.table_markdown().count("\n") == 8
    assert plot_bitwidth(study, tmp_path / "bitwidth.png").stat().st_size > 1000


def test_an_empty_sweep_is_refused_in_one_line():
    from fond.errors import DataError

    with pytest.raises(DataError, match="at least one"):
        bitwidth_study(None, torch.zeros(1, 4), weight_bits=())
    assert isinstance(BitwidthStudy([_row("float", None, None, 0.5)], 1, 1, 0, 0.01, {}).to_dict(), dict)
