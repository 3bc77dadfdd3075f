"""Checks of the values a user hands to the library, shared by every module: one behaviour each.

Every check returns the value in its plain Python (or NumPy) form and raises a :class:`fond.errors.FondError`
subclass with one line that names the value (``name``) and says what it must be. The error class is the
caller's choice: :class:`~fond.errors.ConfigError` (the default) for options, :class:`~fond.errors.DataError`
for data. Library calls take values, never text: the string ``"1.5"`` is refused where a number is expected
(the CLI's argparse types parse the text first, then apply the same check).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from fond.errors import ConfigError, DataError, FondError

__all__ = ["finite_float", "float_array", "integer", "patch_dims", "positive_int", "require"]


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("config key '<key>': <message>")`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def integer(value: Any, name: str, *, minimum: int | None = None, error: type[FondError] = ConfigError) -> int:
    """``value`` as an ``int`` (Python or NumPy integers, anything with ``__index__``; never a bool, a float or
    text), at least ``minimum`` when given, else ``error`` naming ``name``."""
    if isinstance(value, bool):
        raise error(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise error(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise error(f"{name} must be an integer ≥ {minimum}, got {number}")
    return number


def positive_int(value: Any, name: str, *, error: type[FondError] = ConfigError) -> int:
    """``value`` as an ``int`` ≥ 1 (see :func:`integer`)."""
    return integer(value, name, minimum=1, error=error)


def finite_float(value: Any, name: str, *, minimum: float | None = None,
                 error: type[FondError] = ConfigError) -> float:
    """``value`` (a real number: Python or NumPy ints and floats; never a bool or text) as a finite ``float``,
    at least ``minimum`` when given, else ``error`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise error(f"{name} is {number} (must be finite)")
    if minimum is not None and number < minimum:
        raise error(f"{name} must be ≥ {minimum}, got {number}")
    return number


def float_array(values: Any, name: str, *, finite: bool = False) -> np.ndarray:
    """``values`` (array-like or torch tensor, detached and moved to the CPU) as a float64 NumPy array;
    ``DataError`` naming ``name`` when it is not numeric or, with ``finite``, holds NaN or Inf."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a numeric array, got {type(values).__name__}") from exc
    if finite and not np.isfinite(array).all():
        raise DataError(f"{name} contains NaN or Inf")
    return array


def patch_dims(value: Any, *, colour: bool = False) -> tuple[int, ...]:
    """A checked ``patch_shape`` as a tuple of ints: two positive integers (h, w) or, with ``colour``, also
    (h, w, 3) (channels last); ``DataError`` otherwise (fractional sides and text included)."""
    allowed = "two positive integers" + (" (or h, w, 3)" if colour else "")
    try:
        values: Sequence[Any] = tuple(value)
        dims = tuple(int(s) for s in values)
        if any(int(s) != s for s in values):
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(f"patch_shape must be {allowed}, got {value!r}") from None
    ok = len(dims) == 2 or (colour and len(dims) == 3 and dims[2] == 3)
    if not ok or min(dims) < 1:
        raise DataError(f"patch_shape must be {allowed}, got {value!r}")
    return dims
