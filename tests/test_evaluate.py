"""``myonode evaluate``: overlap, surface distances and Bland-Altman on constructed cases."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial import cKDTree

from common.geometry import VolumeGeometry
from common.muscles import load_muscles
from dicom_node.phantom.study import PhantomOptions, make_phantom
from inference.evaluate import (
    add_evaluate_arguments,
    bland_altman,
    boundary,
    evaluate,
    run_evaluate,
    score_labels,
    score_masks,
)

SPACING = (2.0, 1.0, 0.8)  # (dz, dy, dx): the column axis has the smallest step
GRID = VolumeGeometry((12, 16, 20), SPACING, (-8.0, -6.0, 30.0), (1, 0, 0), (0, 1, 0), (0, 0, 1))


def _write_case(
    folder: Path,
    labels: np.ndarray,
    ff: dict[tuple[str, str], float],
    json_name: str = "results.json",
    geometry: VolumeGeometry = GRID,
) -> Path:
    """A case folder as process/phantom write it: NIfTI of [k,j,i] transposed, plus JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = geometry.affine_ras_ijk()
    image = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, folder / "labels.nii.gz")
    muscles = [{"code": c, "side": s, "ff_mean_pct": v} for (c, s), v in ff.items()]
    (folder / json_name).write_text(json.dumps({"muscles": muscles}), encoding="utf-8")
    return folder


def _two_muscles() -> np.ndarray:
    labels = np.zeros(GRID.shape, dtype=np.uint8)
    labels[2:9, 3:10, 2:9] = 1  # right RF
    labels[3:10, 4:12, 11:18] = 102  # left VL
    return labels


def _brute_force(a: np.ndarray, b: np.ndarray, spacing) -> tuple[float, float]:
    """ASSD and HD95 from boundary point clouds with a k-d tree (independent of the EDT)."""
    pa = np.argwhere(boundary(a)) * np.asarray(spacing)
    pb = np.argwhere(boundary(b)) * np.asarray(spacing)
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    assd = (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)
    return assd, max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))


def test_boundary_is_face_neighbour_based_and_the_volume_edge_counts_as_outside():
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[1:4, 1:4, 1:4] = True
    mask[1, 1, 1] = False  # only a corner (edge-diagonal) neighbour of the centre is gone
    surface = boundary(mask)
    assert not surface[2, 2, 2]
    assert surface.sum() == mask.sum() - 1
    assert boundary(np.ones((3, 3, 3), dtype=bool)).sum() == 26  # all but the centre


def test_identical_labels_give_dice_one_and_zero_distance():
    labels = _two_muscles()
    scores = score_labels(labels, labels.copy(), SPACING, [1, 2, 101, 102])
    assert sorted(scores) == [1, 102]
    for score in scores.values():
        assert score.dice == 1.0
        assert score.assd_mm == 0.0
        assert score.hd95_mm == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_box_shifted_by_one_voxel_has_the_analytic_assd(axis):
    """Box of (a, b, c) voxels shifted by one along ``axis`` of step s, s smaller or equal
    to the other steps: only the two end faces move. Of each box's boundary (2bc + (a-2)R
    voxels, R the ring 2(b+c)-4 of the cross-section) the leading full face and the trailing
    face's inner (b-2)(c-2) voxels are s away; the ring on the shared slices is on both."""
    spacing = [2.0, 2.0, 2.0]
    spacing[axis] = 0.8
    size = [6, 7, 8]
    truth = np.zeros((12, 13, 14), dtype=bool)
    truth[2 : 2 + size[0], 2 : 2 + size[1], 2 : 2 + size[2]] = True
    pred = np.roll(truth, 1, axis=axis)
    a = size[axis]
    b, c = [n for i, n in enumerate(size) if i != axis]
    ring = 2 * (b + c) - 4
    expected = 0.8 * (b * c + (b - 2) * (c - 2)) / (2 * b * c + (a - 2) * ring)
    score = score_masks(pred, truth, spacing)
    assert score.assd_mm == pytest.approx(expected, rel=1e-9)
    assert score.hd95_mm == pytest.approx(0.8)
    assert score.dice == pytest.approx((a - 1) / a)


