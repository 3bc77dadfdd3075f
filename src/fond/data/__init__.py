"""Data for FOND models: whitened natural-image patches (grey and colour), MNIST, CIFAR-10, CelebA and user data
(.npy patches, image folders).

Every loader returns one container, :class:`PatchData` of float32 (N, D) arrays (colour rows channels last), and
grey and colour images go through one whitening (:func:`whiten_channels`); every bad input raises
:class:`fond.errors.DataError` with a one-line message. :class:`Preprocessing` is the record of how raw images
became a run's inputs, saved with the run and applied to a user's own images.
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
    whiten_channels,
)
from fond.data.preprocessing import Preprocessing

__all__ = [
    "BUNDLED_PHOTOS",
    "VALIDATION_PHOTOS",
    "PatchData",
    "Preprocessing",
    "extract_patches",
    "load_data",
    "load_photo",
    "natural_patches",
    "whiten",
    "whiten_channels",
]
