"""Mid-sagittal split from the image, mirroring, and exact round trips."""

import numpy as np
import pytest

from inference.legs import LegSplit, find_midline, split_legs


def two_legs(shape=(6, 40, 64), centres=(14, 37), radius=9.0, bridge=False):
    """Two bright discs (thighs) on a dark background, not centred in the matrix."""
    k, j, i = np.indices(shape)
    image = np.zeros(shape, dtype=np.float32)
    for c in centres:
        image[(j - 20) ** 2 + (i - c) ** 2 <= radius**2] = 100.0
    if bridge:  # a pelvis slice joining both legs
        image[0, 12:28, centres[0] : centres[1]] = 100.0
    return image + np.random.default_rng(0).uniform(0, 2, shape).astype(np.float32)


def test_midline_found_in_the_gap_not_the_matrix_centre():
    image = two_legs()
    midline, method = find_midline(image)
    assert method == "gap"
    assert 23 <= midline <= 28  # legs end at columns 23 and 28; matrix centre is 32
    assert midline == 26  # centre of the empty run 24..27


def test_midline_with_a_pelvis_slice_still_finds_the_valley():
    midline, method = find_midline(two_legs(bridge=True))
    assert method == "gap" and 23 <= midline <= 28


def test_no_gap_falls_back_to_centre_of_mass_with_a_warning():
    shape = (4, 30, 50)
    _, j, i = np.indices(shape)
    image = (((j - 15) ** 2 + (i - 20) ** 2) <= 64).astype(np.float32) * 50
    with pytest.warns(UserWarning, match="centre of mass"):
        midline, method = find_midline(image)
    assert method == "centre_of_mass" and midline in (20, 21)


@pytest.mark.parametrize("left_is_high_i", [True, False])
@pytest.mark.parametrize("midline", [10, 25, 31])
def test_split_then_join_is_exact(left_is_high_i, midline):
    volume = np.random.default_rng(1).normal(size=(2, 5, 7, 40))
    split = LegSplit(columns=40, midline=midline, left_is_high_i=left_is_high_i)
    right, left = split.split(volume)
    assert right.shape == left.shape == (2, 5, 7, max(midline, 40 - midline))
    np.testing.assert_array_equal(split.join(right, left), volume)


def test_left_leg_is_mirrored_to_look_like_the_right():
    image = two_legs(centres=(14, 37))  # symmetric about the split between columns 25 and 26
    image[:, 20, 10] = 500.0  # a lateral marker on the right (low-i) leg
    image[:, 20, 41] = 500.0  # its mirror image on the left leg
    split, method = split_legs(image)
    assert method == "gap" and split.midline == 26
    right, left = split.split(image)
    assert right.shape[-1] == 38  # the 26-column right half is padded by 12 on its lateral side
    assert right[0, 20, 22] == 500.0 and left[0, 20, 22] == 500.0
    np.testing.assert_allclose(right > 50, left > 50)
    # medial side last: the column next to the midline is background in both halves
    assert right[:, :, -1].max() < 50 and left[:, :, -1].max() < 50


def test_right_leg_is_the_high_half_when_the_image_is_mirrored():
    volume = np.arange(10.0)[None, None, :]
    right, left = LegSplit(10, 4, left_is_high_i=False).split(volume)
    np.testing.assert_array_equal(right[0, 0], [9, 8, 7, 6, 5, 4])  # flipped back, midline last
    np.testing.assert_array_equal(left[0, 0], [0, 0, 0, 1, 2, 3])  # padded on the lateral side


def test_labels_merge_with_left_offset_and_round_trip():
    rng = np.random.default_rng(2)
    combined = np.zeros((4, 6, 30), dtype=np.uint8)
    combined[..., :12] = rng.integers(0, 19, size=(4, 6, 12))
    right_part = rng.integers(0, 19, size=(4, 6, 18))
    combined[..., 12:] = np.where(right_part > 0, right_part + 100, 0)
    split = LegSplit(30, 12)
    right, left = split.split_labels(combined)
    assert right.max() <= 18 and left.max() <= 18
    merged = split.merge_labels(right, left)
    np.testing.assert_array_equal(merged, combined)
    assert merged.dtype == np.uint8


def test_merge_labels_puts_left_predictions_at_100_plus_n():
    split = LegSplit(8, 4)
    right = np.array([[[0, 1, 2, 3]]])
    left = np.array([[[0, 0, 5, 18]]])  # mirrored: medial (column 4 of the volume) last
    np.testing.assert_array_equal(split.merge_labels(right, left), [[[0, 1, 2, 3, 118, 105, 0, 0]]])


def test_split_labels_refuses_labels_on_the_wrong_side():
    combined = np.zeros((1, 1, 10), dtype=np.uint8)
    combined[0, 0, 2] = 103
    with pytest.raises(ValueError, match="wrong side"):
        LegSplit(10, 5).split_labels(combined)


def test_midline_must_leave_two_halves():
    with pytest.raises(ValueError, match="both sides"):
        LegSplit(10, 0)
