"""Every input the analyses build: gratings, contrast series, pairs of stimuli, moved and moving images.

* :func:`gratings` — sinusoidal gratings at given orientations and phases (tuning, ``fond.analysis.tuning``).
* :func:`contrast_series` — each stimulus at several contrasts in one batch (latency, ``fond.analysis.temporal``).
* :func:`pair_sequence` — an online input that shows A, then B, without a reset (serial dependence).
* :func:`rotating_sequence`, :func:`shifting_sequence` — online inputs of images that turn or translate a
  little at every step (tracking).
* :func:`rotate_images`, :func:`shift_images`, :func:`rotating_frames` — MNIST digits rotated, translated or
  turning step by step (out-of-distribution sets, ``fond.analysis.ood``).

Conventions: pixel ``x`` is the column, ``y`` the row (rows grow downwards, as in an image); an orientation
θ (radians) is the direction of a grating's wave vector from the +x axis towards +y (θ = 0: vertical stripes);
images are flattened row-major, so an (h, w) image is a row of h·w values. An online input has shape
(steps, B, D): frame t − 1 drives inference step t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from fond.errors import ConfigError, DataError
from fond.validate import finite_float, float_array, patch_dims, positive_int

__all__ = [
    "DIGIT_SIDE",
    "contrast_series",
    "digit_images",
    "gratings",
    "pair_sequence",
    "rotate_images",
    "rotating_frames",
    "rotating_sequence",
    "shift_images",
    "shifting_sequence",
]

#: Side of an MNIST digit image, pixels.
DIGIT_SIDE = 28
_TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------- gratings


def _vector(values: Any, name: str) -> np.ndarray:
    arr = float_array(values, name)
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or infinite values")
    return arr


def gratings(patch_shape: Sequence[int], orientations: Any, frequency: float, phases: Any,
             contrast: float = 1.0) -> np.ndarray:
    """Sinusoidal gratings, float64 (n_orientations·n_phases, h·w), rows flattened row-major.

    Row ``i·n_phases + j`` is  contrast·cos(2π·frequency·((x − cx)·cos θ_i + (y − cy)·sin θ_i) + φ_j)  minus its
    own spatial mean, with x the column, y the row, (cx, cy) = ((w − 1)/2, (h − 1)/2) the patch centre,
    θ_i = orientations[i] the wave vector's direction in radians (see the module docstring) and
    φ_j = phases[j] radians. ``contrast`` is therefore the sinusoid's peak amplitude in pixel units
    (values span ±contrast; RMS contrast/√2) before the mean is removed; the mean removal changes nothing
    when the patch holds a whole number of cycles, and otherwise shifts the values by a small constant.
    patch_shape: (h, w). frequency in (0, 0.5] cycles/pixel; contrast ≥ 0.
    """
    h, w = patch_dims(patch_shape)
    theta = _vector(orientations, "orientations")
    phi = _vector(phases, "phases")
    frequency = finite_float(frequency, "frequency")
    if not 0.0 < frequency <= 0.5:
        raise ConfigError(f"frequency must be in (0, 0.5] cycles/pixel, got {frequency}")
    contrast = finite_float(contrast, "contrast", minimum=0.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    xx, yy = xx.ravel() - (w - 1) / 2.0, yy.ravel() - (h - 1) / 2.0
    u = np.cos(theta)[:, None] * xx + np.sin(theta)[:, None] * yy  # (n_o, D)
    wave = contrast * np.cos(_TWO_PI * frequency * u[:, None, :] + phi[None, :, None])  # (n_o, n_p, D)
    wave = wave - wave.mean(axis=2, keepdims=True)
    return wave.reshape(theta.size * phi.size, h * w)


# --------------------------------------------------------------------------- contrast and pairs


def contrast_series(stimuli: Tensor, contrasts: Any) -> tuple[np.ndarray, Tensor]:
    """Every stimulus at every contrast, as one batch: (levels (C,) ascending, batch (C·N, D)).

    stimuli: (N, D) tensor. contrasts: C positive values, at least two distinct. Row c·N + n of the batch is
    levels[c]·stimuli[n] (contrast-major), in the stimuli's dtype.
    """
    levels = float_array(contrasts, "contrasts", finite=True)
    if levels.ndim != 1 or np.unique(levels).size < 2:
        raise ConfigError(f"contrasts must be a 1-D sequence of at least two distinct values, got {levels.tolist()}")
    if (levels <= 0).any():
        raise ConfigError(f"contrasts must be positive, got {levels.tolist()}")
    levels = np.sort(levels)
    scale = torch.as_tensor(levels, dtype=stimuli.dtype).reshape(-1, 1, 1)
    return levels, (scale * stimuli.unsqueeze(0)).reshape(levels.size * stimuli.shape[0], stimuli.shape[1])


def pair_sequence(stim_a: Tensor, stim_b: Tensor, steps_a: int, steps_b: int) -> Tensor:
    """An online input (steps_a + steps_b, B, D): ``stim_a`` (B, D) for ``steps_a`` frames, then ``stim_b``
    (B, D, cast to A's dtype) for ``steps_b`` frames, contiguous."""
    if stim_a.shape != stim_b.shape:
        raise DataError(f"stim_a and stim_b must have the same shape, got {tuple(stim_a.shape)} and "
                        f"{tuple(stim_b.shape)}")
    b = stim_b.to(stim_a.dtype)
    return torch.cat([stim_a.unsqueeze(0).expand(steps_a, -1, -1), b.unsqueeze(0).expand(steps_b, -1, -1)]).contiguous()


# --------------------------------------------------------------------------- moving images


def _check_images(images: Any) -> np.ndarray:
    """(B, h, w) real images as a finite array (float64 for integer images, else their dtype)."""
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"images must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 3 or 0 in arr.shape:
        raise DataError(f"images must have shape (B, h, w), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise DataError("images contain NaN or Inf")
    return arr


def _sequence(images: np.ndarray, steps: int, transform: Callable[[np.ndarray, int], np.ndarray],
              is_identity: Callable[[int], bool]) -> np.ndarray:
    n, h, w = images.shape
    out = np.empty((steps, n, h * w), dtype=images.dtype)
    for t in range(steps):
        for i in range(n):
            out[t, i] = (images[i].copy() if is_identity(t) else transform(images[i], t)).reshape(-1)
    return out


def rotating_sequence(images: Any, degrees_per_step: float, steps: int, *, mode: str = "constant") -> np.ndarray:
    """Frames of images rotating about their centres: (B, h, w) → (steps, B, h·w).

    Frame t (0-based, the input of step t + 1) is each image rotated by t·``degrees_per_step`` degrees
    (counter-clockwise) with ``scipy.ndimage.rotate(reshape=False, order=1, mode=mode)``; corners rotated in
    from outside are filled per ``mode`` (default 0). Angles that are whole turns give exact copies. The
    dtype is the images' (float64 for integer images).
    """
    arr = _check_images(images)
    steps = positive_int(steps, "steps")
    rate = float(degrees_per_step)
    if not math.isfinite(rate):
        raise ConfigError(f"degrees_per_step must be finite, got {degrees_per_step!r}")
    n, h, w = arr.shape
    # each distinct angle is rotated once, for the whole batch (a 1000-step sequence repeats every 360°)
    angles, frame_angle = np.unique((np.arange(steps) * rate) % 360.0, return_inverse=True)
    table = np.stack([arr.copy() if angle == 0.0 else
                      ndimage.rotate(arr, angle, axes=(2, 1), reshape=False, order=1, mode=mode)
                      for angle in angles])
    return table[frame_angle].reshape(steps, n, h * w)


def shifting_sequence(images: Any, pixels_per_step: float | Iterable[float], steps: int, *,
                      mode: str = "constant") -> np.ndarray:
    """Frames of images translating at constant velocity: (B, h, w) → (steps, B, h·w).

    ``pixels_per_step``: a number (shift along the width, to the right) or a pair (rows down, columns
    right). Frame t (0-based) is each image shifted by t·``pixels_per_step`` with
    ``scipy.ndimage.shift(order=1, mode=mode)``; pixels shifted in are filled per ``mode`` (default 0,
    "grid-wrap" wraps around). Frame 0 is an exact copy. The dtype is the images' (float64 for integers).
    """
    arr = _check_images(images)
    steps = positive_int(steps, "steps")
    try:
        velocity = np.broadcast_to(np.asarray(pixels_per_step, dtype=np.float64), (2,)).copy()
    except (TypeError, ValueError):
        raise ConfigError(f"pixels_per_step must be a number or a pair (rows, columns), "
                          f"got {pixels_per_step!r}") from None
    if np.ndim(pixels_per_step) == 0:
        velocity = np.array([0.0, float(pixels_per_step)])
    if not np.isfinite(velocity).all():
        raise ConfigError(f"pixels_per_step must be finite, got {pixels_per_step!r}")
    return _sequence(arr, steps, lambda image, t: ndimage.shift(image, t * velocity, order=1, mode=mode),
                     lambda t: t == 0 or not velocity.any())


# --------------------------------------------------------------------------- MNIST digits


def digit_images(images: Any) -> np.ndarray:
    """MNIST images (N, 28, 28) or (N, 784) as a finite float32 array (N, 28, 28), else ``DataError``."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2 and images.shape[1] == DIGIT_SIDE * DIGIT_SIDE:
        images = images.reshape(-1, DIGIT_SIDE, DIGIT_SIDE)
    if images.ndim != 3 or images.shape[1:] != (DIGIT_SIDE, DIGIT_SIDE) or images.shape[0] == 0:
        raise DataError(f"expected MNIST images (N, 28, 28) or (N, 784), got shape {images.shape}")
    if not np.isfinite(images).all():
        raise DataError("images contain NaN or Inf")
    return images


def rotate_images(images: Any, degrees: float) -> np.ndarray:
    """Rotate each (28, 28) image about its centre by ``degrees`` (counter-clockwise, bilinear, zero fill);
    returns (N, 784) float32 clipped to [0, 1]."""
    images = digit_images(images)
    out = ndimage.rotate(images, float(degrees), axes=(2, 1), reshape=False, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0).reshape(len(images), -1).astype(np.float32)


def shift_images(images: Any, max_shift: int = 6, seed: int = 0) -> np.ndarray:
    """Translate each image by integer offsets drawn uniformly from ±``max_shift`` pixels per axis (zero fill,
    ``np.random.default_rng(seed)``): (N, 784) float32."""
    images = digit_images(images)
    side = DIGIT_SIDE
    rng = np.random.default_rng(seed)
    out = np.zeros_like(images)
    for i, (dy, dx) in enumerate(rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))):
        src = images[i, max(0, -dy):side - max(0, dy), max(0, -dx):side - max(0, dx)]
        out[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out.reshape(len(images), -1)


def rotating_frames(images: Any, steps: int, degrees_per_step: float = 1.0) -> np.ndarray:
    """An online input: frame t shows the digits rotated by t·``degrees_per_step``: (steps, N, 784) float32
    (:func:`rotating_sequence` on MNIST-shaped images)."""
    return rotating_sequence(digit_images(images), degrees_per_step, steps).astype(np.float32, copy=False)
