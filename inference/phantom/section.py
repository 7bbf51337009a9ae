"""Axial cross-sections of the phantom: tissue signal fractions and labels, slice by slice.

Per slice and per leg the region inside the deep fascia is split among the structures of
``layout.py`` by a weighted Voronoi diagram of seed ellipses (the cell of a seed is where its
normalised distance is smallest, which gives round, organically curved muscle borders). The
distance to the nearest border between two different structures gives the fat septa with
their partial volume, so borders show only as thin fat lines, as in real Dixon images. The
fascia outline follows the muscles (a smooth hull of the seed ellipses), the skin lies a
subcutaneous fat layer outside it, and bones, joints, tendons, vessels and pelvic organs are
painted on top with the partial volume of their own signed distances.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from scipy.interpolate import PchipInterpolator

from common.muscles import load_muscles
from inference.phantom import bones as bone_table
from inference.phantom import fields, layout
from inference.phantom.infiltration import (
    ATROPHY,
    FF_GRADIENT,
    FF_MID,
    HETEROGENEITY,
    PERIPHERY,
    tissue_fat_fraction,
)

if TYPE_CHECKING:
    from inference.phantom.subject import Subject

# Signal (water, fat) per unit volume of each tissue, relative to pure fat = 1. Lean muscle
# has less proton density than fat; adipose tissue is ~93 % fat signal; cortex and tendon are
# nearly void; blood is bright (inflow) as the phantom's convention for vessels.
LEAN_WATER = 0.75
ADIPOSE = (0.07, 0.93)
BLOOD = (0.9, 0.0)
NERVE = (0.5, 0.2)
TENDON = (0.04, 0.0)
CARTILAGE = (0.45, 0.0)
URINE = (0.3, 0.0)
MARROW_PD = 0.95

LABEL_MIN_PURITY = 0.7  # a labelled voxel is at least this much muscle (not septum, fascia...)
RENDER_THREADS = 2
H_STEP = 2.0  # nominal mm between precomputed levels of the seed table
N_ANGLES = 128  # angular samples of the fascia and skin outlines
OUTLINE_SOFTNESS = 4.0  # mm, smooth maximum of the seed ellipses along each ray
OUTLINE_HARMONICS = (2.6, 7.0)  # Gaussian taper of the outline's harmonics: thigh, trunk
OUTLINE_BONES = (bone_table.FEMUR, bone_table.PATELLA, bone_table.TIBIA)
KIND_LABELLED, KIND_MUSCLE, KIND_FAT, KIND_VISCERA = range(4)
_KINDS = {"fat": KIND_FAT, "viscera": KIND_VISCERA}
TRUNK_BLEND_MM = 15.0  # smooth union of the trunk with the legs (no crease at the groin)


def muscle_structures() -> list[tuple[str, str | None]]:
    """(name, code) of every muscle structure, in the order of ``Subject.fat_params``."""
    seen: dict[str, str | None] = {}
    for cell in layout.CELLS:
        if cell.tissue == "muscle" and cell.name not in seen:
            seen[cell.name] = cell.code
    return list(seen.items())


class _Leg:
    """One leg's seeds sampled along the leg, and its frame in patient coordinates."""

    def __init__(self, subject: Subject, side: int, label_of: dict[str, int]) -> None:
        self.side = side
        self.sigma = -1.0 if side == 0 else 1.0  # patient right is -x
        self.scale = subject.girth_scale * subject.leg_scale[side]
        self.s_z = subject.length_scale
        self.theta = np.deg2rad(subject.rotation_deg[side])
        self.knee_lift = subject.knee_lift_mm[side]
        self.inclination = np.deg2rad(layout.FEMUR_INCLINATION_DEG - subject.abduction_deg[side])
        self.x_mid, y_shift = subject.offset_mm
        self.y_table = layout.TABLE_Y + y_shift
        self.y_hip = self.y_table - subject.girth_scale * layout.TABLE_P_AT_HIP
        self.h_grid = np.arange(layout.H_BOTTOM, layout.H_TOP + H_STEP / 2, H_STEP)
        structures = [name for name, _ in muscle_structures()]
        names = sorted({cell.name for cell in layout.CELLS})
        n = len(layout.CELLS)
        self.tables = np.zeros((5, n, self.h_grid.size))  # a, p, r, elongation, angle
        self.group = np.zeros(n, dtype=np.int32)
        self.kind = np.zeros(n, dtype=np.int32)
        self.label = np.zeros(n, dtype=np.int16)
        self.margin = np.zeros(n, dtype=np.float32)
        self.extent = np.zeros((n, 2))
        self.fat = np.zeros((n, 5), dtype=np.float32)
        self.atrophy = np.zeros(n)
        for index, cell in enumerate(layout.CELLS):
            keys = np.asarray(cell.keys)
            da, dp, size, wob_amp, wob_len, wob_phase = subject.cell_jitter[side, index]
            wobble = wob_amp * np.sin(2 * np.pi * keys[:, 0] / wob_len + wob_phase)
            keys = keys.copy()
            keys[:, 1] += da + wobble
            keys[:, 2] += dp + 0.5 * wobble
            keys[:, 3] *= size
            inside = (self.h_grid >= keys[0, 0]) & (self.h_grid <= keys[-1, 0])
            for column in range(5):
                spline = PchipInterpolator(keys[:, 0], keys[:, column + 1])
                self.tables[column, index, inside] = spline(self.h_grid[inside])
            self.group[index] = names.index(cell.name)
            self.kind[index] = (_KINDS[cell.tissue] if cell.tissue in _KINDS
                                else KIND_LABELLED if cell.code else KIND_MUSCLE)
            self.label[index] = label_of.get(cell.code, 0) if cell.code else 0
            self.margin[index] = cell.margin
            if cell.tissue == "muscle":
                self.fat[index] = subject.fat_params[side, structures.index(cell.name)]
                self.atrophy[index] = self.fat[index, ATROPHY]
        self.tables[2] = np.maximum(self.tables[2], 0.0)
        # Position along a structure runs over all its seeds (fat gradients are per muscle).
        for group in np.unique(self.group):
            members = [i for i in range(n) if self.group[i] == group]
            self.extent[members] = (min(layout.CELLS[i].keys[0][0] for i in members),
                                    max(layout.CELLS[i].keys[-1][0] for i in members))

    # --- frame ---------------------------------------------------------------------------
    def frame(self, h: float) -> tuple[float, float, float]:
        """Global (x, y) of the leg frame origin and the leg's rotation at level ``h``."""
        below = max(layout.SHAFT_TOP_H - h, 0.0) * self.s_z
        lateral = -layout.MIDLINE_A * self.scale - below * np.tan(self.inclination)
        ox = self.x_mid + self.sigma * lateral
        rise = (40.0 * self.scale - self.knee_lift) / (layout.SHAFT_TOP_H * self.s_z)
        oy = self.y_hip + below * rise
        theta = self.theta * float(np.clip((layout.HIP_CENTRE[2] - h) / 80.0, 0.0, 1.0))
        return ox, oy, theta

    def to_global(self, a: float, p: float, h: float, rotate: bool = True) -> tuple[float, float]:
        ox, oy, theta = self.frame(h)
        if not rotate:
            theta = 0.0
        u = self.scale * (a * np.cos(theta) - p * np.sin(theta))
        v = self.scale * (a * np.sin(theta) + p * np.cos(theta))
        return ox + self.sigma * u, oy + v

    def seeds(self, h: float) -> dict[str, np.ndarray]:
        """Active seeds at ``h``: centre, radius, shape (nominal leg coordinates)."""
        pos = (h - layout.H_BOTTOM) / H_STEP
        i0 = int(np.clip(np.floor(pos), 0, self.h_grid.size - 2))
        frac = float(np.clip(pos - i0, 0.0, 1.0))
        values = self.tables[:, :, i0] * (1 - frac) + self.tables[:, :, i0 + 1] * frac
        active = np.nonzero(values[2] > 0.3)[0]
        a, p, r, e, ang = (values[c, active] for c in range(5))
        along = (h - self.extent[active, 0]) / (self.extent[active, 1] - self.extent[active, 0])
        return dict(index=active, a=a, p=p, r=r, e=np.maximum(e, 0.3),
                    ang=np.deg2rad(ang), along=np.clip(along, 0.0, 1.0))


