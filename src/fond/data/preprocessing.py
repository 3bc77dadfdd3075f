"""The transform from raw images to a model's inputs, recorded with every run that trains on images.

A model trained on whitened patches sees nothing like a raw photo: to encode a user's own images the same
way, the transform must travel with the model. ``Preprocessing`` is that record (a frozen dataclass, JSON
in the run's ``config.json``, no pickle) and applies it:

* ``kind="whitened"`` (``natural<N>``, folders of images): each image in grey, whitened
  (``fond.data.whiten``, roll-off ``f0``), ``patch_size``² patches with std ≥ ``min_std`` drawn at random,
  times the run's global ``scale`` (the factor that gave its training patches std 1);
* ``kind="mnist"`` (the MNIST specs): 28×28 digits in [0, 1] (8-bit images divided by 255), flattened, the
  mean training digit subtracted where ``centre``.

``input_std`` is the overall std of the training inputs: ``far_from_training(x)`` names inputs of another
kind in one line (unwhitened photos are ~10× off; a forgotten scale or centring shows the same way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from fond.errors import DataError

__all__ = ["KINDS", "Preprocessing", "far_from_training", "input_offset"]

KINDS = ("whitened", "mnist")
#: inputs whose overall std is this far (either way) from the training inputs' are called another kind
STD_RATIO_WARNING = 3.0


@dataclass(frozen=True)
class Preprocessing:
    """How a run turned images into inputs. ``kind``: one of ``KINDS`` (see the module docstring)."""

    kind: str
    input_std: float
    patch_size: int | None = None
    f0: float | None = None
    min_std: float | None = None
    scale: float | None = None
    centre: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"preprocessing kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (isinstance(self.input_std, (int, float)) and math.isfinite(self.input_std) and self.input_std > 0):
            raise DataError(f"preprocessing input_std must be a finite number > 0, got {self.input_std!r}")
        if self.kind == "whitened":
            for name in ("patch_size", "f0", "min_std", "scale"):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or value < 0 or (name != "min_std" and value == 0):
                    raise DataError(f"whitened preprocessing needs a finite {name} > 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        """The record of ``to_dict`` (e.g. read from JSON); one ``DataError`` line for anything else."""
        if not isinstance(values, dict):
            raise DataError(f"preprocessing must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown or "kind" not in values or "input_std" not in values:
            raise DataError(f"preprocessing record: unknown key {unknown[0]!r}" if unknown
                            else "preprocessing record needs 'kind' and 'input_std'")
        return cls(**values)

    def inputs_from_images(self, images: Sequence[np.ndarray], n: int = 5000, seed: int = 0) -> np.ndarray:
        """Model inputs (N, D) float32 from raw images (each (H, W) grey or (H, W, 3|4) colour, floats in
        [0, 1] or 8-bit integers): ``n`` random patches for "whitened", one row per digit for "mnist"."""
        grey = [_grey(image, i) for i, image in enumerate(images)]
        if not grey:
            raise DataError("no images given")
        if self.kind == "mnist":
            return self._digits(grey)
        return self._patches(grey, n, seed)

    def far_from_training(self, x: np.ndarray) -> str | None:
        """One line saying how inputs x (N, D) differ from the training inputs, or None where they do not."""
        return far_from_training(x, self.input_std, self.describe())

    def describe(self) -> str:
        if self.kind == "mnist":
            return "MNIST digits in [0, 1]" + (" minus the mean training digit" if self.centre else "")
        return (f"whitened {self.patch_size}×{self.patch_size} patches (roll-off f0 {self.f0:g}) scaled by "
                f"{self.scale:.4g}")

    def _digits(self, grey: list[np.ndarray]) -> np.ndarray:
        from fond.data.mnist import MNIST_SHAPE, mnist_mean

        bad = [i for i, image in enumerate(grey) if image.shape != MNIST_SHAPE]
        if bad:
            raise DataError(f"image {bad[0]} has shape {grey[bad[0]].shape}: this model reads "
                            f"{MNIST_SHAPE[0]}×{MNIST_SHAPE[1]} digits")
        rows = np.stack([image.reshape(-1) for image in grey]).astype(np.float32)
        return np.ascontiguousarray(rows - mnist_mean() if self.centre else rows)

    def _patches(self, grey: list[np.ndarray], n: int, seed: int) -> np.ndarray:
        from fond.data.natural import extract_patches, whiten

        size = int(self.patch_size)
        small = [i for i, image in enumerate(grey) if min(image.shape) < max(size, 8)]
        if small:
            raise DataError(f"image {small[0]} ({grey[small[0]].shape[0]}×{grey[small[0]].shape[1]}) is smaller "
                            f"than the model's {size}×{size} patches")
        whitened = [whiten(image, self.f0) for image in grey]
        patches = extract_patches(whitened, size, n, seed, min_std=float(self.min_std))
        return np.ascontiguousarray(patches * np.float32(self.scale), dtype=np.float32)


def input_offset(record: dict[str, Any] | Preprocessing | None) -> np.ndarray | None:
    """The vector a run's preprocessing ``record`` subtracted from every input (D,) float32 — the mean training
    digit for centred MNIST — so that ``x + offset`` are the images as they were; None where it subtracted none
    (raw digits, whitened patches, no record)."""
    if record is None:
        return None
    record = record if isinstance(record, Preprocessing) else Preprocessing.from_dict(dict(record))
    if record.kind != "mnist" or not record.centre:
        return None
    from fond.data.mnist import mnist_mean

    return mnist_mean()


def far_from_training(x: np.ndarray, input_std: float, trained_on: str | None = None) -> str | None:
    """One line when the overall std of inputs x (N, D) is more than ``STD_RATIO_WARNING``× off the training
    inputs' ``input_std`` (``trained_on``: what those were, for the message), else None."""
    std = float(np.asarray(x, dtype=np.float64).std())
    ratio = std / input_std
    if 1.0 / STD_RATIO_WARNING <= ratio <= STD_RATIO_WARNING:
        return None
    what = "" if trained_on is None else f" (the model was trained on {trained_on})"
    return (f"these inputs have std {std:.3g}, {ratio:.3g}× the training inputs' {input_std:.3g}: inputs of "
            f"another kind{what}")


def _grey(image: np.ndarray, index: int) -> np.ndarray:
    """One image as a 2-D float64 array in [0, 1]."""
    from fond.data.natural import to_gray_float

    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf" or arr.ndim not in (2, 3) or arr.size == 0:
        raise DataError(f"image {index}: expected a 2-D grey or (H, W, 3|4) colour array of numbers, got "
                        f"{arr.dtype} {arr.shape}")
    if arr.dtype.kind in "biu":  # 8- or 16-bit pixel values
        top = int(arr.max()) if arr.size else 0
        if arr.min() < 0 or top > 65535:
            raise DataError(f"image {index}: integer pixels must lie in 0..255 or 0..65535")
        arr = arr / (255.0 if top <= 255 else 65535.0)
    return to_gray_float(arr)