def test_distances_match_a_brute_force_point_cloud_search():
    k, j, i = np.indices((14, 18, 16))
    truth = ((k - 7) / 5.0) ** 2 + ((j - 9) / 6.5) ** 2 + ((i - 8) / 5.5) ** 2 <= 1
    pred = ((k - 6.4) / 4.6) ** 2 + ((j - 9.7) / 7.0) ** 2 + ((i - 7.2) / 6.0) ** 2 <= 1
    spacing = (3.0, 0.9, 1.3)
    score = score_masks(pred, truth, spacing)
    assd, hd95 = _brute_force(pred, truth, spacing)
    assert score.assd_mm == pytest.approx(assd, rel=1e-9)
    assert score.hd95_mm == pytest.approx(hd95, rel=1e-9)
    assert 0 < score.dice < 1
    # Cropping to the bounding boxes must not change a thing: the same masks inside a
    # larger volume with other labels around them.
    big_pred = np.zeros((30, 40, 36), dtype=np.uint8)
    big_truth = np.zeros_like(big_pred)
    big_pred[5:19, 11:29, 9:25][pred] = 7
    big_truth[5:19, 11:29, 9:25][truth] = 7
    big_pred[25:28, 2:6, 2:6] = 3
    big_truth[0:3, 30:35, 30:34] = 3
    scores = score_labels(big_pred, big_truth, spacing, [3, 7])
    assert scores[7] == score
    assert scores[3].dice == 0.0 and scores[3].assd_mm > 0


def test_label_missing_on_one_side_scores_zero_without_distances():
    truth = _two_muscles()
    pred = truth.copy()
    pred[pred == 102] = 0
    scores = score_labels(pred, truth, SPACING, [1, 102])
    assert scores[102].dice == 0.0
    assert scores[102].assd_mm is None and scores[102].hd95_mm is None
    assert (scores[102].voxels_pred, scores[102].voxels_truth) == (0, int((truth == 102).sum()))


def test_bland_altman_on_known_numbers():
    diffs = [1.0, 2.0, 3.0, 4.0, 5.0]
    result = bland_altman(diffs)
    sd = np.sqrt(2.5)  # sample SD of 1..5
    assert result.n == 5
    assert result.bias == pytest.approx(3.0)
    assert result.sd == pytest.approx(sd)
    assert result.loa == pytest.approx((3.0 - 1.96 * sd, 3.0 + 1.96 * sd))
    assert bland_altman([2.5]).loa is None and bland_altman([2.5]).bias == 2.5
    assert bland_altman([]).bias is None


def test_case_report_fields_and_ff_agreement(tmp_path):
    truth = _two_muscles()
    pred = truth.copy()
    pred[2, 3:10, 2:9] = 0  # right RF loses its first slice
    pred[5, 5, 5] = 150  # a value outside the muscle table
    _write_case(tmp_path / "truth", truth, {("RF", "right"): 10.0, ("VL", "left"): 20.0},
                "truth.json")
    _write_case(tmp_path / "pred", pred, {("RF", "right"): 12.0, ("VL", "left"): 19.0})
    report = evaluate(tmp_path / "pred", tmp_path / "truth")
    (case,) = report["cases"]
    rf, vl = case["muscles"]
    assert (rf["code"], rf["side"], vl["code"], vl["side"]) == ("RF", "right", "VL", "left")
    voxel_ml = np.prod(SPACING) / 1000
    assert rf["volume_truth_ml"] == pytest.approx(7 * 7 * 7 * voxel_ml)
    assert rf["volume_pred_ml"] == pytest.approx(6 * 7 * 7 * voxel_ml - voxel_ml)
    assert rf["dice"] == pytest.approx(2 * 293 / (293 + 343))
    assert vl["dice"] == 1.0 and vl["assd_mm"] == 0.0
    assert rf["ff_diff_pct"] == pytest.approx(2.0) and vl["ff_diff_pct"] == pytest.approx(-1.0)
    assert case["ignored_labels"] == [150]
    assert case["spacing_mm"] == pytest.approx([0.8, 1.0, 2.0])  # NIfTI axes i, j, k
    summary = report["summary"]
    assert summary["ff_bias_pct"] == pytest.approx(0.5)
    sd = np.std([2.0, -1.0], ddof=1)
    assert summary["ff_loa_pct"] == pytest.approx([0.5 - 1.96 * sd, 0.5 + 1.96 * sd])
    assert summary["n"] == 2
    assert summary["volume"]["bias_ml"] == pytest.approx(-50 * voxel_ml / 2)
    assert summary["mean_dice_by_muscle"] == pytest.approx({"RF": rf["dice"], "VL": 1.0})


def test_missing_muscle_is_flagged_and_left_out_of_ff_agreement(tmp_path):
    truth = _two_muscles()
    pred = truth.copy()
    pred[pred == 102] = 0
    _write_case(tmp_path / "t", truth, {("RF", "right"): 10.0, ("VL", "left"): 20.0})
    _write_case(tmp_path / "p", pred, {("RF", "right"): 11.0, ("VL", "left"): None})
    report = evaluate(tmp_path / "p", tmp_path / "t")
    vl = report["cases"][0]["muscles"][1]
    assert vl["flag"] == "missing_in_pred"
    assert vl["dice"] == 0.0 and vl["assd_mm"] is None and vl["ff_diff_pct"] is None
    assert report["cases"][0]["mean_dice"] == pytest.approx(0.5)
    assert report["summary"]["missing_in_pred"] == 1
    assert report["summary"]["n"] == 1 and report["summary"]["ff_bias_pct"] == pytest.approx(1.0)


