"""Largest component per label and hole filling on constructed label volumes."""

import numpy as np
import pytest
from scipy import ndimage

from inference.postprocess import fill_holes, keep_largest_components, postprocess


def test_small_blobs_are_removed_per_label():
    labels = np.zeros((10, 12, 30), dtype=np.uint8)
    labels[2:8, 2:8, 2:8] = 3  # right VM
    labels[0, 0, 0] = 3  # stray blob of the same label
    labels[2:8, 2:8, 20:26] = 103  # left VM: another label, kept
    labels[9, 11, 29] = 103
    out = keep_largest_components(labels)
    assert out[0, 0, 0] == 0 and out[9, 11, 29] == 0
    assert (out == 3).sum() == 216 and (out == 103).sum() == 216
    assert labels[0, 0, 0] == 3  # input untouched


def test_connectivity_decides_about_diagonal_neighbours():
    labels = np.zeros((4, 6, 6), dtype=np.uint8)
    labels[0:2, 0:2, 0:2] = 13
    labels[2:4, 2:4, 2:4] = 13  # touches the first cube only at a corner
    labels[3, 3, 3] = 0  # the second piece is the smaller one
    assert (keep_largest_components(labels, connectivity=3) == 13).sum() == 15
    assert (keep_largest_components(labels, connectivity=1) == 13).sum() == 8


def shell(shape, outer, label, dtype=np.uint8):
    labels = np.zeros(shape, dtype=dtype)
    (k0, k1), (j0, j1), (i0, i1) = outer
    labels[k0:k1, j0:j1, i0:i1] = label
    labels[k0 + 1 : k1 - 1, j0 + 1 : j1 - 1, i0 + 1 : i1 - 1] = 0
    return labels


def test_enclosed_cavity_is_filled_and_other_labels_kept():
    labels = shell((9, 9, 9), ((1, 8), (1, 8), (1, 8)), 2)
    labels[4, 4, 4] = 5  # another muscle inside the cavity stays
    out = fill_holes(labels)
    assert (out[2:7, 2:7, 2:7] == 2).sum() == 124 and out[4, 4, 4] == 5
    assert out[0].max() == 0  # nothing outside changes


def test_open_channel_is_filled_only_slice_by_slice():
    labels = np.zeros((6, 7, 7), dtype=np.uint8)
    labels[:, 1:6, 1:6] = 9
    labels[:, 3, 3] = 0  # a channel through every slice (a vessel), open at both ends
    assert fill_holes(labels)[2, 3, 3] == 0
    assert (fill_holes(labels, per_slice=True)[:, 3, 3] == 9).all()


def test_nested_hole_goes_to_the_inner_muscle():
    labels = shell((11, 11, 11), ((0, 11), (0, 11), (0, 11)), 1, dtype=np.uint16)
    inner = shell((11, 11, 11), ((3, 8), (3, 8), (3, 8)), 4, dtype=np.uint16)
    labels[inner == 4] = 4
    out = fill_holes(labels)
    assert out[5, 5, 5] == 4  # the inner muscle's own cavity
    assert out[1, 1, 1] == 1  # the space between the shells belongs to the outer one
    assert out.dtype == np.uint16


def test_stray_voxel_inside_a_muscle_becomes_that_muscle():
    labels = np.zeros((8, 8, 20), dtype=np.uint8)
    labels[1:7, 1:7, 1:7] = 1
    labels[1:7, 1:7, 10:16] = 7
    labels[3, 3, 3] = 7  # a wrongly labelled voxel inside muscle 1
    out = postprocess(labels)
    assert out[3, 3, 3] == 1
    assert (out == 1).sum() == 216 and (out == 7).sum() == 216


def test_clean_volume_is_unchanged():
    labels = np.zeros((5, 6, 7), dtype=np.uint8)
    labels[1:4, 1:3, 1:6] = 1
    labels[1:4, 3:5, 1:6] = 101
    np.testing.assert_array_equal(postprocess(labels), labels)


@pytest.mark.parametrize("block", [(1, 1, 1), (2, 3, 2), (4, 8, 8)])
@pytest.mark.parametrize("connectivity", [1, 3])
def test_coarse_search_equals_full_resolution_labelling(block, connectivity):
    rng = np.random.default_rng(block[1] + connectivity)
    noise = ndimage.gaussian_filter(rng.normal(size=(12, 20, 20)), 1.0)
    labels = np.digitize(noise, np.quantile(noise, [0.4, 0.55, 0.7, 0.85])).astype(np.uint8)
    labels[labels == 3] = 104
    structure = ndimage.generate_binary_structure(3, connectivity)
    expected = labels.copy()
    for value in np.unique(labels)[1:]:
        components, _ = ndimage.label(labels == value, structure)
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        expected[(labels == value) & (components != sizes.argmax())] = 0
    np.testing.assert_array_equal(keep_largest_components(labels, connectivity, block), expected)
