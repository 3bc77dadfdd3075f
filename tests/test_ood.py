"""Out-of-distribution test sets and their evaluation (models trained on MNIST, tested elsewhere)."""

import json

import numpy as np
import pytest
import torch

from fond.analysis.ood import (
    OODResult,
    digits_8x8,
    natural_28,
    ood_evaluation,
    ood_sets,
    ood_table,
    plot_ood,
)
from fond.analysis.stimuli import rotate_images, rotating_frames, shift_images
from fond.config import ModelConfig
from fond.errors import DataError
from fond.models import build_model


def _bar(n=3):
    """Vertical bars: a rotation by 90° turns them into horizontal bars (a known answer)."""
    images = np.zeros((n, 28, 28), np.float32)
    images[:, 4:24, 13:15] = 1.0
    return images


def test_rotation_by_90_degrees_is_a_transpose_of_a_centred_bar():
    """Rotations must turn the digit about the image centre, not shift it."""
    rotated = rotate_images(_bar(), 90).reshape(-1, 28, 28)
    expected = np.zeros((28, 28), np.float32)
    expected[13:15, 4:24] = 1.0
    np.testing.assert_allclose(rotated[0], expected, atol=1e-5)
    np.testing.assert_allclose(rotate_images(_bar(), 360).reshape(-1, 28, 28), _bar(), atol=1e-4)


def test_shift_moves_mass_without_losing_it_when_it_fits():
    """A shifted digit keeps its pixels (the bar fits after a ±4 shift) and moves its centre of mass."""
    images = _bar(20)
    shifted = shift_images(images, max_shift=4, seed=1).reshape(-1, 28, 28)
    np.testing.assert_allclose(shifted.sum((1, 2)), images.sum((1, 2)))
    assert np.any(np.abs(shifted.mean(1).argmax(1) - 13) > 0)


def test_digits_8x8_sit_in_mnist_layout():
    """Upscaled 8×8 digits fill a 20×20 box with a 4-pixel margin, in [0, 1], with their labels."""
    images, labels = digits_8x8(50)
    grid = images.reshape(-1, 28, 28)
    assert images.shape == (50, 784) and labels.shape == (50,) and 0 <= images.min() and images.max() <= 1
    assert grid[:, :4].max() == 0 and grid[:, 24:].max() == 0 and grid[:, :, :4].max() == 0
    assert set(labels) <= set(range(10))


def test_natural_patches_are_scaled_like_digits():
    """Natural patches span [0, 1] per patch, as MNIST pixels do."""
    patches = natural_28(10)
    np.testing.assert_allclose(patches.min(1), 0, atol=1e-6)
    np.testing.assert_allclose(patches.max(1), 1, atol=1e-6)


def test_rotating_frames_turn_step_by_step():
    """Frame t is the image rotated by t·ω; a full turn repeats the first frame."""
    frames = rotating_frames(_bar(2), 5, degrees_per_step=90)
    assert frames.shape == (5, 2, 784)
    np.testing.assert_allclose(frames[1], rotate_images(_bar(2), 90))
    np.testing.assert_allclose(frames[4], frames[0])


def test_unknown_set_and_bad_images_are_named():
    """A typo in a set name or a wrong image shape is a one-line error."""
    with pytest.raises(DataError, match="unknown OOD set"):
        ood_sets(_bar(), sets=["rotated"])
    with pytest.raises(DataError, match="28, 28"):
        ood_sets(np.zeros((3, 10)))


def test_evaluation_reports_every_set_and_ranks_models(tmp_path):
    """Static and online sets go through one call; the table ranks models per set."""
    model = build_model(ModelConfig(n_inputs=784, n_latents=8, model="ipvae"), seed=0)
    sets = ood_sets(_bar(4), steps=6, sets=["mnist", "rotated-90", "rotating"])
    result = ood_evaluation(model, sets, steps=6)
    assert set(result.final) == {"mnist", "rotated-90", "rotating"}
    assert len(result.curves["rotating"]["r2"]) == 6
    json.dumps(result.to_dict())
    other = OODResult("other", 6, {k: {**v, "r2_rates": 2.0} for k, v in result.final.items()}, result.curves)
    table = ood_table({"ipvae": result, "other": other})
    assert all(best == "other" for best in table["best"].values())
    assert plot_ood({"ipvae": result}, tmp_path / "ood.png").is_file()
    with pytest.raises(DataError, match="frames"):
        ood_evaluation(model, {"rotating": torch.zeros(3, 2, 784).numpy()}, steps=6)


def test_plot_takes_models_without_the_online_set(tmp_path):
    """A point estimate (predictive coding) takes no online input: its results lack "rotating", and the figure
    still draws every set, with the models that have it (it raised KeyError when the first model had the set)."""
    model = build_model(ModelConfig(n_inputs=784, n_latents=8, model="ipvae"), seed=0)
    result = ood_evaluation(model, ood_sets(_bar(4), steps=6, sets=["mnist", "rotating"]), steps=6)
    static = OODResult("pc", 6, {"mnist": result.final["mnist"]}, {"mnist": result.curves["mnist"]})
    for order in ({"ipvae": result, "pc": static}, {"pc": static, "ipvae": result}):
        assert plot_ood(order, tmp_path / "ood.png").is_file()


def test_centre_is_subtracted_from_every_set_after_transforming():
    """Rotations act on raw digits (zero background); the centre is removed afterwards, from every set."""
    centre = np.full(784, 0.25, np.float32)
    plain = ood_sets(_bar(2), steps=3, sets=["rotated-90", "rotating"])
    centred = ood_sets(_bar(2), steps=3, sets=["rotated-90", "rotating"], centre=centre)
    for name in plain:
        np.testing.assert_allclose(centred[name], plain[name] - 0.25, atol=1e-6)
    with pytest.raises(DataError, match="784"):
        ood_sets(_bar(2), sets=["mnist"], centre=np.zeros(5))