def test_grid_mismatch_is_an_error(tmp_path):
    labels = _two_muscles()
    _write_case(tmp_path / "t", labels, {})
    moved = VolumeGeometry(GRID.shape, SPACING, (-8.0, -6.0, 30.01), GRID.row_dir,
                           GRID.col_dir, GRID.slice_dir)
    _write_case(tmp_path / "p", labels, {}, geometry=moved)
    with pytest.raises(ValueError, match="affines differ"):
        evaluate(tmp_path / "p", tmp_path / "t")
    narrower = VolumeGeometry((12, 16, 19), SPACING, GRID.origin, GRID.row_dir, GRID.col_dir,
                              GRID.slice_dir)
    _write_case(tmp_path / "p", labels[:, :, :-1], {}, geometry=narrower)
    with pytest.raises(ValueError, match="grid"):
        evaluate(tmp_path / "p", tmp_path / "t")


def test_missing_files_are_clear_errors(tmp_path):
    labels = _two_muscles()
    _write_case(tmp_path / "t", labels, {})
    _write_case(tmp_path / "p", labels, {})
    (tmp_path / "p" / "results.json").unlink()
    with pytest.raises(FileNotFoundError, match="results.json"):
        evaluate(tmp_path / "p", tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(tmp_path / "nowhere", tmp_path / "t")
    (tmp_path / "p" / "results.json").write_text("{\"muscles\": 3}")
    with pytest.raises(ValueError, match="'muscles' list"):
        evaluate(tmp_path / "p", tmp_path / "t")


def test_folder_of_cases_is_matched_by_name_with_one_bland_altman(tmp_path):
    truth = _two_muscles()
    ff_truth = {("RF", "right"): 10.0, ("VL", "left"): 20.0}
    for name, ff_pred in (("case_a", (11.0, 21.0)), ("case_b", (9.0, 23.0))):
        _write_case(tmp_path / "truth" / name, truth, ff_truth, "truth.json")
        _write_case(tmp_path / "pred" / name, truth,
                    {("RF", "right"): ff_pred[0], ("VL", "left"): ff_pred[1]})
    _write_case(tmp_path / "pred" / "case_c", truth, ff_truth)
    report = evaluate(tmp_path / "pred", tmp_path / "truth")
    assert [c["case"] for c in report["cases"]] == ["case_a", "case_b"]
    diffs = [1.0, 1.0, -1.0, 3.0]
    summary = report["summary"]
    assert summary["n"] == 4
    assert summary["ff_bias_pct"] == pytest.approx(np.mean(diffs))
    sd = np.std(diffs, ddof=1)
    assert summary["ff_loa_pct"] == pytest.approx([1.0 - 1.96 * sd, 1.0 + 1.96 * sd])
    assert summary["unmatched_predictions"] == ["case_c"]
    (tmp_path / "pred" / "case_b" / "labels.nii.gz").unlink()
    with pytest.raises(ValueError, match="case_b"):
        evaluate(tmp_path / "pred", tmp_path / "truth")


def test_cli_json_and_table_on_phantom_truth(tmp_path, capsys):
    """The phantom's own truth folder as reference, its truth as a perfect prediction."""
    make_phantom(tmp_path / "ph", PhantomOptions(stacks=1, slices=8, matrix=32))
    truth_dir = tmp_path / "ph" / "truth"
    truth_json = json.loads((truth_dir / "truth.json").read_text())
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    (pred_dir / "labels.nii.gz").write_bytes((truth_dir / "labels.nii.gz").read_bytes())
    for m in truth_json["muscles"]:
        m["ff_mean_pct"] += 1.5
    (pred_dir / "results.json").write_text(json.dumps(truth_json))

    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    assert run_evaluate(parser.parse_args([str(pred_dir), str(truth_dir), "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    muscles = report["cases"][0]["muscles"]
    muscle_order = [m.code for m in load_muscles().muscles]
    assert [(m["code"], m["side"]) for m in muscles] == sorted(
        ((m["code"], m["side"]) for m in truth_json["muscles"]),
        key=lambda cs: (muscle_order.index(cs[0]), cs[1] == "left"),
    )
    assert all(m["dice"] == 1.0 and m["assd_mm"] == 0.0 for m in muscles)
    assert report["summary"]["mean_dice"] == 1.0
    assert report["summary"]["ff_bias_pct"] == pytest.approx(1.5)
    assert report["summary"]["ff_loa_pct"] == pytest.approx([1.5, 1.5], abs=1e-9)

    assert run_evaluate(parser.parse_args([str(pred_dir), str(truth_dir)])) == 0
    table = capsys.readouterr().out
    assert "RF     right  1.000   0.00   0.00" in table
    assert "FF bias 1.50 %" in table
