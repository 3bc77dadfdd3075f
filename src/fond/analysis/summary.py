"""JSON-ready numbers shared by the analyses: NaN as None, histograms with fixed edges, the JSON default hook."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["histogram", "json_default", "median_or_none", "none_if_nan"]


def none_if_nan(values: Any) -> Any:
    """Plain floats for JSON (a float, or nested lists for an array), with NaN and ±Inf replaced by None."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        return float(array) if np.isfinite(array) else None
    return [none_if_nan(v) for v in array]


def histogram(values: np.ndarray, edges: np.ndarray) -> dict[str, list]:
    """Counts of ``values`` in the bins ``edges`` (values outside the edges go to the end bins):
    ``{"edges": [...], "counts": [...]}``."""
    clipped = np.clip(values, edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def median_or_none(values: np.ndarray) -> float | None:
    """The median of ``values``, or None when there are none."""
    return float(np.median(values)) if values.size else None


def json_default(value: Any) -> Any:
    """The ``default`` hook of ``json.dumps`` for analysis results: NumPy scalars as Python scalars, arrays as
    lists; anything else raises ``TypeError`` (as ``json`` expects)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
