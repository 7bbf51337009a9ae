"""How far the phantom's images are from real ones, in figures measured alike on both.

The phantom's anatomy and signals are judged against two real Siemens scans
(``../shared/real-dixon``: a thigh, 10 slices 20 mm apart, and a 3D calf; MIT licence, see
docs/real-dixon-LICENSE). The same functions (``realism_measures``) measure both: the real
thigh's four central slices, and phantom thighs of ``SEEDS`` rendered at the same pixel size
and slice spacing around mid-thigh (half-way from the knee joint line to the femoral head);
three real calf slices 5 mm apart at ``CALF_LEVEL`` of the imaged leg below its knee end, and
phantom calves at the same pixel size and spacing, the same fraction of the phantom's calf
station below its upper end. The phantom's echoes are simulated at the real scans' field
strength and echo times (3 T; OP 3.45 ms, IP 4.60 ms).

    python benchmarks/realism.py             # print the table
    python benchmarks/realism.py --record    # also write docs/phantom-*.png and the table
                                             # into docs/phantom.md (between its markers)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bench_common
import nibabel as nib
import numpy as np
import realism_measures as measures
from PIL import Image

from common.geometry import VolumeGeometry
from inference.phantom.anatomy import make_subject, region_z_range_mm, render
from inference.phantom.layout import HIP_CENTRE
from inference.phantom.signals import dixon_magnitudes

REPO = bench_common.REPO
LegFigures, measure_slice, body_mask = measures.LegFigures, measures.measure_slice, measures.body_mask

REAL = REPO.parent / "shared" / "real-dixon"
DOC = REPO / "docs" / "phantom.md"
BEGIN, END = "<!-- realism table begin -->", "<!-- realism table end -->"
SEEDS = (0, 1, 2, 3, 4)
THIGH_SLICES = (3, 4, 5, 6)  # the real thigh's central slices (20 mm apart)
PICTURE_SLICE = 4
CALF_LEVEL = 0.35  # calf level: this fraction of the imaged leg length below its upper end
CALF_SPACING_MM = 5.0  # the real calf's slice spacing
SNR = 40.0  # the phantom command's default
REAL_FIELD_T = 3.0  # the real scans' field strength and (out-of-phase, in-phase) echo times
REAL_OP_IP_MS = (3.45, 4.60)

FIGURES = (  # (LegFigures field or "noise_air", row name, format)
    ("diameter_mm", "leg diameter (circle of equal area), mm", "{:.0f}"),
    ("subcutaneous_mm", "subcutaneous fat thickness (median over rays), mm", "{:.1f}"),
    ("rays_found", "rays on which the fascia line was found", "{:.0%}"),
    ("muscle_ip_op", "muscle IP/OP", "{:.3f}"),
    ("fat_ip_op", "subcutaneous fat IP/OP", "{:.3f}"),
    ("fat_muscle_ip", "subcutaneous fat / muscle IP", "{:.2f}"),
    ("muscle_ff_pct", "healthy-muscle FF (two-point), %", "{:.1f}"),
    ("noise_air_rel", "noise sigma, background air (Rayleigh), % of muscle IP", "{:.1f}"),
    ("noise_flat_rel", "noise sigma, muscle neighbour differences, % of muscle IP", "{:.1f}"),
)


def display(volume: np.ndarray, k: int) -> np.ndarray:
    """Slice ``k`` of a RAS-oriented NIfTI array, rows anterior->posterior, columns R->L."""
    return np.asarray(volume[::-1, ::-1, k].T, dtype=np.float64)


def load_real(folder: str, op_name: str, ip_name: str) -> tuple[np.ndarray, np.ndarray, float]:
    """IP and OP volumes of a real scan and its in-plane pixel size (mm)."""
    op = nib.load(REAL / folder / op_name)
    ip = nib.load(REAL / folder / ip_name)
    return np.asarray(ip.dataobj), np.asarray(op.dataobj), float(ip.header.get_zooms()[0])


def phantom_level(seed: int, region: str) -> float:
    """LPS z of the level measured: mid-thigh, or CALF_LEVEL down the calf station."""
    subject = make_subject(seed, "low")
    if region == "thigh":
        return HIP_CENTRE[2] * subject.length_scale / 2
    low, high = region_z_range_mm(subject, "calf")
    return high - CALF_LEVEL * (high - low)


def phantom_slices(seed: int, region: str, pixel_mm: float, n_slices: int,
                   dz_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """IP and OP of a phantom subject around the region's level, [k, rows A->P, columns R->L]."""
    subject = make_subject(seed, "low")
    level = phantom_level(seed, region)
    n_cols, n_rows = 512, 320
    origin = (subject.offset_mm[0] - (n_cols - 1) / 2 * pixel_mm,
              subject.offset_mm[1] + 5.0 - (n_rows - 1) / 2 * pixel_mm,
              level - (n_slices - 1) / 2 * dz_mm)
    geometry = VolumeGeometry((n_slices, n_rows, n_cols), (dz_mm, pixel_mm, pixel_mm), origin,
                              (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    images = dixon_magnitudes(render(subject, geometry), geometry, subject,
                              np.random.default_rng(seed), snr=SNR, stack_falloff=False,
                              field_strength_t=REAL_FIELD_T, echo_times_ms=REAL_OP_IP_MS)
    return images["in_phase"].astype(np.float64), images["out_of_phase"].astype(np.float64)


def summarise(slices: list[tuple[list[LegFigures], float]]) -> dict[str, list[float]]:
    """Every figure of every leg of every slice (noise relative to that leg's muscle IP)."""
    values: dict[str, list[float]] = {name: [] for name, _, _ in FIGURES}
    for legs, noise_air in slices:
        for leg in legs:
            for name, _, _ in FIGURES:
                if name == "noise_air_rel":
                    values[name].append(100.0 * noise_air / leg.muscle_ip)
                elif name == "noise_flat_rel":
                    values[name].append(100.0 * leg.noise_flat / leg.muscle_ip)
                else:
                    values[name].append(getattr(leg, name))
    return values


def cell(values: list[float], fmt: str) -> str:
    """Median, and the range over legs and slices (and seeds) when there is more than one."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return "n/a"
    text = fmt.format(float(np.median(finite)))
    if len(finite) > 1:
        text += f" ({fmt.format(min(finite))}–{fmt.format(max(finite))})"
    return text


def window(image: np.ndarray, top: float) -> np.ndarray:
    """8-bit grey levels, 0..``top`` mapped to black..white."""
    return (np.clip(image / top, 0, 1) * 255).astype(np.uint8)


def crop_to_body(images: list[np.ndarray], margin_px: int = 12) -> list[np.ndarray]:
    """Crop the images to the bounding box of the first one's tissue (plus a margin)."""
    body = body_mask(images[0], 1.0)
    rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    r0, r1 = max(rows[0] - margin_px, 0), rows[-1] + margin_px + 1
    c0, c1 = max(cols[0] - margin_px, 0), cols[-1] + margin_px + 1
    return [im[r0:r1, c0:c1] for im in images]


def picture(rows: list[list[np.ndarray]], path: Path) -> None:
    """A grid of windowed greyscale panels (each row padded to the widest), as a PNG."""
    height = max(p.shape[0] for r in rows for p in r)
    strips = []
    for panels in rows:
        padded = [np.pad(p, ((0, height - p.shape[0]), (0, 4))) for p in panels]
        strips.append(np.concatenate(padded, axis=1))
    width = max(s.shape[1] for s in strips)
    grid = np.concatenate([np.pad(s, ((0, 4), (0, width - s.shape[1]))) for s in strips])
    image = Image.fromarray(grid)
    if image.width > 800:
        image = image.resize((800, round(image.height * 800 / image.width)), Image.LANCZOS)
    image.save(path, optimize=True)


def panels(ip: np.ndarray, op: np.ndarray, legs: list[LegFigures]) -> list[np.ndarray]:
    """IP and OP windowed alike (white = 2.5 x the median muscle IP), cropped to the body."""
    top = 2.5 * float(np.median([leg.muscle_ip for leg in legs]))
    return [window(im, top) for im in crop_to_body([ip, op])]


def run(record: bool) -> None:
    cond = bench_common.conditions()
    ip, op, pixel = load_real("siemens-thigh", "0006-Dixon_TE_345_th.nii.gz",
                              "0008-Dixon_TE_460_th.nii.gz")
    real_thigh = [measure_slice(display(ip, k), display(op, k), pixel) for k in THIGH_SLICES]
    real_panels = panels(display(ip, PICTURE_SLICE), display(op, PICTURE_SLICE),
                         real_thigh[THIGH_SLICES.index(PICTURE_SLICE)][0])
    phantom_thighs, thigh_panels = measure_phantoms("thigh", pixel, len(THIGH_SLICES), 20.0)

    c_ip, c_op, c_pixel = load_real("siemens-calf", "0026-dix3d_TR23_448m_fa05_345.nii.gz",
                                    "0028-dix3d_TR23_448m_fa05_460.nii.gz")
    level = calf_level(c_ip)
    real_calf = [measure_slice(display(c_ip, k), display(c_op, k), c_pixel)
                 for k in (level - 1, level, level + 1)]
    phantom_calves, calf_panels = measure_phantoms("calf", c_pixel, 3, CALF_SPACING_MM)

    columns = [summarise(real_thigh), summarise(phantom_thighs), summarise(real_calf),
               summarise(phantom_calves)]
    lines = ["| figure | real thigh | phantom thigh | real calf | phantom calf |",
             "|---|---|---|---|---|"]
    for name, label, fmt in FIGURES:
        cells = [cell(values[name], fmt) for values in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    note = bench_common.row_note([f"real thigh slices {THIGH_SLICES}, phantom seeds {SEEDS} at snr {SNR:g} "
                     f"({len(THIGH_SLICES)} slices 20 mm apart around mid-thigh), real calf "
                     f"slices {level - 1}..{level + 1} and phantom calves 3 slices "
                     f"{CALF_SPACING_MM:g} mm apart at {CALF_LEVEL:.0%} of the calf; median "
                     "(range) over legs and slices"],
                    [], f"{cond.date}, commit {cond.commit}, {cond.machine}")
    table = "\n".join(lines) + f"\n\n{note}\n"
    print(table)
    if record:
        docs = REPO / "docs"
        picture([real_panels, thigh_panels], docs / "phantom-thigh.png")
        calf = display(c_ip, level), display(c_op, level)
        picture([panels(*calf, real_calf[1][0]), calf_panels], docs / "phantom-calf.png")
        text = DOC.read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{DOC} has no markers {BEGIN} ... {END}")
        head, rest = text.split(BEGIN, 1)
        DOC.write_text(head + BEGIN + "\n" + table + END + rest.split(END, 1)[1],
                       encoding="utf-8")
        print(f"recorded the table in {DOC.relative_to(REPO)} and the pictures in docs/")


def measure_phantoms(region: str, pixel_mm: float, n_slices: int,
                     dz_mm: float) -> tuple[list[tuple[list[LegFigures], float]], list[np.ndarray]]:
    """The figures of every seed's slices, and the panels of the first seed's middle slice."""
    measured_all: list[tuple[list[LegFigures], float]] = []
    first: list[np.ndarray] = []
    middle = n_slices // 2
    for seed in SEEDS:
        ip, op = phantom_slices(seed, region, pixel_mm, n_slices, dz_mm)
        measured = [measure_slice(ip[k], op[k], pixel_mm) for k in range(n_slices)]
        measured_all += measured
        if seed == SEEDS[0]:
            first = panels(ip[middle], op[middle], measured[middle][0])
    return measured_all, first


def calf_level(ip: np.ndarray) -> int:
    """The slice ``CALF_LEVEL`` of the imaged leg length below its upper (knee) end."""
    threshold = 0.2 * np.percentile(ip, 99)
    area = (ip > threshold).sum(axis=(0, 1))
    covered = np.flatnonzero(area > 0.3 * area.max())
    top, bottom = covered[-1], covered[0]  # RAS: the last slice is the most superior
    return int(round(top - CALF_LEVEL * (top - bottom)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true",
                        help="write docs/phantom-*.png and the table into docs/phantom.md")
    run(parser.parse_args().record)


if __name__ == "__main__":
    main()
