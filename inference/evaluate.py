"""``myonode evaluate``: a segmentation and its FF figures against a site's own reference.

A site that adopts a model should check it on its own scans and manual labels before it
trusts the numbers. This module reports what Huysmans 2023 (seed 000, 2.4 and Figure 9)
reports: Dice and average symmetric surface distance (ASSD) per muscle, plus HD95, and a
Bland-Altman analysis of per-muscle FF% (and volume) from the model against the reference.
Unlike the seed we score each side separately (label n = right, 100 + n = left), because a
model that swaps or misses one leg must not hide behind the other.

Inputs are folders as ``myonode process`` and ``myonode phantom`` write them: ``labels.nii.gz``
(combined label volume) with ``results.json`` (prediction, or a site's quantification of its
manual labels) or ``truth.json`` (phantom). A folder of case subfolders is one test set.
The two label volumes must share their grid: resampling would change the very overlap being
measured, so a mismatch is an error, never silently fixed.

Surface distances: the boundary of a label is its voxels with a face neighbour outside it
(the volume edge counts as outside). For every boundary voxel of either label the Euclidean
distance (mm, voxel spacing from the affine) to the nearest boundary voxel of the other is
read from ``scipy.ndimage.distance_transform_edt``; ASSD averages both sets together, HD95
is the larger of the two directed 95th percentiles. Each label is scored inside the union
of its two bounding boxes only: every boundary voxel of both labels lies inside that box, so
the distances are exact, and the work scales with the muscle, not with the volume.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from common.muscles import MuscleTable, load_muscles

LABELS_NAME = "labels.nii.gz"
PRED_JSON = "results.json"
TRUTH_JSONS = ("truth.json", "results.json")  # phantom truth first, then a site's own
GRID_TOLERANCE_MM = 1e-3
ORTHOGONALITY_TOLERANCE = 1e-3  # |cos| between voxel axes
# Bland-Altman limits of agreement: bias +- 1.96 SD of the differences (Bland & Altman 1986).
LOA_Z = 1.96
HD_PERCENTILE = 95.0
MAX_LABEL_VALUE = 65535  # label volumes are read as uint16
FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class LabelScore:
    """Overlap and surface agreement of one label; distances are None when either is empty."""

    voxels_pred: int
    voxels_truth: int
    intersection: int
    dice: float
    assd_mm: float | None
    hd95_mm: float | None


@dataclass(frozen=True)
class Agreement:
    """Bland-Altman summary of paired differences (prediction - reference)."""

    n: int
    bias: float | None
    sd: float | None  # sample SD (ddof 1); None for fewer than 2 pairs
    loa: tuple[float, float] | None


def boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it (or outside the array)."""
    return mask & ~ndimage.binary_erosion(mask, FACE_NEIGHBOURS, border_value=0)


def directed_distances(
    from_surface: np.ndarray, to_surface: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """Distance (mm) from every voxel of ``from_surface`` to the nearest of ``to_surface``."""
    field = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return field[from_surface]


def score_masks(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> LabelScore:
    """Dice, ASSD and HD95 of two boolean masks on the same grid (spacing per array axis)."""
    n_pred, n_truth = int(pred.sum()), int(truth.sum())
    overlap = int(np.count_nonzero(pred & truth))
    total = n_pred + n_truth
    dice = 2.0 * overlap / total if total else 1.0
    if n_pred == 0 or n_truth == 0:
        return LabelScore(n_pred, n_truth, overlap, dice, None, None)
    surface_pred, surface_truth = boundary(pred), boundary(truth)
    to_truth = directed_distances(surface_pred, surface_truth, spacing)
    to_pred = directed_distances(surface_truth, surface_pred, spacing)
    assd = float((to_truth.sum() + to_pred.sum()) / (to_truth.size + to_pred.size))
    hd95 = float(
        max(np.percentile(to_truth, HD_PERCENTILE), np.percentile(to_pred, HD_PERCENTILE))
    )
    return LabelScore(n_pred, n_truth, overlap, dice, assd, hd95)


def label_boxes(volume: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every non-zero value of an unsigned integer label volume."""
    boxes = ndimage.find_objects(volume)
    return {value + 1: box for value, box in enumerate(boxes) if box is not None}


def score_labels(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], labels: Iterable[int]
) -> dict[int, LabelScore]:
    """Scores of every label of ``labels`` present in either volume (absent in both: left out).

    Each label is cut out to the union of its bounding boxes in the two volumes first.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"label volumes differ in shape: {pred.shape} vs {truth.shape}")
    wanted = sorted({int(v) for v in labels})
    boxes_pred = label_boxes(pred)
    boxes_truth = label_boxes(truth)
    scores = {}
    for label in wanted:
        boxes = [b for b in (boxes_pred.get(label), boxes_truth.get(label)) if b is not None]
        if not boxes:
            continue
        crop = tuple(
            slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes))
            for axis in range(pred.ndim)
        )
        scores[label] = score_masks(pred[crop] == label, truth[crop] == label, spacing)
    return scores


