"""An analytic adult chest: body wall, skeleton, mediastinum, two lungs, airways and vessels.

Shapes are functions of patient coordinates (DICOM LPS, millimetres: +x patient left,
+y posterior, +z superior), so the same model is rendered on any grid, sampled at random points
(to place lesions) and rasterised slab by slab (bounded memory for 512x512x600 scans). The lung
base is 0 mm; `height` is the lung base-to-apex height. Right lung = label 1 (x < 0), left = 2.

Values (HU): air -1000, lung parenchyma about -870 (denser posteriorly), fat -90, muscle and
blood 40, liver 58, bone 250 (marrow) to 700 (cortex), airway walls 20.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RIGHT, LEFT = 1, 2
SIDE_SIGN = {RIGHT: -1.0, LEFT: 1.0}


@dataclass
class Tube:
    """A tapered cylinder (capsule) from p0 to p1 with radii r0 and r1 (mm)."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float


def smoothstep(edge: np.ndarray | float, width: float) -> np.ndarray:
    """0 below -width/2, 1 above +width/2: a partial-volume edge of `width` mm."""
    return np.clip(0.5 + np.asarray(edge) / width, 0.0, 1.0)


def grow_tree(
    points: np.ndarray, root: np.ndarray, radius: float, rng: np.random.Generator, min_points: int, max_depth: int, min_radius: float
) -> list[Tube]:
    """Grow a branching tree from `root` that fills the cloud `points`.

    Each branch heads 60% of the way to the centroid of its points, then splits the points across
    their principal axis into two children. Child radii follow Murray's law on the point counts.
    The result fills the organ evenly and tapers from hilum to periphery like real vessels.
    """
    tubes: list[Tube] = []
    stack = [(root, points, radius, 0)]
    while stack:
        start, cloud, r, depth = stack.pop()
        centroid = cloud.mean(axis=0)
        if len(cloud) < min_points or depth >= max_depth or r < min_radius:
            tubes.append(Tube(start, centroid, r, max(r * 0.6, min_radius * 0.5)))
            continue
        branch = start + rng.uniform(0.5, 0.7) * (centroid - start)
        tubes.append(Tube(start, branch, r, r * 0.92))
        sample = cloud[:: max(1, len(cloud) // 300)] - centroid
        axis = np.linalg.svd(sample, full_matrices=False)[2][0]
        side = (cloud - centroid) @ axis > 0
        for part in (cloud[side], cloud[~side]):
            if len(part):
                stack.append((branch, part, r * (len(part) / len(cloud)) ** (1 / 3), depth + 1))
    return tubes


def rasterize_tubes(tubes: list[Tube], xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, soft_mm: float, grow_mm: float = 0.0) -> np.ndarray:
    """Partial-volume occupancy (0..1) of the tubes on the grid xs x ys x zs (regular axes).

    Only each tube's bounding box is computed, so thousands of small branches stay cheap.
    `grow_mm` thickens every tube (used for airway walls around the lumen).
    """
    out = np.zeros((zs.size, ys.size, xs.size), dtype=np.float32)
    dz = zs[1] - zs[0] if zs.size > 1 else 1.0
    for tube in tubes:
        reach = max(tube.r0, tube.r1) + grow_mm + soft_mm
        lo = np.minimum(tube.p0, tube.p1) - reach
        hi = np.maximum(tube.p0, tube.p1) + reach
        ix = np.nonzero((xs >= lo[0]) & (xs <= hi[0]))[0]
        iy = np.nonzero((ys >= lo[1]) & (ys <= hi[1]))[0]
        iz = np.nonzero((zs >= lo[2] - abs(dz)) & (zs <= hi[2] + abs(dz)))[0]
        if not (ix.size and iy.size and iz.size):
            continue
        px = xs[ix[0] : ix[-1] + 1][None, None, :] - tube.p0[0]
        py = ys[iy[0] : iy[-1] + 1][None, :, None] - tube.p0[1]
        pz = zs[iz[0] : iz[-1] + 1][:, None, None] - tube.p0[2]
        v = tube.p1 - tube.p0
        length2 = float(v @ v) or 1e-9
        t = np.clip((px * v[0] + py * v[1] + pz * v[2]) / length2, 0.0, 1.0)
        dist = np.sqrt((px - t * v[0]) ** 2 + (py - t * v[1]) ** 2 + (pz - t * v[2]) ** 2)
        occupancy = smoothstep(tube.r0 + t * (tube.r1 - tube.r0) + grow_mm - dist, soft_mm)
        view = out[iz[0] : iz[-1] + 1, iy[0] : iy[-1] + 1, ix[0] : ix[-1] + 1]
        np.maximum(view, occupancy, out=view)
    return out


@dataclass
class ChestModel:
    """Anatomy parameters of one synthetic patient (drawn by `draw_chest`)."""

    scale: float
    height: float
    body_a: float
    body_b: float
    fat_mm: float
    cavity_a: float
    cavity_b: float
    spine_y: float
    dome_right: float
    dome_left: float
    heart_center: np.ndarray
    heart_axes: np.ndarray
    texture_waves: np.ndarray
    airways: list[Tube] = field(default_factory=list)
    great_vessels: list[Tube] = field(default_factory=list)
    lung_vessels: list[Tube] = field(default_factory=list)
    bronchi: list[Tube] = field(default_factory=list)

    # ---- extent -------------------------------------------------------------------------
    @property
    def z_range(self) -> tuple[float, float]:
        """Scan range: upper abdomen below the lung bases to just above the apices."""
        return -70.0 * self.scale, self.height + 25.0 * self.scale

    def lung_center_x(self, side: int) -> float:
        return SIDE_SIGN[side] * 0.5 * self.cavity_a

    # ---- regions ------------------------------------------------------------------------
    def body(self, x, y):
        return (x / self.body_a) ** 2 + (y / self.body_b) ** 2

    def cavity(self, x, y):
        return (x / self.cavity_a) ** 2 + (y / self.cavity_b) ** 2

    def dome(self, x, y, side: int):
        """Height of the hemidiaphragm under lung `side`: highest centrally, lowest at the rim."""
        top = self.dome_right if side == RIGHT else self.dome_left
        cx = self.lung_center_x(side)
        rho2 = ((x - cx) / (0.5 * self.cavity_a)) ** 2 + (y / self.cavity_b) ** 2
        return top - 75.0 * self.scale * rho2

    def heart(self, x, y, z):
        c, a = self.heart_center, self.heart_axes
        return ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2

    def lung_side(self, x, y, z, side: int) -> np.ndarray:
        """Boolean: point inside lung `side` (intrapulmonary vessels and airways included)."""
        s = self.scale
        sign = SIDE_SIGN[side]
        t = z / self.height
        shape = np.broadcast(x, y, z).shape
        inside = np.broadcast_to(self.cavity(x, y) < (1.0 - 3.0 / self.cavity_a) ** 2, shape).copy()
        # Mediastinum: narrowest at mid-depth, wider in front (thymus, vessels) and at the spine.
        inside &= sign * x > 17.0 * s + 20.0 * s * ((y - 0.1 * self.cavity_b) / self.cavity_b) ** 2
        # Apex: the cross-section narrows to a point at the top, around a posterior-lateral axis.
        taper = np.sqrt(np.clip(1.0 - np.clip((t - 0.45) / 0.55, 0.0, None) ** 2, 0.0, 1.0))
        cx = self.lung_center_x(side) * (0.85 + 0.15 * taper)
        apex = ((x - cx) / (0.62 * self.cavity_a * taper + 1e-6)) ** 2 + (
            (y - 0.1 * self.cavity_b) / (1.02 * self.cavity_b * taper + 1e-6)
        ) ** 2
        inside &= apex < 1.0
        inside &= z > self.dome(x, y, side)
        inside &= self.heart(x, y, z) > 1.12
        inside &= x**2 + (y - self.spine_y) ** 2 > (30.0 * s) ** 2
        return inside

    def lung_labels(self, x, y, z) -> np.ndarray:
        labels = np.zeros(np.broadcast(x, y, z).shape, dtype=np.uint8)
        labels[self.lung_side(x, y, z, RIGHT)] = RIGHT
        labels[self.lung_side(x, y, z, LEFT)] = LEFT
        return labels

    def peripheral_depth(self, x, y, side: int) -> np.ndarray:
        """0 at the lung's medial edge, 1 at the chest wall: how peripheral a point is."""
        sign = SIDE_SIGN[side]
        return np.clip((sign * x - 20.0 * self.scale) / (self.cavity_a - 20.0 * self.scale), 0, 1)

    def sample_lung_points(self, side: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` uniform random points inside lung `side` (rejection sampling)."""
        lo_z, hi_z = self.z_range
        found = []
        total = 0
        while total < count:
            n = 4 * count
            x = rng.uniform(-self.cavity_a, self.cavity_a, n)
            y = rng.uniform(-self.cavity_b, self.cavity_b, n)
            z = rng.uniform(lo_z, hi_z, n)
            keep = self.lung_side(x, y, z, side)
            found.append(np.stack([x[keep], y[keep], z[keep]], axis=1))
            total += int(keep.sum())
        return np.concatenate(found)[:count]

    # ---- rendering ----------------------------------------------------------------------
    def parenchyma_hu(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Lung parenchyma on the grid zs x ys x xs: -875 HU, 45 HU denser posteriorly, texture.

        The texture is a sum of plane waves; each is separable, exp(i k.r) = exp(i kx x)
        exp(i ky y) exp(i kz z), so it costs one complex product per voxel instead of a cosine.
        """
        gradient = 45.0 * np.clip((ys + self.cavity_b) / (2 * self.cavity_b), 0, 1)
        texture = np.zeros((zs.size, ys.size, xs.size), dtype=np.complex64)
        for kx, ky, kz, phase, amp in self.texture_waves:
            ez = (amp * np.exp(1j * (kz * zs + phase))).astype(np.complex64)[:, None, None]
            texture += (
                ez * np.exp(1j * ky * ys).astype(np.complex64)[None, :, None] * np.exp(1j * kx * xs).astype(np.complex64)[None, None, :]
            )
        return (-875.0 + gradient[None, :, None] + texture.real).astype(np.float32)

    def ribs(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Boolean rib cross-sections on the grid: 12 pairs running obliquely down to the front.

        Only pixels of the thin ring where ribs run are tested, slice by slice.
        """
        s = self.scale
        x, y = xs[None, :], ys[:, None]
        radial = np.sqrt((x / (self.cavity_a + 7 * s)) ** 2 + (y / (self.cavity_b + 7 * s)) ** 2)
        theta = np.abs(np.arctan2(x, y)) / np.pi  # 0 at the spine, 1 at the sternum
        ring = (np.abs(radial - 1.0) * min(self.cavity_a, self.cavity_b) < 4.5 * s) & (theta < 0.86)
        rows, cols = np.nonzero(ring)
        drop = 0.3 * self.height * theta[rows, cols] ** 1.3
        tops = 1.02 * self.height - np.arange(12) * (self.height / 10.5)
        hit = np.zeros((zs.size, ys.size, xs.size), dtype=bool)
        for k, z in enumerate(zs):
            rib_z = tops[:, None] - drop[None, :]
            hit[k, rows, cols] = (np.abs(z - rib_z) < 5.5 * s).any(axis=0)
        return hit

    def render(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, soft_mm: float) -> dict:
        """Rasterise the slab zs x ys x xs; returns base HU, lung labels and tube occupancies."""
        s = self.scale
        z = zs[:, None, None]
        y = ys[None, :, None]
        x = xs[None, None, :]
        shape = (zs.size, ys.size, xs.size)
        body = np.broadcast_to(self.body(x, y), shape)
        hu = np.full(shape, -1000.0, dtype=np.float32)
        # Carbon-fibre table under the patient.
        table = (y > self.body_b + 12 * s) & (y < self.body_b + 20 * s) & (np.abs(x) < 0.9 * self.body_a)
        hu[np.broadcast_to(table, shape)] = -300.0
        edge = np.sqrt(body)
        hu = np.where(edge < 1.0, -95.0, hu)  # subcutaneous fat
        muscle_a, muscle_b = self.body_a - self.fat_mm, self.body_b - self.fat_mm
        muscle = (x / muscle_a) ** 2 + (y / muscle_b) ** 2 < 1.0
        hu = np.where(np.broadcast_to(muscle, shape), 40.0, hu)
        cavity = np.broadcast_to(self.cavity(x, y) < 1.0, shape)
        # Inside the rib cage: mediastinal fat, abdomen below the diaphragm, neck at the top.
        below_dome = (z < self.dome(x, y, RIGHT)) & (x < 10 * s) | (z < self.dome(x, y, LEFT)) & (x >= 10 * s)
        inner = np.where(below_dome, np.where(x < 10 * s, 58.0, 38.0), -90.0)
        inner = np.where(z > 0.97 * self.height, 40.0, inner)
        hu = np.where(cavity, inner, hu)
        hu = np.where(self.heart(x, y, z) < 1.0, 40.0, hu)
        # Spine: vertebral body (discs every ~27 mm), canal, posterior elements.
        vertebra = x**2 + (y - self.spine_y) ** 2
        disc = np.abs(((z / (27 * s)) % 1.0) - 0.5) < 0.1
        hu = np.where(vertebra < (17 * s) ** 2, np.where(disc, 80.0, 260.0), hu)
        hu = np.where((vertebra > (14.5 * s) ** 2) & (vertebra < (17 * s) ** 2) & ~disc, 700.0, hu)
        canal = x**2 + (y - self.spine_y - 24 * s) ** 2 < (8 * s) ** 2
        lamina = (np.abs(x) < 6 * s) & (y > self.spine_y + 30 * s) & (y < self.spine_y + 58 * s)
        hu = np.where(np.broadcast_to(lamina, shape), 450.0, hu)
        hu = np.where(np.broadcast_to(canal, shape), 25.0, hu)
        sternum = (np.abs(x) < 14 * s) & (np.abs(y + self.cavity_b + 5 * s) < 6 * s) & (z > 0.15 * self.height) & (z < 0.9 * self.height)
        hu = np.where(sternum, 380.0, hu)
        hu = np.where(self.ribs(xs, ys, zs), 600.0, hu)
        vessels_outside = rasterize_tubes(self.great_vessels, xs, ys, zs, soft_mm)
        hu = hu * (1 - vessels_outside) + 40.0 * vessels_outside
        lungs = self.lung_labels(x, y, z)
        in_lung = lungs > 0
        hu = np.where(in_lung, self.parenchyma_hu(xs, ys, zs), hu).astype(np.float32)
        return {
            "hu": hu,
            "lungs": lungs,
            "vessels": rasterize_tubes(self.lung_vessels, xs, ys, zs, soft_mm),
            "airway_wall": rasterize_tubes(self.airways + self.bronchi, xs, ys, zs, soft_mm, grow_mm=1.2 * s),
            "airway_lumen": rasterize_tubes(self.airways + self.bronchi, xs, ys, zs, soft_mm),
        }


def draw_chest(rng: np.random.Generator, scale: float) -> ChestModel:
    """Draw one patient's anatomy (size `scale` ~ 1 for an average adult) and grow its trees."""
    s = scale
    width = rng.uniform(0.94, 1.06)
    body_a, body_b = 168.0 * s * width, 112.0 * s
    fat = rng.uniform(7.0, 22.0) * s
    wall = fat + 14.0 * s + 9.0 * s  # fat, muscle, ribs
    height = rng.uniform(215.0, 250.0) * s
    model = ChestModel(
        scale=s,
        height=height,
        body_a=body_a,
        body_b=body_b,
        fat_mm=fat,
        cavity_a=body_a - wall,
        cavity_b=body_b - wall,
        spine_y=body_b - wall - 12.0 * s,
        dome_right=rng.uniform(25.0, 40.0) * s,
        dome_left=rng.uniform(10.0, 25.0) * s,
        heart_center=np.array([16.0 * s, -26.0 * s, 0.2 * height + 12 * s]),
        heart_axes=np.array([54.0, 42.0, 50.0]) * s * rng.uniform(0.92, 1.08),
        texture_waves=np.column_stack(
            [
                rng.normal(0, 2 * np.pi / 25.0, (6, 3)),
                rng.uniform(0, 2 * np.pi, 6),
                rng.uniform(3.0, 7.0, 6),
            ]
        ),
    )
    _add_mediastinum(model)
    _add_trees(model, rng)
    return model


def _add_mediastinum(m: ChestModel) -> None:
    s, h, sy = m.scale, m.height, m.spine_y
    trachea_y = sy - 42 * s
    carina = np.array([0.0, trachea_y, 0.64 * h])
    m.airways = [
        Tube(np.array([0.0, trachea_y - 8 * s, h + 40 * s]), carina, 9.0 * s, 8.5 * s),
        Tube(carina, np.array([-34.0 * s, trachea_y + 4 * s, carina[2] - 26 * s]), 7.5 * s, 6.5 * s),
        Tube(carina, np.array([44.0 * s, trachea_y + 6 * s, carina[2] - 24 * s]), 6.5 * s, 5.5 * s),
    ]
    m.great_vessels = [
        Tube(np.array([5.0 * s, -20 * s, 0.35 * h]), np.array([5.0 * s, -20 * s, 0.72 * h]), 14 * s, 14 * s),
        Tube(np.array([5.0 * s, -20 * s, 0.72 * h]), np.array([20 * s, sy - 10 * s, 0.74 * h]), 12 * s, 12 * s),
        Tube(np.array([20 * s, sy - 10 * s, 0.74 * h]), np.array([20 * s, sy - 10 * s, -80 * s]), 12 * s, 11 * s),
        Tube(np.array([-25 * s, -18 * s, 0.4 * h]), np.array([-25 * s, -18 * s, h + 30 * s]), 9 * s, 9 * s),
        Tube(np.array([5 * s, -40 * s, 0.38 * h]), np.array([0.0, -8 * s, 0.55 * h]), 13 * s, 12 * s),
        Tube(np.array([8 * s, sy - 24 * s, -60 * s]), np.array([8 * s, sy - 24 * s, h + 30 * s]), 7 * s, 7 * s),
    ]


def _add_trees(m: ChestModel, rng: np.random.Generator) -> None:
    s = m.scale
    pulmonary_root = np.array([0.0, -8 * s, 0.55 * m.height])
    for side, bronchus in ((RIGHT, m.airways[1]), (LEFT, m.airways[2])):
        sign = SIDE_SIGN[side]
        hilum = np.array([sign * 42 * s, -2 * s, 0.5 * m.height])
        m.great_vessels.append(Tube(pulmonary_root, hilum, 10 * s, 9 * s))
        points = m.sample_lung_points(side, 3000, rng)
        m.lung_vessels += grow_tree(points, hilum, 7.5 * s, rng, min_points=12, max_depth=9, min_radius=0.5)
        m.bronchi += grow_tree(points[::2], bronchus.p1, 5.0 * s, rng, min_points=90, max_depth=5, min_radius=1.0)
