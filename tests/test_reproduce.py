"""`fond reproduce` end to end on a tiny budget: every stage runs, the report names every ordering, resuming
reuses everything."""

import json

import pytest

from fond.reproduce import REPRODUCE_PRESETS, reproduce, with_overrides

TINY = with_overrides(REPRODUCE_PRESETS["quick"], name="tiny", natural_iterations=1, mnist_iterations=1,
                      eval_steps=8, natural_eval_samples=20, mnist_eval_samples=20, probe_train=60, probe_test=40,
                      probe_seeds=(0, 1), probe_every=4, ood_samples=20, latency_steps=8, latents=6, batch_size=10)


@pytest.mark.slow
def test_reproduce_writes_the_report_and_resumes(tmp_path):
    """The whole protocol runs through one call; a second call trains nothing and rewrites the same report."""
    messages = []
    index = reproduce(TINY, tmp_path, log=messages.append)
    text = index.read_text()
    orderings = json.loads((tmp_path / "orderings.json").read_text())
    assert len(orderings) == 8 and all(o["claim"] in text for o in orderings)
    for figure in ("frontier", "effects", "convergence", "gabor", "tuning", "latency", "classification", "ood",
                   "serial_dependence", "tracking", "raster"):
        assert (tmp_path / "figures" / f"{figure}.png").is_file(), figure
        assert f"figures/{figure}.png" in text
    assert "| iP-VAE |" in text and "0.951 / 0.840 / 0.965" in text  # MNIST row with the paper's numbers
    rows = json.loads((tmp_path / "mnist" / "sweep.json").read_text())
    assert {r["model"] for r in rows} == {"ipvae", "igvae-relu", "igvae", "savae", "pvae", "pc"}
    messages.clear()
    reproduce(TINY, tmp_path, log=messages.append)
    trained = [m for m in messages if "training" in m]
    assert not trained and sum("skipped" in m for m in messages) == 16