def _quadratic_forms(r: np.ndarray, e: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """Q of each seed ellipse: (x - c)^T Q (x - c) = 1 on its boundary. Shape [n, 3]."""
    c, s = np.cos(ang), np.sin(ang)
    inv_major = 1.0 / (r * e) ** 2
    inv_minor = (e / r) ** 2
    q11 = c * c * inv_major + s * s * inv_minor
    q12 = c * s * (inv_major - inv_minor)
    q22 = s * s * inv_major + c * c * inv_minor
    return np.stack([q11, q12, q22], axis=1)


def _outline(seeds: dict[str, np.ndarray], q: np.ndarray, centre: np.ndarray,
             shrink: np.ndarray, solids: list[tuple[float, float, float]],
             harmonics: float) -> np.ndarray:
    """Radius of the fascia around ``centre`` for N_ANGLES directions (nominal mm).

    Along each ray the farthest exit from any seed ellipse (scaled by ``shrink``) or bone
    (``solids``: circles (a, p, r) that must stay inside) is taken with a smooth maximum; only
    the lowest harmonics of that radius are kept, because a limb's outline is smooth and
    nearly convex (``harmonics``: Gaussian taper of the harmonic order).
    """
    phi = np.linspace(-np.pi, np.pi, N_ANGLES, endpoint=False)
    ux, uy = np.cos(phi)[:, None], np.sin(phi)[:, None]
    sa = np.concatenate([seeds["a"], [c[0] for c in solids]])
    sp = np.concatenate([seeds["p"], [c[1] for c in solids]])
    qs = q / shrink[:, None] ** 2
    if solids:
        inv = np.array([1.0 / c[2] ** 2 for c in solids])
        qs = np.concatenate([qs, np.stack([inv, np.zeros_like(inv), inv], axis=1)])
    ox = (centre[0] - sa)[None, :]
    oy = (centre[1] - sp)[None, :]
    q11, q12, q22 = qs[:, 0][None, :], qs[:, 1][None, :], qs[:, 2][None, :]
    qa = q11 * ux * ux + 2 * q12 * ux * uy + q22 * uy * uy
    qb = q11 * ux * ox + q12 * (ux * oy + uy * ox) + q22 * uy * oy
    qc = q11 * ox * ox + 2 * q12 * ox * oy + q22 * oy * oy - 1.0
    disc = qb * qb - qa * qc
    root = np.sqrt(np.abs(disc)) * np.sign(disc)
    exits = (-qb + root) / qa
    # A ray that misses an ellipse continues the exit below the tangent value, but never
    # beyond the ellipse's extent in that direction (its support function).
    det = q11 * q22 - q12 * q12
    support = -(ux * ox + uy * oy) + np.sqrt((q22 * ux * ux - 2 * q12 * ux * uy
                                               + q11 * uy * uy) / det)
    exits = np.where(disc >= 0, exits, np.minimum(exits, support))
    top = exits.max(axis=1, keepdims=True)
    radius = top[:, 0] + OUTLINE_SOFTNESS * np.log(
        np.exp((exits - top) / OUTLINE_SOFTNESS).sum(axis=1))
    spectrum = np.fft.rfft(radius)
    order = np.arange(spectrum.size)
    spectrum *= np.exp(-0.5 * (order / harmonics) ** 2)
    return np.maximum(np.fft.irfft(spectrum, N_ANGLES), 5.0)


def _lookup(tables: list[np.ndarray], phi: np.ndarray) -> list[np.ndarray]:
    """Linear interpolation of periodic N_ANGLES tables at angles ``phi`` (-pi..pi)."""
    pos = (phi + np.float32(np.pi)) * np.float32(N_ANGLES / (2 * np.pi))
    i0 = np.minimum(pos.astype(np.int32), N_ANGLES - 1)
    frac = pos - i0
    out = []
    for table in tables:
        t = np.append(table, table[0]).astype(np.float32)
        low = t[i0]
        out.append(low + (t[i0 + 1] - low) * frac)
    return out


def _band_fraction(d: np.ndarray, near: np.ndarray, far: np.ndarray, width: float) -> np.ndarray:
    """Fraction of a voxel (box profile of ``width`` centred at ``d``) inside [-far, near]."""
    overlap = np.minimum(d + width / 2, near) - np.maximum(d - width / 2, -far)
    return np.clip(overlap / width, 0.0, 1.0)


def _soft_min(x: np.ndarray, y: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (y - x) / k, 0.0, 1.0)
    return y * (1 - h) + x * h - k * h * (1 - h)


class SectionRenderer:
    """Renders a subject on axial grids (ascending x, y, z coordinate vectors)."""

    def __init__(self, subject: Subject) -> None:
        table = load_muscles()
        self.subject = subject
        self.legs = []
        for side, side_name in enumerate(("right", "left")):
            label_of = {m.code: table.label_of(m.code, side_name) for m in table.muscles}
            self.legs.append(_Leg(subject, side, label_of))
        self.waves = subject.waves
        self.paths = _vessel_paths(subject)

    def render_grid(self, xs: np.ndarray, ys: np.ndarray,
                    zs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shape = (zs.size, ys.size, xs.size)
        labels = np.zeros(shape, dtype=np.int16)
        water = np.zeros(shape, dtype=np.float32)
        fat = np.zeros(shape, dtype=np.float32)
        xs32, ys32 = xs.astype(np.float32), ys.astype(np.float32)
        pixel = float(np.mean([np.mean(np.diff(xs)) if xs.size > 1 else 1.0,
                               np.mean(np.diff(ys)) if ys.size > 1 else 1.0]))
        def work(ks: range) -> None:
            for k in ks:
                _Slice(self, xs32, ys32, float(zs[k]), pixel).render(labels[k], water[k], fat[k])

        # Slices are independent and numpy releases the GIL in its loops: two threads.
        with ThreadPoolExecutor(max_workers=RENDER_THREADS) as pool:
            list(pool.map(work, [range(t, zs.size, RENDER_THREADS)
                                 for t in range(RENDER_THREADS)]))
        return labels, water, fat


class _Slice:
    """The work for one axial slice."""

    def __init__(self, renderer: SectionRenderer, xs: np.ndarray, ys: np.ndarray, z: float,
                 pixel: float) -> None:
        self.r = renderer
        self.xs, self.ys, self.z = xs, ys, z
        self.pixel = pixel
        self.h = float(np.clip(z / renderer.subject.length_scale, layout.H_BOTTOM, layout.H_TOP))

    # --- helpers -------------------------------------------------------------------------
    def _window(self, x: float, y: float, radius: float,
                box: tuple[slice, slice] | None = None) -> tuple[slice, slice] | None:
        """Rows/columns of the slice (or of ``box``, relative to it) within a square."""
        c0, c1 = np.searchsorted(self.xs, [x - radius, x + radius])
        r0, r1 = np.searchsorted(self.ys, [y - radius, y + radius])
        if box is not None:
            rows, cols = box
            r0, r1 = max(r0, rows.start) - rows.start, min(r1, rows.stop) - rows.start
            c0, c1 = max(c0, cols.start) - cols.start, min(c1, cols.stop) - cols.start
        if r1 <= r0 or c1 <= c0:
            return None
        return slice(int(r0), int(r1)), slice(int(c0), int(c1))

    def _alpha(self, sdf_mm: np.ndarray) -> np.ndarray:
        return np.clip(0.5 - sdf_mm / self.pixel, 0.0, 1.0).astype(np.float32)

    def _paint(self, window: tuple[slice, slice], alpha: np.ndarray,
               tissue: tuple[float, float]) -> None:
        """Cover ``alpha`` of each voxel of ``window`` with ``tissue`` (not muscle)."""
        keep = 1.0 - alpha
        water, fat = self.water[window], self.fat[window]
        water *= keep
        water += alpha * np.float32(tissue[0])
        fat *= keep
        fat += alpha * np.float32(tissue[1])
        self.purity[window] *= keep

    # --- the slice -----------------------------------------------------------------------
    def render(self, labels: np.ndarray, water: np.ndarray, fat: np.ndarray) -> None:
        """Fill one slice's arrays (views into the volumes)."""
        self.labels, self.water, self.fat = labels, water, fat
        # Fraction of each voxel that is the muscle of its label; truth labels keep only
        # voxels that are mostly muscle (expert masks leave out septa, fascia and vessels).
        self.purity = np.zeros(water.shape, dtype=np.float32)
        body = np.full(water.shape, np.inf, dtype=np.float32)
        legs = []
        for leg in self.r.legs:
            state = self._leg_state(leg)
            if state is None:
                continue
            rows, cols = state["box"]
            body[rows, cols] = np.minimum(body[rows, cols], state["skin_sdf"])
            legs.append(state)
        self._trunk(body)
        alpha = self._alpha(body)
        water[:] = alpha * ADIPOSE[0]
        fat[:] = alpha * ADIPOSE[1]
        for state in legs:
            self._muscle_region(state)
        for state in legs:
            self._leg_solids(state)
        self._midline()
        labels[self.purity < LABEL_MIN_PURITY] = 0

    def _leg_state(self, leg: _Leg) -> dict | None:
        h, subject = self.h, self.r.subject
        seeds = leg.seeds(h)
        if seeds["index"].size == 0:
            return None
        ox, oy, theta = leg.frame(h)
        q = _quadratic_forms(seeds["r"], seeds["e"], seeds["ang"])
        weights = seeds["r"] ** 2
        centre = np.array([np.average(seeds["a"], weights=weights),
                           np.average(seeds["p"], weights=weights)])
        shrink = 1.0 - 0.5 * leg.atrophy[seeds["index"]]
        solids = [(fp[0], fp[1], fp[2] + 4.0) for bone in OUTLINE_BONES
                  for fp in (prim.footprint(h) for prim in bone.primitives) if fp is not None]
        # Thighs are smooth and round; the trunk's outline needs more detail.
        harmonics = float(np.interp(h, (380.0, 460.0), OUTLINE_HARMONICS))
        r_muscle = _outline(seeds, q, centre, shrink, solids, harmonics)
        phi = np.linspace(-np.pi, np.pi, N_ANGLES, endpoint=False)
        profile = np.asarray(layout.SUBCUTANEOUS_PROFILE)
        medial, posterior = subject.subcutaneous_shape
        sc_mm = subject.subcutaneous_mm * np.interp(h, profile[:, 0], profile[:, 1]) * (
            1 + medial * np.cos(phi - np.pi) + posterior * np.cos(phi - np.pi / 2))
        r_skin = r_muscle + np.maximum(sc_mm, 2.0) / leg.scale
        # The posterior skin rests on the table: cap the radius where rays point backwards.
        cx, cy = leg.to_global(centre[0], centre[1], h)
        down = np.sin(phi + theta)
        room = (leg.y_table - cy) / leg.scale
        cap = np.where(down > 0.05, room / np.maximum(down, 0.05), np.inf)
        r_skin = np.minimum(r_skin, _soft_min(r_skin, np.minimum(cap, 1e4), 4.0))
        r_muscle = np.minimum(r_muscle, r_skin - 2.0 / leg.scale)
        reach = float(r_skin.max()) * leg.scale + 2 * self.pixel
        box = self._window(cx, cy, reach)
        if box is None:
            return None
        rows, cols = box
        u = leg.sigma * (self.xs[cols][None, :] - np.float32(ox))
        v = self.ys[rows][:, None] - np.float32(oy)
        cos_t, sin_t = np.float32(np.cos(theta)), np.float32(np.sin(theta))
        inv = np.float32(1.0 / leg.scale)
        a = (u * cos_t + v * sin_t) * inv
        p = (v * cos_t - u * sin_t) * inv
        da, dp = a - np.float32(centre[0]), p - np.float32(centre[1])
        rho = np.sqrt(da * da + dp * dp)
        angle = np.arctan2(dp, da)
        scale = np.float32(leg.scale)
        skin_r, muscle_r = _lookup([r_skin, r_muscle], angle)
        skin_sdf = (rho - skin_r) * scale
        muscle_sdf = (rho - muscle_r) * scale
        return dict(leg=leg, seeds=seeds, q=q, centre=centre, box=box, a=a, p=p, u=u, v=v,
                    skin_sdf=skin_sdf, muscle_sdf=muscle_sdf, r_muscle=r_muscle,
                    sc_mm=sc_mm, frame=(ox, oy, theta))

    # --- muscles ------------------------------------------------------------------------
    def _muscle_region(self, state: dict) -> None:
        leg: _Leg = state["leg"]
        rows, cols = state["box"]
        pixel = self.pixel
        x_grid = self.xs[cols][None, :]
        inside = (state["muscle_sdf"] < 0.5 * pixel) & (
            leg.sigma * (x_grid - np.float32(leg.x_mid)) > 0)
        jj, ii = np.nonzero(inside)
        if jj.size == 0:
            return
        a, p = state["a"][jj, ii], state["p"][jj, ii]
        x, y = self.xs[cols][ii], self.ys[rows][jj]
        waves, z = self.r.waves, self.z
        inv = np.float32(1.0 / leg.scale)
        a = a + fields.evaluate(waves, fields.WARP_A, x, y, z) * inv
        p = p + fields.evaluate(waves, fields.WARP_P, x, y, z) * inv
        seeds, q = state["seeds"], state["q"].astype(np.float32)
        best, second, s1, s2 = _two_nearest(a, p, seeds, q, leg.group[seeds["index"]])
        # Distance to the border between the two nearest structures (first order).
        g1a, g1p = _gradient(a, p, seeds, q, s1)
        g2a, g2p = _gradient(a, p, seeds, q, s2)
        norm = np.sqrt((g2a - g1a) ** 2 + (g2p - g1p) ** 2)
        border = np.where(np.isfinite(second), (second - best) / np.maximum(norm, 1e-6), 1e3)
        border = (border * leg.scale).astype(np.float32)  # mm
        cell1 = seeds["index"][s1]
        cell2 = seeds["index"][np.where(s2 >= 0, s2, s1)]
        kind = leg.kind[cell1]
        # Septa: thin fat on the border, thicker around atrophied muscle and in fatter people.
        texture = fields.evaluate(waves, fields.SEPTUM_TEXTURE, x, y, z)
        thickness = self.r.subject.septum_mm * np.sqrt(leg.margin[cell1] * leg.margin[cell2])
        thickness = thickness * np.clip(1.0 + 0.9 * texture, 0.05, 2.5)
        lost1 = (leg.atrophy[cell1] * seeds["r"][s1] * leg.scale).astype(np.float32)
        lost2 = (leg.atrophy[cell2] * np.where(s2 >= 0, seeds["r"][np.maximum(s2, 0)], 0.0)
                 * leg.scale).astype(np.float32)
        septum = _band_fraction(border, thickness / 2 + lost1, thickness / 2 + lost2, pixel)
        depth = -state["muscle_sdf"][jj, ii]
        septum = np.maximum(septum, np.clip((lost1 - depth) / pixel + 0.5, 0.0, 1.0))
        # Tissue of each cell.
        w = np.empty(a.shape, dtype=np.float32)
        f = np.empty(a.shape, dtype=np.float32)
        muscle = kind <= KIND_MUSCLE
        if muscle.any():
            params = leg.fat[cell1[muscle]]
            ff = tissue_fat_fraction(
                params[:, FF_MID], params[:, FF_GRADIENT], params[:, HETEROGENEITY],
                params[:, PERIPHERY], seeds["along"][s1[muscle]],
                fields.evaluate(waves, fields.FAT_TEXTURE, x[muscle], y[muscle], z),
                border[muscle])
            phi_fat = LEAN_WATER * ff / (ADIPOSE[1] - ff * (ADIPOSE[0] + ADIPOSE[1] - LEAN_WATER))
            w[muscle] = LEAN_WATER * (1 - phi_fat) + ADIPOSE[0] * phi_fat
            f[muscle] = ADIPOSE[1] * phi_fat
        is_fat = kind == KIND_FAT
        w[is_fat], f[is_fat] = ADIPOSE
        viscera = kind == KIND_VISCERA
        if viscera.any():
            # Bowel loops: tubes along the zero set of a smooth random field, with fluid or
            # gas inside, in mesenteric fat.
            t = fields.evaluate(waves, fields.VISCERA_TEXTURE, x[viscera], y[viscera], z)
            t2 = fields.evaluate(waves, fields.FAT_TEXTURE, x[viscera], y[viscera], z)
            lumen = 1.0 / (1.0 + np.exp(8.0 * (np.abs(t) - 0.8)))
            gas = lumen / (1.0 + np.exp(-5.0 * (t2 - 1.0)))
            w[viscera] = 0.6 * (lumen - gas) + ADIPOSE[0] * (1 - lumen)
            f[viscera] = 0.03 * (lumen - gas) + ADIPOSE[1] * (1 - lumen)
        w = w * (1 - septum) + ADIPOSE[0] * septum
        f = f * (1 - septum) + ADIPOSE[1] * septum
        alpha = self._alpha(state["muscle_sdf"][jj, ii])
        rr, ci = jj + rows.start, ii + cols.start
        self.water[rr, ci] = self.water[rr, ci] * (1 - alpha) + alpha * w
        self.fat[rr, ci] = self.fat[rr, ci] * (1 - alpha) + alpha * f
        labelled = kind == KIND_LABELLED
        self.labels[rr, ci] = np.where(labelled, leg.label[cell1], 0)
        self.purity[rr, ci] = np.where(labelled, alpha * (1 - septum), 0.0)

    # --- bones, joints, tendons, vessels ----------------------------------------------------
    def _leg_solids(self, state: dict) -> None:
        h = self.h
        hip = bone_table.HIP_JOINT
        if hip.footprint(h) is not None:
            self._solid(state, (hip,), "pelvis", CARTILAGE)
        self._solid(state, bone_table.TENDONS, "leg", TENDON)
        for bone in bone_table.LEG_BONES:
            sdf, window = self._union_sdf(state, bone.primitives, bone.frame, bone.carve)
            if sdf is None:
                continue
            self._paint_bone(sdf, window, bone.cortex_at(h), bone.marrow_ff_at(h))
        for centre, radius, sheath, tissue in self._vessels(state):
            x, y = centre
            win = self._window(x, y, radius + sheath + 2 * self.pixel)
            if win is None:
                continue
            rows, cols = win
            dist = np.sqrt((self.xs[cols][None, :] - np.float32(x)) ** 2
                           + (self.ys[rows][:, None] - np.float32(y)) ** 2)
            if sheath > 0:
                self._paint(win, self._alpha(dist - np.float32(radius + sheath)), ADIPOSE)
            self._paint(win, self._alpha(dist - np.float32(radius)), tissue)

    def _frame_coords(self, state: dict, frame: str) -> tuple[np.ndarray, np.ndarray]:
        if frame == "leg":
            return state["a"], state["p"]
        if "a0" not in state:
            inv = np.float32(1.0 / state["leg"].scale)
            state["a0"], state["p0"] = np.broadcast_arrays(state["u"] * inv, state["v"] * inv)
        return state["a0"], state["p0"]

    def _union_sdf(self, state: dict, primitives, frame: str, carve=None):
        """Union SDF (nominal mm) of primitives over the window of the box they touch."""
        leg: _Leg = state["leg"]
        h = self.h
        parts = [(prim, prim.footprint(h)) for prim in primitives]
        parts = [(prim, fp) for prim, fp in parts if fp is not None]
        if not parts:
            return None, None
        rows, cols = state["box"]
        wins = []
        for prim, (fa, fp, radius) in parts:
            x, y = leg.to_global(fa, fp, h, rotate=frame == "leg")
            win = self._window(x, y, radius * leg.scale + 2 * self.pixel, state["box"])
            if win is not None:
                wins.append((prim, win))
        if not wins:
            return None, None
        r0 = min(w[0].start for _, w in wins)
        r1 = max(w[0].stop for _, w in wins)
        c0 = min(w[1].start for _, w in wins)
        c1 = max(w[1].stop for _, w in wins)
        a, p = self._frame_coords(state, frame)
        sdf = np.full((r1 - r0, c1 - c0), np.inf, dtype=np.float32)
        for prim, (wr, wc) in wins:
            sub = (slice(wr.start - r0, wr.stop - r0), slice(wc.start - c0, wc.stop - c0))
            sdf[sub] = np.minimum(sdf[sub], prim.sdf(a[wr, wc], p[wr, wc], h))
        if carve is not None:
            sdf = np.maximum(sdf, -carve.sdf(a[r0:r1, c0:c1], p[r0:r1, c0:c1], h))
        window = (slice(rows.start + r0, rows.start + r1), slice(cols.start + c0, cols.start + c1))
        return sdf * np.float32(leg.scale), window

    def _solid(self, state, primitives, frame, tissue) -> None:
        sdf, window = self._union_sdf(state, primitives, frame)
        if sdf is not None:
            self._paint(window, self._alpha(sdf), tissue)

    def _paint_bone(self, sdf, window, cortex_mm, marrow_ff) -> None:
        self._paint(window, self._alpha(sdf), (0.0, 0.0))
        self._paint(window, self._alpha(sdf + np.float32(cortex_mm)),
                    (MARROW_PD * (1 - marrow_ff), MARROW_PD * marrow_ff))

    def _vessels(self, state: dict):
        """(global centre, radius mm, fat sheath mm, tissue) of vessels and nerves here."""
        leg: _Leg = state["leg"]
        h = self.h
        out = []
        for path, radius, sheath, tissue in self.r.paths[leg.side].values():
            if not path[0, 0] <= h <= path[-1, 0]:
                continue
            a = float(np.interp(h, path[:, 0], path[:, 1]))
            p = float(np.interp(h, path[:, 0], path[:, 2]))
            out.append((leg.to_global(a, p, h), radius * leg.scale, sheath, tissue))
        table = np.asarray(layout.GREAT_SAPHENOUS)
        if table[0, 0] <= h <= table[-1, 0]:
            phi = np.deg2rad(np.interp(h, table[:, 0], table[:, 1]))
            phi = (phi + np.pi) % (2 * np.pi) - np.pi
            lookup = float(_lookup([state["r_muscle"]], np.array([phi], np.float32))[0][0])
            sc = float(np.interp(phi, np.linspace(-np.pi, np.pi, N_ANGLES, endpoint=False),
                                 state["sc_mm"]))
            dist = lookup + 0.45 * sc / leg.scale
            a = state["centre"][0] + dist * np.cos(phi)
            p = state["centre"][1] + dist * np.sin(phi)
            out.append((leg.to_global(a, p, h), 2.2, 0.0, BLOOD))  # great saphenous vein
        return out

    # --- midline ----------------------------------------------------------------------------
    def _trunk(self, body: np.ndarray) -> None:
        """Join the legs by the trunk (an ellipse per level) from the perineum up."""
        table = np.asarray(layout.TRUNK)
        h = self.h
        if h <= table[0, 0]:
            return
        centre, half_width, half_depth = (float(np.interp(h, table[:, 0], table[:, c]))
                                          for c in (1, 2, 3))
        if min(half_width, half_depth) < 1.0:
            return
        subject = self.r.subject
        scale = subject.girth_scale
        x_mid, y_hip = subject.offset_mm[0], self.r.legs[0].y_hip
        cy = y_hip + centre * scale
        reach = max(half_width, half_depth) * scale + TRUNK_BLEND_MM + 2 * self.pixel
        window = self._window(x_mid, cy, reach)
        if window is None:
            return
        rows, cols = window
        qa = (self.xs[cols][None, :] - np.float32(x_mid)) / np.float32(half_width * scale)
        qp = (self.ys[rows][:, None] - np.float32(cy)) / np.float32(half_depth * scale)
        k0 = np.sqrt(qa * qa + qp * qp)
        k1 = np.sqrt((qa / (half_width * scale)) ** 2 + (qp / (half_depth * scale)) ** 2)
        sdf = (k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)).astype(np.float32)
        legs = np.minimum(body[rows, cols], np.float32(1e4))
        body[rows, cols] = _soft_min(legs, sdf, TRUNK_BLEND_MM)

    def _midline(self) -> None:
        """Midline organs and bones: bladder, L5-S1 disc, sacrum, coccyx and L5."""
        subject, h = self.r.subject, self.h
        scale = subject.girth_scale
        x_mid = subject.offset_mm[0]
        y_hip = self.r.legs[0].y_hip
        centre, semi = layout.BLADDER
        bladder = bone_table.Ellipsoid(centre, tuple(v * subject.bladder_fill for v in semi))
        items = [((bladder,), URINE), ((bone_table.DISC,), CARTILAGE),
                 (bone_table.SACRUM.primitives, bone_table.SACRUM)]
        for primitives, what in items:
            parts = [(prim, prim.footprint(h)) for prim in primitives]
            parts = [(prim, fp) for prim, fp in parts if fp is not None]
            if not parts:
                continue
            reach = max(abs(fp[0]) + fp[2] for _, fp in parts) * scale + 2 * self.pixel
            lo = min(fp[1] - fp[2] for _, fp in parts) * scale + y_hip - 2 * self.pixel
            hi = max(fp[1] + fp[2] for _, fp in parts) * scale + y_hip + 2 * self.pixel
            c0, c1 = np.searchsorted(self.xs, [x_mid - reach, x_mid + reach])
            r0, r1 = np.searchsorted(self.ys, [lo, hi])
            if r1 <= r0 or c1 <= c0:
                continue
            window = (slice(int(r0), int(r1)), slice(int(c0), int(c1)))
            a = np.abs(self.xs[window[1]][None, :] - np.float32(x_mid)) / np.float32(scale)
            p = (self.ys[window[0]][:, None] - np.float32(y_hip)) / np.float32(scale)
            a, p = np.broadcast_arrays(a, p)
            sdf = np.full(a.shape, np.inf, dtype=np.float32)
            for prim, _ in parts:
                sdf = np.minimum(sdf, prim.sdf(a, p, h))
            sdf *= np.float32(scale)
            if isinstance(what, bone_table.Bone):
                self._paint_bone(sdf, window, what.cortex_at(h), what.marrow_ff_at(h))
            else:
                self._paint(window, self._alpha(sdf), what)


def _two_nearest(a: np.ndarray, p: np.ndarray, seeds: dict, q: np.ndarray,
                 groups: np.ndarray):
    """Nearest and second-nearest structure (different groups) by normalised distance.

    Returns the two distances and the seed indices (into ``seeds``) that attain them; the
    second index is -1 where only one structure is present.
    """
    n = a.size
    best = np.full(n, np.inf, dtype=np.float32)
    second = np.full(n, np.inf, dtype=np.float32)
    s1 = np.zeros(n, dtype=np.int32)
    s2 = np.full(n, -1, dtype=np.int32)
    ca = seeds["a"].astype(np.float32)
    cp = seeds["p"].astype(np.float32)
    for group in np.unique(groups):
        members = np.nonzero(groups == group)[0]
        value = None
        owner = None
        for m in members:
            da, dp = a - ca[m], p - cp[m]
            dist = q[m, 0] * da * da + (2 * q[m, 1]) * da * dp + q[m, 2] * dp * dp
            if value is None:
                value, owner = dist, np.full(n, m, dtype=np.int32)
            else:
                closer = dist < value
                value = np.where(closer, dist, value)
                owner = np.where(closer, m, owner)
        first = value < best
        s2 = np.where(first, s1, np.where(value < second, owner, s2))
        s1 = np.where(first, owner, s1)
        second = np.minimum(second, np.maximum(best, value))
        best = np.minimum(best, value)
    s2 = np.where(np.isfinite(second), s2, -1)
    return best, second, s1, s2


def _gradient(a: np.ndarray, p: np.ndarray, seeds: dict, q: np.ndarray,
              index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of the normalised distance of seed ``index`` (per point; -1 gives zero)."""
    safe = np.maximum(index, 0)
    da = a - seeds["a"].astype(np.float32)[safe]
    dp = p - seeds["p"].astype(np.float32)[safe]
    qq = q[safe]
    valid = (index >= 0).astype(np.float32)
    return (2 * (qq[:, 0] * da + qq[:, 1] * dp) * valid,
            2 * (qq[:, 1] * da + qq[:, 2] * dp) * valid)


def _vessel_paths(subject: Subject) -> list[dict]:
    """Per leg: name -> (path rows (h, a, p), radius mm, fat sheath mm, tissue).

    Vessels and nerves move with the fat compartment they run in (its per-subject jitter).
    """
    names = [cell.name for cell in layout.CELLS]
    sheath_cell = names.index("femoral_sheath_fat")
    sciatic_cell = names.index("sciatic_fat")
    artery = np.asarray(layout.FEMORAL_ARTERY, dtype=float)
    offsets = np.asarray(layout.FEMORAL_VEIN_OFFSET, dtype=float)
    vein = artery.copy()
    vein[:, 1] += np.interp(artery[:, 0], offsets[:, 0], offsets[:, 1])
    vein[:, 2] += np.interp(artery[:, 0], offsets[:, 0], offsets[:, 2])
    out = []
    for side in range(2):
        shift = subject.cell_jitter[side, sheath_cell, 0:2]
        nerve_shift = subject.cell_jitter[side, sciatic_cell, 0:2]

        def moved(path, d):
            rows = np.asarray(path, dtype=float).copy()
            rows[:, 1:3] += d
            return rows

        out.append({
            "femoral_artery": (moved(artery, shift), 4.0, 2.0, BLOOD),
            "femoral_vein": (moved(vein, shift), 5.0, 0.0, BLOOD),
            "profunda": (moved(layout.PROFUNDA_ARTERY, shift), 2.8, 1.5, BLOOD),
            "sciatic_nerve": (moved(layout.SCIATIC_NERVE, nerve_shift), 5.0, 1.5, NERVE),
            "tibial_nerve": (moved(layout.TIBIAL_NERVE, nerve_shift), 3.5, 1.0, NERVE),
            "peroneal_nerve": (moved(layout.PERONEAL_NERVE, nerve_shift), 2.5, 1.0, NERVE),
        })
    return out
