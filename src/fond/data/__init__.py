"""Data for FOND models: whitened natural-image patches and user data (.npy patches, image folders).

Every loader returns a :class:`PatchData` of float32 (N, D) arrays; every bad input raises
:class:`fond.errors.DataError` with a one-line message.
"""

from fond.data.files import load_data
from fond.data.natural import (
    BUNDLED_PHOTOS,
    VALIDATION_PHOTOS,
    PatchData,
    extract_patches,
    load_photo,
    natural_patches,
    whiten,
)

__all__ = [
    "BUNDLED_PHOTOS",
    "VALIDATION_PHOTOS",
    "PatchData",
    "extract_patches",
    "load_data",
    "load_photo",
    "natural_patches",
    "whiten",
]