def bland_altman(differences: Sequence[float]) -> Agreement:
    """Bias (mean difference) and 95% limits of agreement (bias +- 1.96 sample SD)."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return Agreement(0, None, None, None)
    bias = float(d.mean())
    if d.size < 2:
        return Agreement(1, bias, None, None)
    sd = float(d.std(ddof=1))
    return Agreement(int(d.size), bias, sd, (bias - LOA_Z * sd, bias + LOA_Z * sd))


def load_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI label volume as a non-negative integer array (file axis order) and its affine."""
    if not path.is_file():
        raise FileNotFoundError(f"no label volume {path}")
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D label volume, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise ValueError(f"{path}: label values must be integers")
        data = data.astype(np.int32)
    if data.size and data.min() < 0:
        raise ValueError(f"{path}: negative label value {int(data.min())}")
    if data.size and data.max() > MAX_LABEL_VALUE:
        raise ValueError(f"{path}: label value {int(data.max())} above {MAX_LABEL_VALUE}")
    if data.dtype not in (np.uint8, np.uint16):
        data = data.astype(np.uint16)
    return data, np.asarray(image.affine, dtype=float)


def voxel_spacing(affine: np.ndarray, where: str) -> tuple[float, ...]:
    """Spacing (mm) along each array axis; a sheared grid has no per-axis spacing."""
    axes = affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"{where}: degenerate affine (a voxel axis has zero length)")
    unit = axes / spacing
    cosines = unit.T @ unit - np.eye(3)
    if np.abs(cosines).max() > ORTHOGONALITY_TOLERANCE:
        raise ValueError(f"{where}: voxel axes are not orthogonal; surface distances need a "
                         "regular grid")
    return tuple(float(s) for s in spacing)


def check_same_grid(
    pred_shape: tuple[int, ...], pred_affine: np.ndarray,
    truth_shape: tuple[int, ...], truth_affine: np.ndarray, case: str,
) -> None:
    """Refuse label volumes on different grids; resampling is the caller's deliberate choice."""
    if pred_shape != truth_shape:
        raise ValueError(
            f"case {case}: prediction grid {pred_shape} differs from reference grid "
            f"{truth_shape}; resample one onto the other's grid first"
        )
    gap = float(np.abs(pred_affine - truth_affine).max())
    if gap > GRID_TOLERANCE_MM:
        raise ValueError(
            f"case {case}: prediction and reference affines differ by up to {gap:.4g} mm "
            f"(tolerance {GRID_TOLERANCE_MM} mm); resample one onto the other's grid first"
        )


