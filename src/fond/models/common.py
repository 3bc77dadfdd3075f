"""Input checks shared by every model's ``infer`` and ``unroll_loss`` (one-line errors, no tracebacks)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fond.errors import DataError

__all__ = ["check_input", "check_steps"]


def check_input(x, n_inputs: int) -> Tensor:
    """``x`` as a floating tensor of shape (B ≥ 1, n_inputs) with finite values, else ``DataError``."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"input must be a numeric array, got {type(x).__name__}") from None
    if not (x.is_floating_point()):
        raise DataError(f"input must be floating point, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != n_inputs or x.shape[0] == 0:
        raise DataError(f"input must have shape (batch ≥ 1, {n_inputs}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError("input contains NaN or Inf")
    return x


def check_steps(steps) -> int:
    """``steps`` as an integer ≥ 1, else ``DataError``."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise DataError(f"steps must be an integer ≥ 1, got {steps!r}")
    return steps
