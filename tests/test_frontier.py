"""Rate–distortion frontier: Pareto front, ranking by d, effect sizes of β / T_train, figures, input checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fond.analysis.frontier import frontier_table, pareto_front, plot_effects, plot_frontier, summarize_effects
from fond.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _naive_front(r2: np.ndarray, zeros: np.ndarray) -> set[int]:
    """Oracle: the definition of non-domination, one pair at a time."""
    keep = set()
    for i in range(len(r2)):
        dominated = any(r2[j] >= r2[i] and zeros[j] >= zeros[i] and (r2[j] > r2[i] or zeros[j] > zeros[i])
                        for j in range(len(r2)))
        if not dominated:
            keep.add(i)
    return keep


def test_pareto_front_of_a_hand_built_set_with_ties_and_duplicates():
    """Exact duplicates both stay on the front; a tie on one axis with a loss on the other is dominated."""
    zeros = np.array([0.0, 0.5, 0.5, 0.4, 0.9, 0.9, 0.2, 1.0])
    r2 = np.array([0.9, 0.8, 0.8, 0.7, 0.5, 0.4, 0.9, 0.1])
    # 0 loses to 6 (same R², more zeros); 3 loses to 1; 5 loses to 4 (same zeros, lower R²); 1 and 2 are equal
    front = pareto_front(r2, zeros)
    assert front.dtype == np.int64
    assert front.tolist() == [6, 1, 2, 4, 7]


def test_pareto_front_matches_the_pairwise_definition_on_random_points():
    """The vectorised front must equal the one-pair-at-a-time definition, including on a coarse grid with ties."""
    rng = np.random.default_rng(0)
    r2 = rng.integers(0, 6, 80) / 5
    zeros = rng.integers(0, 6, 80) / 5
    front = pareto_front(r2, zeros)
    assert set(front.tolist()) == _naive_front(r2, zeros)
    assert np.all(np.diff(zeros[front]) >= 0)
    # along the front, more zeros can only cost R²
    assert np.all(np.diff(r2[front]) <= 0)


def test_frontier_table_ranks_models_and_points_by_distance():
    """Ranks must follow d = √((1 − R²)² + (1 − zeros)²) ascending, with ties sharing the better rank."""
    points = [
        {"model": "A", "r2": 0.6, "zeros": 0.6, "beta": 2.0},   # d = 0.566
        {"model": "B", "r2": 1.0, "zeros": 0.0, "beta": 8.0},   # d = 1.0
        {"model": "A", "r2": 0.9, "zeros": 0.8, "beta": 4.0, "seed": 1},  # d = 0.224
        {"model": "B", "r2": 0.7, "zeros": 0.7, "beta": 1.0},   # d = 0.424
        {"model": "C", "r2": 0.8, "zeros": 0.9, "t_train": 16},  # d = 0.224 (tie with A's best)
    ]
    table = json.loads(json.dumps(frontier_table(points)))
    assert [(row["model"], row["rank"]) for row in table] == [("A", 1), ("C", 1), ("B", 3)]
    best_a = table[0]["best"]
    assert best_a["index"] == 2 and best_a["beta"] == 4.0 and best_a["seed"] == 1
    assert best_a["d"] == pytest.approx(math.sqrt(0.1**2 + 0.2**2))
    b_points = table[2]["points"]
    assert [p["index"] for p in b_points] == [3, 1]
    assert [p["rank"] for p in b_points] == [3, 5]
    # global front: (0.9, 0.8) A, (0.8, 0.9) C, (1.0, 0.0) B; B's (0.7, 0.7) is dominated by A's best
    on_front = {p["index"]: p["on_global_front"] for row in table for p in row["points"]}
    assert on_front == {0: False, 1: True, 2: True, 3: False, 4: True}
    assert all(p["on_model_front"] for p in b_points)
    assert [row["n_on_global_front"] for row in table] == [1, 1, 1]


def _planted(rng: np.random.Generator, model: str, sign: int) -> list[dict]:
    """β sweep where zeros rise and R² falls with β (sign = +1, as in the paper) or the reverse (sign = −1)."""
    points = []
    for beta in (1, 2, 4, 8, 16, 24):
        for seed in range(2):
            level = math.log2(beta) / math.log2(24)
            points.append({"model": model, "beta": beta, "seed": seed, "t_train": 16,
                           "zeros": float(np.clip(0.5 + sign * 0.4 * level + 0.01 * rng.standard_normal(), 0, 1)),
                           "r2": float(0.8 - sign * 0.15 * level + 0.01 * rng.standard_normal())})
    return points


def test_summarize_effects_recovers_the_sign_of_planted_trends():
    """A planted monotone β effect must come out with the right sign, and agreement with the paper flagged."""
    rng = np.random.default_rng(1)
    points = _planted(rng, "paperlike", +1) + _planted(rng, "reversed", -1)
    for t_train in (1, 4, 16, 64):  # larger T_train → closer to the corner
        gain = math.log2(t_train) / 6
        points.append({"model": "unrolled", "t_train": t_train, "beta": 8, "r2": 0.6 + 0.3 * gain,
                       "zeros": 0.4 + 0.4 * gain})
    points.append({"model": "single", "r2": 0.5, "zeros": 0.5, "beta": 3})
    summary = json.loads(json.dumps(summarize_effects(points)))

    assert set(summary) == {"paperlike", "reversed", "unrolled"}
    like = summary["paperlike"]["beta"]
    assert like["n_points"] == 12 and like["values"] == [1, 2, 4, 8, 16, 24]
    assert like["zeros"]["rho"] > 0.8 and like["r2"]["rho"] < -0.8
    assert like["agrees_with_paper"] == {"zeros": True, "r2": True}
    assert "t_train" not in summary["paperlike"]  # a single T_train value: no effect to estimate
    rev = summary["reversed"]["beta"]
    assert rev["zeros"]["rho"] < -0.8 and rev["agrees_with_paper"] == {"zeros": False, "r2": False}
    unrolled = summary["unrolled"]["t_train"]
    assert unrolled["d"]["rho"] == pytest.approx(-1.0)
    assert unrolled["agrees_with_paper"] == {"d": True}


def test_summarize_effects_reports_constant_metric_as_none_not_nan():
    """A metric that never moves has no rank correlation: it must read None with a reason, not NaN."""
    points = [{"model": "m", "beta": b, "r2": 0.8, "zeros": 0.1 * b} for b in (1, 2, 3)]
    entry = summarize_effects(points)["m"]["beta"]
    assert entry["r2"] == {"rho": None, "p": None, "reason": "metric is constant"}
    assert entry["agrees_with_paper"]["r2"] is None
    assert entry["zeros"]["rho"] == pytest.approx(1.0)


def test_plots_write_png(tmp_path):
    """Both figures must render to a complete PNG (with reference points and a T_train sweep)."""
    rng = np.random.default_rng(2)
    points = _planted(rng, "ipvae", +1) + [
        {"model": "igvae", "r2": 0.87, "zeros": 0.0, "beta": 8, "t_train": t} for t in (4, 16)]
    paper = [{"model": "ipvae", "r2": 0.830, "zeros": 0.773}, {"model": "lca", "r2": 0.8, "zeros": 0.8}]
    frontier = plot_frontier(points, tmp_path / "sub" / "frontier.png", paper_points=paper)
    effects = plot_effects(points, tmp_path / "effects.png")
    for path in (frontier, effects):
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["effects.png", "frontier.png", "sub"]  # no temp files
    with pytest.raises(DataError, match="two distinct values"):
        plot_effects([{"model": "m", "r2": 0.5, "zeros": 0.5}], tmp_path / "none.png")


@pytest.mark.parametrize("points, message", [
    ([], "points is empty"),
    ([{"model": "m", "r2": float("nan"), "zeros": 0.5}], r"points\[0\]\['r2'\] is nan"),
    ([{"model": "m", "r2": 0.5, "zeros": 0.5}, {"model": "m", "r2": 0.5}], r"points\[1\] is missing the key 'zeros'"),
    ([{"r2": 0.5, "zeros": 0.5}], "missing the key 'model'"),
    ([{"model": "m", "r2": 0.5, "zeros": 1.5}], "not a fraction"),
    ([{"model": "m", "r2": 1.5, "zeros": 0.5}], "exceeds 1"),
    ([{"model": "m", "r2": "high", "zeros": 0.5}], "real number"),
    ([{"model": "m", "r2": 0.5, "zeros": 0.5, "beta": float("inf")}], "beta"),
    ({"model": "m", "r2": 0.5, "zeros": 0.5}, "list of mappings"),
])
def test_bad_points_raise_data_error_naming_the_problem(points, message, tmp_path):
    """Every entry point must reject malformed points with a message that says which point and which key."""
    with pytest.raises(DataError, match=message):
        frontier_table(points)
    with pytest.raises(DataError, match=message):
        summarize_effects(points)
    with pytest.raises(DataError, match=message):
        plot_frontier(points, tmp_path / "f.png")
    assert not (tmp_path / "f.png").exists()


def test_pareto_front_rejects_bad_arrays():
    """NaN, mismatched or empty arrays have no front; they must raise instead of returning a silent answer."""
    with pytest.raises(DataError, match="r2 contains NaN"):
        pareto_front([0.5, np.nan], [0.1, 0.2])
    with pytest.raises(DataError, match="equal length"):
        pareto_front([0.5, 0.6], [0.1])
    with pytest.raises(DataError, match="empty"):
        pareto_front([], [])
