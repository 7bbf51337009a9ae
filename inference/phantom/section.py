"""Axial cross-sections of the phantom: tissue signal fractions and labels, slice by slice.

Per slice and per leg (``leg.py``: the leg's seeds, frame and outlines at each level) the
region inside the deep fascia is split among the structures of the atlas (``atlas.py``) by a
weighted Voronoi diagram of seed ellipses (``partition.py``). The
distance to the nearest border between two different structures gives the fat septa with
their partial volume, so borders show only as thin fat lines, as in real Dixon images; where
the two structures lie in different compartments the septum also carries a thin low-signal
fascia line, and the deep fascia (fascia lata, crural fascia) is such a line around the whole
section. Inside a muscle, thin fatty septa between fascicles (streaks) and a fine grain vary
the signal. The fascia outline follows the muscles (``outline.py``), the skin lies a
subcutaneous fat layer outside it, and bones, joints, tendons, the interosseous membrane,
vessels and pelvic organs are painted on top with the partial volume of their own distances.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from inference.phantom import atlas, fields, layout, vessels
from inference.phantom import bones as bone_table
from inference.phantom.infiltration import (
    FF_GRADIENT,
    FF_MID,
    HETEROGENEITY,
    PERIPHERY,
    tissue_fat_fraction,
)
from inference.phantom.leg import (
    KIND_FAT,
    KIND_LABELLED,
    KIND_MUSCLE,
    KIND_VISCERA,
    Leg,
    label_tables,
)
from inference.phantom.outline import N_ANGLES, band_fraction, lookup, soft_min
from inference.phantom.partition import gradient, two_nearest

if TYPE_CHECKING:
    from inference.phantom.subject import Subject

# Signal (water, fat) per unit volume of each tissue, relative to pure fat = 1. Lean muscle
# has less proton density than fat; adipose tissue is 88 % fat signal, the share at which the
# 6-peak fat spectrum (inference/dixon/spectrum.py) gives the real thigh's subcutaneous fat
# IP/OP of 1.34 at 3 T, 3.45 / 4.60 ms (benchmarks/realism.py); cortex, tendon and fascia are
# nearly void; vessels are bright (vessels.BLOOD).
LEAN_WATER = 0.75
ADIPOSE = (0.12, 0.88)
TENDON = (0.04, 0.0)
CARTILAGE = (0.45, 0.0)
URINE = (0.3, 0.0)
MARROW_PD = 0.95

LABEL_MIN_PURITY = 0.7  # a labelled voxel is at least this much muscle (not septum, fascia...)
RENDER_THREADS = 2
TRUNK_BLEND_MM = 15.0  # smooth union of the trunk with the legs (no crease at the groin)
STREAK_WIDTH = 0.12  # |streak field| below which a point is on a fascicle septum (~0.8 mm)
STREAK_FAT = 0.6  # fat share of a septum voxel at the strongest streaks
MEMBRANE_LEVELS = (-370.0, -60.0)  # interosseous membrane between tibia and fibula


class SectionRenderer:
    """Renders a subject on axial grids (ascending x, y, z coordinate vectors)."""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.legs = [Leg(subject, side, label_of) for side, label_of in enumerate(label_tables())]
        self.waves = subject.waves
        self.paths = vessels.deep_paths(subject.cell_jitter)

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
        self.h_raw = renderer.subject.h_at(z)
        self.h = float(np.clip(self.h_raw, atlas.H_MIN, atlas.H_MAX))

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
        """Fill one slice's arrays (views into the volumes); below the sole they stay empty."""
        if self.h_raw < atlas.H_MIN:
            return
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
            self._deep_fascia(state)
        for state in legs:
            self._leg_solids(state)
        self._midline()
        labels[self.purity < LABEL_MIN_PURITY] = 0

    def _leg_state(self, leg: Leg) -> dict | None:
        h = self.h
        section = leg.section(h)
        if section is None:
            return None
        centre, r_muscle, r_skin = section["centre"], section["r_muscle"], section["r_skin"]
        ox, oy, theta = leg.frame(h)
        # The posterior skin rests on the table: cap the radius where rays point backwards.
        phi = np.linspace(-np.pi, np.pi, N_ANGLES, endpoint=False)
        cx, cy = leg.to_global(centre[0], centre[1], h)
        down = np.sin(phi + theta)
        room = (leg.y_table - cy) / leg.scale
        cap = np.where(down > 0.05, room / np.maximum(down, 0.05), np.inf)
        r_skin = np.minimum(r_skin, soft_min(r_skin, np.minimum(cap, 1e4), 4.0))
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
        skin_r, muscle_r = lookup([r_skin, r_muscle], angle)
        return {"leg": leg, "seeds": section["seeds"], "q": section["q"], "centre": centre,
                "box": box, "a": a, "p": p, "u": u, "v": v,
                "skin_sdf": (rho - skin_r) * scale, "muscle_sdf": (rho - muscle_r) * scale,
                "r_muscle": r_muscle, "sc_mm": section["sc_mm"]}

    def _field(self, state: dict, field: int) -> np.ndarray:
        """A texture field of ``fields`` on the leg's box (cached per slice and leg)."""
        cache = state.setdefault("fields", {})
        if field not in cache:
            rows, cols = state["box"]
            cache[field] = fields.evaluate_grid(self.r.waves, field, self.xs[cols],
                                                self.ys[rows], self.z)
        return cache[field]

    # --- muscles ------------------------------------------------------------------------
    def _muscle_region(self, state: dict) -> None:
        leg: Leg = state["leg"]
        subject = self.r.subject
        rows, cols = state["box"]
        pixel = self.pixel
        x_grid = self.xs[cols][None, :]
        inside = (state["muscle_sdf"] < 0.5 * pixel) & (
            leg.sigma * (x_grid - np.float32(leg.x_mid)) > 0)
        jj, ii = np.nonzero(inside)
        if jj.size == 0:
            return
        inv = np.float32(1.0 / leg.scale)
        a = state["a"][jj, ii] + self._field(state, fields.WARP_A)[jj, ii] * inv
        p = state["p"][jj, ii] + self._field(state, fields.WARP_P)[jj, ii] * inv
        seeds, q = state["seeds"], state["q"].astype(np.float32)
        best, second, s1, s2 = two_nearest(a, p, seeds, q, leg.group[seeds["index"]])
        # Distance to the border between the two nearest structures (first order).
        g1a, g1p = gradient(a, p, seeds, q, s1)
        g2a, g2p = gradient(a, p, seeds, q, s2)
        norm = np.sqrt((g2a - g1a) ** 2 + (g2p - g1p) ** 2)
        border = np.where(np.isfinite(second), (second - best) / np.maximum(norm, 1e-6), 1e3)
        border = (border * leg.scale).astype(np.float32)  # mm
        cell1 = seeds["index"][s1]
        cell2 = seeds["index"][np.where(s2 >= 0, s2, s1)]
        kind = leg.kind[cell1]
        # Septa: thin fat on the border, thicker around atrophied muscle and in fatter people.
        texture = self._field(state, fields.SEPTUM_TEXTURE)[jj, ii]
        thickness = subject.septum_mm * np.sqrt(leg.margin[cell1] * leg.margin[cell2])
        thickness = thickness * np.clip(1.0 + 0.9 * texture, 0.05, 2.5)
        lost1 = (leg.atrophy[cell1] * seeds["r"][s1] * leg.scale).astype(np.float32)
        lost2 = (leg.atrophy[cell2] * np.where(s2 >= 0, seeds["r"][np.maximum(s2, 0)], 0.0)
                 * leg.scale).astype(np.float32)
        septum = band_fraction(border, thickness / 2 + lost1, thickness / 2 + lost2, pixel)
        depth = -state["muscle_sdf"][jj, ii]
        septum = np.maximum(septum, np.clip((lost1 - depth) / pixel + 0.5, 0.0, 1.0))
        # Intermuscular septa between compartments: a fascia line in the middle of the fat.
        comp1, comp2 = leg.compartment[cell1], leg.compartment[cell2]
        between = (comp1 != comp2) & (comp1 > 0) & (comp2 > 0)
        half = np.float32(subject.fascia_mm / 2)
        fascia = np.where(between, band_fraction(border, half, half, pixel), 0.0)
        fascia = fascia.astype(np.float32)
        # Tissue of each cell.
        w = np.empty(a.shape, dtype=np.float32)
        f = np.empty(a.shape, dtype=np.float32)
        muscle = kind <= KIND_MUSCLE
        if muscle.any():
            mj, mi = jj[muscle], ii[muscle]
            params = leg.fat[cell1[muscle]]
            ff = tissue_fat_fraction(
                params[:, FF_MID], params[:, FF_GRADIENT], params[:, HETEROGENEITY],
                params[:, PERIPHERY], seeds["along"][s1[muscle]],
                self._field(state, fields.FAT_TEXTURE)[mj, mi], border[muscle])
            if subject.streaks > 0:
                # Fat septa between fascicles: thin lines where a smooth field crosses zero.
                line = self._field(state, fields.STREAK_TEXTURE)[mj, mi] / np.float32(STREAK_WIDTH)
                streak = np.float32(STREAK_FAT * subject.streaks) * np.exp(-line * line)
                ff = ff + (1.0 - ff) * streak
            phi_fat = LEAN_WATER * ff / (ADIPOSE[1] - ff * (ADIPOSE[0] + ADIPOSE[1] - LEAN_WATER))
            grain = 1.0 + np.float32(subject.texture) * self._field(state, fields.GRAIN)[mj, mi]
            w[muscle] = LEAN_WATER * (1 - phi_fat) * grain + ADIPOSE[0] * phi_fat
            f[muscle] = ADIPOSE[1] * phi_fat
        is_fat = kind == KIND_FAT
        w[is_fat], f[is_fat] = ADIPOSE
        viscera = kind == KIND_VISCERA
        if viscera.any():
            # Bowel loops: tubes along the zero set of a smooth random field, with fluid or
            # gas inside, in mesenteric fat.
            vj, vi = jj[viscera], ii[viscera]
            t = self._field(state, fields.VISCERA_TEXTURE)[vj, vi]
            t2 = self._field(state, fields.FAT_TEXTURE)[vj, vi]
            lumen = 1.0 / (1.0 + np.exp(8.0 * (np.abs(t) - 0.8)))
            gas = lumen / (1.0 + np.exp(-5.0 * (t2 - 1.0)))
            w[viscera] = 0.6 * (lumen - gas) + ADIPOSE[0] * (1 - lumen)
            f[viscera] = 0.03 * (lumen - gas) + ADIPOSE[1] * (1 - lumen)
        w = w * (1 - septum) + ADIPOSE[0] * septum
        f = f * (1 - septum) + ADIPOSE[1] * septum
        w = w * (1 - fascia) + TENDON[0] * fascia
        f = f * (1 - fascia)
        alpha = self._alpha(state["muscle_sdf"][jj, ii])
        rr, ci = jj + rows.start, ii + cols.start
        self.water[rr, ci] = self.water[rr, ci] * (1 - alpha) + alpha * w
        self.fat[rr, ci] = self.fat[rr, ci] * (1 - alpha) + alpha * f
        labelled = kind == KIND_LABELLED
        self.labels[rr, ci] = np.where(labelled, leg.label[cell1], 0)
        self.purity[rr, ci] = np.where(labelled, alpha * (1 - septum) * (1 - fascia), 0.0)

    def _deep_fascia(self, state: dict) -> None:
        """The deep fascia: a thin low-signal line just outside the muscles."""
        leg: Leg = state["leg"]
        thickness = self.r.subject.fascia_mm
        sdf = state["muscle_sdf"]
        rows, cols = state["box"]
        own_side = leg.sigma * (self.xs[cols][None, :] - np.float32(leg.x_mid)) > 0
        near = np.abs(sdf - np.float32(thickness / 2)) < self.pixel + thickness
        jj, ii = np.nonzero(near & own_side)
        if jj.size == 0:
            return
        band = band_fraction(sdf[jj, ii] - np.float32(thickness), np.float32(0.0),
                             np.float32(thickness), self.pixel)
        rr, ci = jj + rows.start, ii + cols.start
        keep = 1.0 - band
        self.water[rr, ci] = self.water[rr, ci] * keep + band * TENDON[0]
        self.fat[rr, ci] = self.fat[rr, ci] * keep
        self.purity[rr, ci] *= keep

    # --- bones, joints, tendons, vessels ----------------------------------------------------
    def _leg_solids(self, state: dict) -> None:
        h = self.h
        if bone_table.HIP_JOINT.footprint(h) is not None:
            self._solid(state, (bone_table.HIP_JOINT,), "pelvis", CARTILAGE)
        if bone_table.KNEE_JOINT.footprint(h) is not None:
            self._solid(state, (bone_table.KNEE_JOINT,), "leg", CARTILAGE)
        self._solid(state, bone_table.TENDONS, "leg", TENDON, bone=False)
        for bone in bone_table.LEG_BONES:
            sdf, window = self._union_sdf(state, bone.primitives, bone.frame, carve=bone.carve)
            if sdf is None:
                continue
            self._paint_bone(sdf, window, bone.cortex_at(h), bone.marrow_ff_at(h))
        self._interosseous_membrane(state)
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

    def _frame_coords(self, state: dict, frame: str, bone: bool) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates of the leg's box in a frame: leg coordinates, or bone coordinates
        (leg coordinates without the muscle bulk), turning with the leg or not (pelvis)."""
        key = (frame, bone)
        cache = state.setdefault("coords", {})
        if key not in cache:
            leg: Leg = state["leg"]
            if frame == "leg":
                a, p = state["a"], state["p"]
                bulk = np.float32(leg.bulk)
                cache[key] = (a * bulk, p * bulk) if bone else (a, p)
            else:
                inv = np.float32(1.0 / (leg.bone_scale if bone else leg.scale))
                cache[key] = np.broadcast_arrays(state["u"] * inv, state["v"] * inv)
        return cache[key]

    def _union_sdf(self, state: dict, primitives, frame: str, bone: bool = True, carve=None):
        """Union SDF (mm) of primitives over the window of the box they touch.

        Bones (``bone``) keep their size when the muscles are bulkier or thinner than
        nominal; tendons and the other solids of the leg frame move with the muscles.
        """
        leg: Leg = state["leg"]
        h = self.h
        parts = [(prim, prim.footprint(h)) for prim in primitives]
        parts = [(prim, fp) for prim, fp in parts if fp is not None]
        if not parts:
            return None, None
        unit = leg.bone_scale if bone else leg.scale  # mm per unit of the primitives
        to_leg = unit / leg.scale  # leg coordinates per unit of the primitives
        rows, cols = state["box"]
        wins = []
        for prim, (fa, fp, radius) in parts:
            x, y = leg.to_global(fa * to_leg, fp * to_leg, h, rotate=frame == "leg")
            win = self._window(x, y, radius * unit + 2 * self.pixel, state["box"])
            if win is not None:
                wins.append((prim, win))
        if not wins:
            return None, None
        r0 = min(w[0].start for _, w in wins)
        r1 = max(w[0].stop for _, w in wins)
        c0 = min(w[1].start for _, w in wins)
        c1 = max(w[1].stop for _, w in wins)
        a, p = self._frame_coords(state, frame, bone)
        sdf = np.full((r1 - r0, c1 - c0), np.inf, dtype=np.float32)
        for prim, (wr, wc) in wins:
            sub = (slice(wr.start - r0, wr.stop - r0), slice(wc.start - c0, wc.stop - c0))
            sdf[sub] = np.minimum(sdf[sub], prim.sdf(a[wr, wc], p[wr, wc], h))
        if carve is not None:
            sdf = np.maximum(sdf, -carve.sdf(a[r0:r1, c0:c1], p[r0:r1, c0:c1], h))
        window = (slice(rows.start + r0, rows.start + r1), slice(cols.start + c0, cols.start + c1))
        return sdf * np.float32(unit), window

    def _solid(self, state, primitives, frame, tissue, bone: bool = True) -> None:
        sdf, window = self._union_sdf(state, primitives, frame, bone=bone)
        if sdf is not None:
            self._paint(window, self._alpha(sdf), tissue)

    def _paint_bone(self, sdf, window, cortex_mm, marrow_ff) -> None:
        self._paint(window, self._alpha(sdf), (0.0, 0.0))
        self._paint(window, self._alpha(sdf + np.float32(cortex_mm)),
                    (MARROW_PD * (1 - marrow_ff), MARROW_PD * marrow_ff))

    def _interosseous_membrane(self, state: dict) -> None:
        """The interosseous membrane: a thin low-signal sheet from the tibia to the fibula."""
        h = self.h
        if not MEMBRANE_LEVELS[0] <= h <= MEMBRANE_LEVELS[1]:
            return
        tibia = bone_table.TIBIA.primitives[0].section(h)
        fibula = bone_table.FIBULA.primitives[0].section(h)
        if tibia is None or fibula is None:
            return
        leg: Leg = state["leg"]
        ends = []
        for (ca, cp, sa, sp), (ta, tp) in ((tibia, fibula[:2]), (fibula, tibia[:2])):
            direction = np.array([ta - ca, tp - cp]) / np.hypot(ta - ca, tp - cp)
            reach = 1.0 / np.hypot(direction[0] / sa, direction[1] / sp)
            ends.append(np.array([ca, cp]) + direction * (reach - 1.0))
        middle = (ends[0] + ends[1]) / 2 / leg.bulk  # leg coordinates
        half_length = float(np.hypot(*(ends[1] - ends[0]))) / 2
        x, y = leg.to_global(float(middle[0]), float(middle[1]), h)
        win = self._window(x, y, half_length * leg.bone_scale + 2 * self.pixel, state["box"])
        if win is None:
            return
        a, p = self._frame_coords(state, "leg", True)
        a, p = a[win], p[win]
        seg = ends[1] - ends[0]
        t = np.clip(((a - ends[0][0]) * seg[0] + (p - ends[0][1]) * seg[1]) / float(seg @ seg),
                    0.0, 1.0)
        dist = np.hypot(a - ends[0][0] - t * seg[0], p - ends[0][1] - t * seg[1])
        half = np.float32(0.65 * self.r.subject.fascia_mm)
        alpha = band_fraction(dist * np.float32(leg.bone_scale), half, half, self.pixel)
        rows, cols = state["box"]
        window = (slice(rows.start + win[0].start, rows.start + win[0].stop),
                  slice(cols.start + win[1].start, cols.start + win[1].stop))
        self._paint(window, alpha.astype(np.float32), TENDON)

    def _vessels(self, state: dict):
        """(global centre, radius mm, fat sheath mm, tissue) of vessels and nerves here."""
        leg: Leg = state["leg"]
        h = self.h
        out = []
        for path, sheath, tissue in self.r.paths[leg.side].values():
            point = vessels.at_level(path, h)
            if point is not None:
                a, p, radius = point
                out.append((leg.to_global(a, p, h), radius * leg.bone_scale, sheath, tissue))
        phis = np.linspace(-np.pi, np.pi, N_ANGLES, endpoint=False)
        for phi, radius in vessels.superficial(h):
            fascia = float(lookup([state["r_muscle"]], np.array([phi], np.float32))[0][0])
            sc = float(np.interp(phi, phis, state["sc_mm"]))
            dist = fascia + vessels.SAPHENOUS_DEPTH * sc / leg.scale
            a = state["centre"][0] + dist * np.cos(phi)
            p = state["centre"][1] + dist * np.sin(phi)
            out.append((leg.to_global(a, p, h), radius, 0.0, vessels.BLOOD))
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
        body[rows, cols] = soft_min(legs, sdf, TRUNK_BLEND_MM)

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