def read_muscle_figures(path: Path) -> dict[tuple[str, str], float | None]:
    """``(code, side) -> ff_mean_pct`` from a results.json or truth.json (None: undefined)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    muscles = data.get("muscles") if isinstance(data, dict) else None
    if not isinstance(muscles, list):
        raise ValueError(f"{path}: expected an object with a 'muscles' list")
    figures: dict[tuple[str, str], float | None] = {}
    for index, entry in enumerate(muscles):
        if not isinstance(entry, dict) or "code" not in entry or "side" not in entry:
            raise ValueError(f"{path}: muscles[{index}] needs 'code' and 'side'")
        value = entry.get("ff_mean_pct")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{path}: muscles[{index}].ff_mean_pct must be a number or null")
        finite = value is not None and math.isfinite(value)
        figures[(str(entry["code"]), str(entry["side"]))] = float(value) if finite else None
    return figures


def _truth_json(folder: Path) -> Path:
    for name in TRUTH_JSONS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {' or '.join(TRUTH_JSONS)} next to {LABELS_NAME}")


def _pred_json(folder: Path) -> Path:
    if not (folder / PRED_JSON).is_file():
        raise FileNotFoundError(f"{folder}: no {PRED_JSON} next to {LABELS_NAME}")
    return folder / PRED_JSON


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def evaluate_case(
    pred_dir: Path, truth_dir: Path, table: MuscleTable | None = None, case: str | None = None
) -> dict:
    """Per muscle and side scores of one prediction folder against one reference folder."""
    table = table or load_muscles()
    name = case or pred_dir.name
    pred, pred_affine = load_labels(pred_dir / LABELS_NAME)
    truth, truth_affine = load_labels(truth_dir / LABELS_NAME)
    check_same_grid(pred.shape, pred_affine, truth.shape, truth_affine, name)
    spacing = voxel_spacing(truth_affine, str(truth_dir / LABELS_NAME))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    ff_pred = read_muscle_figures(_pred_json(pred_dir))
    ff_truth = read_muscle_figures(_truth_json(truth_dir))

    names = table.combined_labels()
    scores = score_labels(pred, truth, spacing, names)
    order = {m.code: i for i, m in enumerate(table.muscles)}
    rows = []
    for label in sorted(scores, key=lambda v: (order[names[v][0]], names[v][1] != "right")):
        code, side = names[label]
        score = scores[label]
        flag = None
        if score.voxels_pred == 0:
            flag = "missing_in_pred"
        elif score.voxels_truth == 0:
            flag = "missing_in_truth"
        f_pred = ff_pred.get((code, side)) if score.voxels_pred else None
        f_truth = ff_truth.get((code, side)) if score.voxels_truth else None
        rows.append(
            {
                "code": code,
                "side": side,
                "label": label,
                "dice": score.dice,
                "assd_mm": score.assd_mm,
                "hd95_mm": score.hd95_mm,
                "ff_pred_pct": f_pred,
                "ff_truth_pct": f_truth,
                "ff_diff_pct": _diff(f_pred, f_truth),
                "volume_pred_ml": score.voxels_pred * voxel_ml,
                "volume_truth_ml": score.voxels_truth * voxel_ml,
                "flag": flag,
            }
        )
    present = set(np.flatnonzero(np.bincount(pred.ravel(order="K"))).tolist())
    present |= set(np.flatnonzero(np.bincount(truth.ravel(order="K"))).tolist())
    sizes = sum(s.voxels_pred + s.voxels_truth for s in scores.values())
    overlap = sum(s.intersection for s in scores.values())
    return {
        "case": name,
        "pred_dir": str(pred_dir),
        "truth_dir": str(truth_dir),
        "spacing_mm": list(spacing),
        "muscles": rows,
        "mean_dice": _mean(r["dice"] for r in rows),
        # Crum 2006 generalised Dice with unit weights, the seed's single figure per image.
        "generalized_dice": 2.0 * overlap / sizes if sizes else None,
        "mean_assd_mm": _mean(r["assd_mm"] for r in rows),
        "ignored_labels": sorted(int(v) for v in present - set(names) - {0}),
    }


def _is_case(folder: Path) -> bool:
    return (folder / LABELS_NAME).is_file()


def match_cases(pred_dir: Path, truth_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(case, prediction folder, reference folder) triples, and prediction-only case names.

    Either both folders are single cases (``labels.nii.gz`` inside), or both hold case
    subfolders matched by name; a reference case without a prediction is an error.
    """
    for folder, role in ((pred_dir, "prediction"), (truth_dir, "reference")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{role} folder {folder} does not exist")
    if _is_case(pred_dir) and _is_case(truth_dir):
        return [(pred_dir.name, pred_dir, truth_dir)], []
    if _is_case(pred_dir) or _is_case(truth_dir):
        single, multi = (pred_dir, truth_dir) if _is_case(pred_dir) else (truth_dir, pred_dir)
        raise ValueError(
            f"{single} is one case ({LABELS_NAME} inside) but {multi} is not; pass two case "
            "folders or two folders of case subfolders"
        )
    preds = {p.name: p for p in sorted(pred_dir.iterdir()) if p.is_dir() and _is_case(p)}
    truths = {t.name: t for t in sorted(truth_dir.iterdir()) if t.is_dir() and _is_case(t)}
    if not truths:
        raise FileNotFoundError(
            f"{truth_dir}: neither {LABELS_NAME} nor case subfolders holding one"
        )
    missing = sorted(set(truths) - set(preds))
    if missing:
        raise ValueError(f"no prediction in {pred_dir} for reference case(s): {', '.join(missing)}")
    extra = sorted(set(preds) - set(truths))
    return [(name, preds[name], truths[name]) for name in sorted(truths)], extra


def _agreement_dict(agreement: Agreement, unit: str) -> dict:
    return {
        f"bias_{unit}": agreement.bias,
        f"sd_{unit}": agreement.sd,
        f"loa_{unit}": list(agreement.loa) if agreement.loa else None,
        "n": agreement.n,
    }


def summarize(cases: list[dict]) -> dict:
    """Figures over the whole test set: every case counts once in ``mean_dice``; every muscle
    and side of every case is one pair in the Bland-Altman analyses."""
    rows = [r for c in cases for r in c["muscles"]]
    codes = list(dict.fromkeys(r["code"] for r in rows))
    ff = bland_altman([r["ff_diff_pct"] for r in rows if r["ff_diff_pct"] is not None])
    both = [r for r in rows if r["flag"] is None]
    volume = bland_altman([r["volume_pred_ml"] - r["volume_truth_ml"] for r in both])
    return {
        "cases": len(cases),
        "mean_dice": _mean(c["mean_dice"] for c in cases),
        "mean_generalized_dice": _mean(c["generalized_dice"] for c in cases),
        "mean_dice_by_muscle": {
            code: _mean(r["dice"] for r in rows if r["code"] == code) for code in codes
        },
        "mean_assd_mm": _mean(r["assd_mm"] for r in rows),
        "mean_assd_by_muscle_mm": {
            code: _mean(r["assd_mm"] for r in rows if r["code"] == code) for code in codes
        },
        "ff_bias_pct": ff.bias,
        "ff_sd_pct": ff.sd,
        "ff_loa_pct": list(ff.loa) if ff.loa else None,
        "n": ff.n,
        "volume": _agreement_dict(volume, "ml"),
        "missing_in_pred": sum(r["flag"] == "missing_in_pred" for r in rows),
        "missing_in_truth": sum(r["flag"] == "missing_in_truth" for r in rows),
    }


def evaluate(pred_dir: Path, truth_dir: Path, table: MuscleTable | None = None) -> dict:
    """The whole report: per case and muscle scores plus the test-set summary."""
    table = table or load_muscles()
    matched, extra = match_cases(Path(pred_dir), Path(truth_dir))
    cases = [evaluate_case(p, t, table, name) for name, p, t in matched]
    summary = summarize(cases)
    summary["unmatched_predictions"] = extra
    return {"cases": cases, "summary": summary}


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(report: dict) -> str:
    """A readable per-case, per-muscle table followed by the test-set summary."""
    lines = []
    header = (
        f"{'muscle':<6} {'side':<5} {'Dice':>6} {'ASSD':>6} {'HD95':>6} {'FFpred':>7} "
        f"{'FFref':>7} {'dFF':>6} {'Vpred':>8} {'Vref':>8}  flag"
    )
    for case in report["cases"]:
        lines.append(
            f"case {case['case']}: mean Dice {_fmt(case['mean_dice'], 3)}, generalised Dice "
            f"{_fmt(case['generalized_dice'], 3)}, mean ASSD {_fmt(case['mean_assd_mm'], 2)} mm"
        )
        lines.append(header)
        for r in case["muscles"]:
            lines.append(
                f"{r['code']:<6} {r['side']:<5} {_fmt(r['dice'], 3):>6} "
                f"{_fmt(r['assd_mm'], 2):>6} {_fmt(r['hd95_mm'], 2):>6} "
                f"{_fmt(r['ff_pred_pct'], 1):>7} {_fmt(r['ff_truth_pct'], 1):>7} "
                f"{_fmt(r['ff_diff_pct'], 2):>6} {_fmt(r['volume_pred_ml'], 1):>8} "
                f"{_fmt(r['volume_truth_ml'], 1):>8}  {r['flag'] or ''}".rstrip()
            )
        if case["ignored_labels"]:
            lines.append(f"labels not in the muscle table (ignored): {case['ignored_labels']}")
        lines.append("")
    s = report["summary"]
    loa = s["ff_loa_pct"]
    vol = s["volume"]
    lines += [
        f"summary over {s['cases']} case(s) (distances in mm, FF in %, volumes in mL; "
        "differences are prediction - reference)",
        f"  mean Dice {_fmt(s['mean_dice'], 3)}, mean ASSD {_fmt(s['mean_assd_mm'], 2)} mm",
        f"  FF bias {_fmt(s['ff_bias_pct'], 2)} %, 95% limits of agreement "
        + (f"[{loa[0]:.2f}, {loa[1]:.2f}] %" if loa else "-")
        + f" (n = {s['n']})",
        f"  volume bias {_fmt(vol['bias_ml'], 1)} mL, 95% limits of agreement "
        + (f"[{vol['loa_ml'][0]:.1f}, {vol['loa_ml'][1]:.1f}] mL" if vol["loa_ml"] else "-")
        + f" (n = {vol['n']})",
        f"  muscles missing in prediction: {s['missing_in_pred']}, missing in reference: "
        f"{s['missing_in_truth']}",
        "  mean Dice by muscle: "
        + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in s["mean_dice_by_muscle"].items()),
    ]
    if s["unmatched_predictions"]:
        lines.append(f"  predictions without reference (ignored): {s['unmatched_predictions']}")
    return "\n".join(lines)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``myonode evaluate``."""
    parser.add_argument(
        "pred_dir", help=f"prediction: {LABELS_NAME} + {PRED_JSON}, or a folder of cases"
    )
    parser.add_argument(
        "truth_dir",
        help=f"reference: {LABELS_NAME} + truth.json or results.json, or a folder of cases "
        "(matched to the prediction's by name)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``myonode evaluate``; bad input raises ValueError/FileNotFoundError."""
    report = evaluate(Path(args.pred_dir), Path(args.truth_dir))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
