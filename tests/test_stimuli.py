"""Tests of fond.analysis.stimuli beyond those of the analyses that use them (gratings: test_gabor; moving
images: test_temporal; rotated and shifted digits: test_ood): contrast series, A-then-B sequences, digit checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fond.analysis.stimuli import contrast_series, digit_images, pair_sequence
from fond.errors import ConfigError, DataError


def test_contrast_series_is_contrast_major_and_sorted():
    """Row c·N + n is levels[c]·x[n], levels ascending whatever order they were given in."""
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    levels, batch = contrast_series(x, [2.0, 0.5, 1.0])
    np.testing.assert_array_equal(levels, [0.5, 1.0, 2.0])
    assert batch.shape == (6, 3) and batch.dtype == torch.float64
    for c, level in enumerate(levels):
        for n in range(2):
            torch.testing.assert_close(batch[c * 2 + n], level * x[n])


@pytest.mark.parametrize("contrasts, needle", [([1.0, 1.0], "two distinct"), ([0.0, 1.0], "positive"),
                                               ([[1.0, 2.0]], "1-D"), ([1.0, np.nan], "NaN")])
def test_contrast_series_refuses_bad_contrasts(contrasts, needle):
    with pytest.raises((ConfigError, DataError), match=needle):
        contrast_series(torch.ones(2, 3), contrasts)


def test_pair_sequence_shows_a_then_b():
    """Frames 0..steps_a−1 are A, the rest B (in A's dtype), as one contiguous (steps, B, D) tensor."""
    a = torch.zeros(2, 3)
    b = torch.ones(2, 3, dtype=torch.float64)
    sequence = pair_sequence(a, b, 3, 2)
    assert sequence.shape == (5, 2, 3) and sequence.dtype == torch.float32 and sequence.is_contiguous()
    assert (sequence[:3] == 0).all() and (sequence[3:] == 1).all()
    with pytest.raises(DataError, match="same shape"):
        pair_sequence(a, torch.ones(3, 3), 1, 1)


def test_digit_images_accepts_flat_or_square_digits_only():
    flat = np.zeros((2, 784))
    assert digit_images(flat).shape == (2, 28, 28) and digit_images(flat).dtype == np.float32
    with pytest.raises(DataError, match="28, 28"):
        digit_images(np.zeros((2, 27, 28)))
    with pytest.raises(DataError, match="NaN"):
        digit_images(np.full((1, 784), np.nan))
