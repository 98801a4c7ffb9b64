"""Class-specific lung lesions, defined analytically so that any grid can render them.

- COVID-19: bilateral, peripheral (subpleural), multifocal ground-glass opacities (-700 to
  -300 HU) that leave vessels visible, posterior and lower predominance, some with crazy paving
  (thickened interlobular septa as a polygonal network).
- CAP: lobar or segmental consolidation (-100 to +50 HU) hiding the vessels, mostly unilateral,
  with air bronchograms (air-filled bronchi crossing the consolidation); sharp at the fissure.
- NP: none. Small solid nodules (distractors, not lesions) are drawn for every class alike.

Placement uses a `LungSampler`, a coarse voxel map of the lungs with distances to the pleura, so
the same code places lesions in the synthetic chest and in a real normal CT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .anatomy import LEFT, RIGHT, Tube, rasterize_tubes, smoothstep


@dataclass
class LungSampler:
    """Lung labels on a coarse regular grid (LPS mm) with each voxel's distance to the pleura."""

    labels: np.ndarray  # (z, y, x) uint8
    origin: np.ndarray  # LPS of voxel (0, 0, 0), in (x, y, z) order
    spacing: np.ndarray  # voxel size in (x, y, z) order, mm
    pleural_mm: np.ndarray = field(init=False)

    def __post_init__(self):
        self.spacing = np.broadcast_to(np.asarray(self.spacing, float), (3,)).copy()
        self.pleural_mm = ndimage.distance_transform_edt(self.labels > 0, sampling=self.spacing[::-1])

    @classmethod
    def from_function(cls, label_fn, lo: np.ndarray, hi: np.ndarray, spacing: float = 3.0) -> LungSampler:
        """Sample `label_fn(x, y, z)` on a grid spanning lo..hi (x, y, z in mm)."""
        axes = [np.arange(lo[i], hi[i] + spacing, spacing) for i in range(3)]
        labels = label_fn(axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None])
        return cls(labels.astype(np.uint8), np.array([a[0] for a in axes]), spacing)

    @classmethod
    def from_labels(cls, labels: np.ndarray, origin: np.ndarray, spacing: np.ndarray, step_mm: float = 3.0) -> LungSampler:
        """Subsample a full-resolution label volume (z, y, x) to about `step_mm` per voxel."""
        steps = np.maximum(1, np.round(step_mm / np.asarray(spacing, float))).astype(int)  # x, y, z
        coarse = labels[:: steps[2], :: steps[1], :: steps[0]]
        return cls(coarse, np.asarray(origin, float), np.asarray(spacing, float) * steps)

    def coordinates(self, index: np.ndarray) -> np.ndarray:
        """LPS mm (x, y, z) of voxel indices (z, y, x)."""
        return self.origin + index[:, ::-1] * self.spacing

    def points(self, side: int, rng: np.random.Generator, count: int, max_pleural_mm: float | None = None) -> np.ndarray:
        mask = self.labels == side
        if max_pleural_mm is not None:
            mask &= self.pleural_mm <= max_pleural_mm
        index = np.argwhere(mask)
        if index.size == 0:
            index = np.argwhere(self.labels == side)
        pick = index[rng.integers(len(index), size=count)]
        return self.coordinates(pick) + rng.uniform(-0.5, 0.5, (count, 3)) * self.spacing

    def extent(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        coords = self.coordinates(np.argwhere(self.labels == side))
        return coords.min(axis=0), coords.max(axis=0)


@dataclass
class GroundGlass:
    """An irregular ellipsoidal opacity; `septa` seeds draw crazy paving when present."""

    center: np.ndarray
    axes: np.ndarray
    rotation: np.ndarray
    waves: np.ndarray  # rows: kx, ky, kz, phase, amplitude (deforms the outline)
    level_hu: float
    side: int
    septa: np.ndarray | None = None

    def weight(self, x, y, z) -> np.ndarray:
        d = np.stack(np.broadcast_arrays(x - self.center[0], y - self.center[1], z - self.center[2]), axis=-1)
        local = d @ self.rotation
        q = np.sqrt(((local / self.axes) ** 2).sum(axis=-1))
        for kx, ky, kz, phase, amp in self.waves:
            q = q + amp * np.cos(kx * d[..., 0] + ky * d[..., 1] + kz * d[..., 2] + phase)
        return smoothstep((1.0 - q) * self.axes.min(), 4.0)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """A box that contains the lesion whatever its outline deformation (sum of amplitudes < 1)."""
        reach = self.axes.max() / max(1.0 - self.waves[:, 4].sum(), 0.2) + 4.0
        return self.center - reach, self.center + reach

    def septal_lines(self, x, y, z, weight: np.ndarray) -> np.ndarray:
        """0..1 strength of the septal network (edges between Voronoi cells of `septa`)."""
        lines = np.zeros(weight.shape, dtype=np.float32)
        inside = weight > 0.05
        if self.septa is None or not inside.any():
            return lines
        pts = np.stack([np.broadcast_to(v, weight.shape)[inside] for v in (x, y, z)], axis=1)
        dist, _ = cKDTree(self.septa).query(pts, k=2)
        lines[inside] = smoothstep(1.0 - np.abs(dist[:, 1] - dist[:, 0]), 1.0)
        return lines


@dataclass
class Consolidation:
    """Consolidation of a lobe (below/above a fissure plane) or of a segment (within a ball)."""

    side: int
    fissure_point: np.ndarray
    fissure_normal: np.ndarray  # the consolidated side is where (p - point) . normal > 0
    horizontal_z: float | None  # right middle/upper lobe split (None: not used)
    keep_below_horizontal: bool
    ball_center: np.ndarray | None
    ball_radius: float
    level_hu: float
    bronchograms: list[Tube] = field(default_factory=list)

    def weight(self, x, y, z, lungs: np.ndarray) -> np.ndarray:
        signed = (
            (x - self.fissure_point[0]) * self.fissure_normal[0]
            + (y - self.fissure_point[1]) * self.fissure_normal[1]
            + (z - self.fissure_point[2]) * self.fissure_normal[2]
        )
        w = smoothstep(signed, 1.5)
        if self.horizontal_z is not None:
            w = w * smoothstep((self.horizontal_z - z) if self.keep_below_horizontal else (z - self.horizontal_z), 1.5)
        if self.ball_center is not None:
            r = np.sqrt((x - self.ball_center[0]) ** 2 + (y - self.ball_center[1]) ** 2 + (z - self.ball_center[2]) ** 2)
            w = w * smoothstep(self.ball_radius - r, 8.0)
        return np.where(lungs == self.side, w, 0.0).astype(np.float32)


@dataclass
class Nodule:
    center: np.ndarray
    radius: float
    level_hu: float


@dataclass
class LesionSet:
    """Everything inserted into one patient's lungs."""

    ground_glass: list[GroundGlass] = field(default_factory=list)
    consolidations: list[Consolidation] = field(default_factory=list)
    nodules: list[Nodule] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "ground_glass": len(self.ground_glass),
            "crazy_paving": sum(g.septa is not None for g in self.ground_glass),
            "consolidations": len(self.consolidations),
            "sides": sorted({c.side for c in self.consolidations} | {g.side for g in self.ground_glass}),
            "nodules": len(self.nodules),
        }


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _waves(rng: np.random.Generator, count: int, wavelength: tuple[float, float], amplitude: tuple[float, float]) -> np.ndarray:
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = directions * (2 * np.pi / rng.uniform(*wavelength, (count, 1)))
    return np.column_stack([k, rng.uniform(0, 2 * np.pi, count), rng.uniform(*amplitude, count)])


def draw_nodules(sampler: LungSampler, rng: np.random.Generator) -> list[Nodule]:
    """Solid nodules for any class (same probability), so they carry no class information."""
    if rng.uniform() >= 0.4:
        return []
    nodules = []
    for _ in range(int(rng.integers(1, 4))):
        side = RIGHT if rng.uniform() < 0.5 else LEFT
        center = sampler.points(side, rng, 1)[0]
        nodules.append(Nodule(center, float(rng.uniform(2.0, 5.0)), float(rng.uniform(10.0, 60.0))))
    return nodules


def draw_covid(sampler: LungSampler, rng: np.random.Generator) -> list[GroundGlass]:
    """2-7 peripheral GGOs, both lungs involved in 90% of patients, dependent-basal predominance."""
    count = int(rng.integers(2, 8))
    bilateral = rng.uniform() < 0.9
    first = RIGHT if rng.uniform() < 0.5 else LEFT
    sides = [first if not bilateral else (first if i % 2 == 0 else 3 - first) for i in range(count)]
    lesions = []
    midline = 0.5 * (sampler.extent(RIGHT)[0][0] + sampler.extent(LEFT)[1][0])
    for side in sides:
        candidates = sampler.points(side, rng, 200, max_pleural_mm=12.0)
        lo, hi = sampler.extent(side)
        posterior = (candidates[:, 1] - lo[1]) / max(hi[1] - lo[1], 1.0)
        lower = (hi[2] - candidates[:, 2]) / max(hi[2] - lo[2], 1.0)
        lateral = np.abs(candidates[:, 0] - midline) / max(abs(hi[0] - midline), abs(lo[0] - midline), 1.0)
        # Subpleural along the ribs (not the mediastinum), posterior and basal predominance.
        weights = np.exp(1.5 * posterior + 1.0 * lower + 3.0 * lateral)
        center = candidates[rng.choice(len(candidates), p=weights / weights.sum())]
        axes = rng.uniform(12.0, 32.0, 3)
        septa = None
        if rng.uniform() < 0.35:
            n = int(np.prod(2 * axes) / 900.0) + 8
            septa = center + rng.uniform(-1, 1, (n, 3)) * axes * 1.2
        waves = _waves(rng, 4, (20.0, 45.0), (0.05, 0.15))
        lesions.append(GroundGlass(center, axes, _rotation(rng), waves, float(rng.uniform(-700.0, -350.0)), side, septa))
    return lesions


def _lobe_consolidation(sampler: LungSampler, side: int, rng: np.random.Generator, segmental: bool) -> Consolidation:
    lo, hi = sampler.extent(side)
    span = hi - lo
    lobe = rng.choice(
        ["lower", "upper", "middle"] if side == RIGHT else ["lower", "upper"], p=[0.55, 0.3, 0.15] if side == RIGHT else [0.65, 0.35]
    )
    # Oblique fissure: from high at the back to low at the front, as seen from the side.
    back = np.array([0.0, lo[1] + 0.85 * span[1], lo[2] + 0.75 * span[2]])
    front = np.array([0.0, lo[1] + 0.1 * span[1], lo[2] + 0.05 * span[2]])
    along = front - back
    normal = np.array([0.0, -along[2], along[1]])  # perpendicular to the fissure in the y-z plane
    normal /= np.linalg.norm(normal)
    if normal[2] > 0:  # make the normal point down and back: towards the lower lobe
        normal = -normal
    if lobe != "lower":
        normal = -normal
    horizontal = lo[2] + 0.55 * span[2] if (side == RIGHT and lobe != "lower") else None
    consolidation = Consolidation(side, back, normal, horizontal, lobe == "middle", None, 0.0, float(rng.uniform(-100.0, 50.0)))
    points = sampler.points(side, rng, 400)
    inside = points[consolidation.weight(points[:, 0], points[:, 1], points[:, 2], np.full(len(points), side)) > 0.5]
    if len(inside) < 5:  # degenerate lobe on an odd lung shape: fall back to the lower lobe
        consolidation.fissure_normal = -consolidation.fissure_normal if lobe != "lower" else consolidation.fissure_normal
        consolidation.horizontal_z = None
        inside = points
    if segmental:
        consolidation.ball_center = inside[rng.integers(len(inside))]
        consolidation.ball_radius = float(rng.uniform(28.0, 50.0))
        center = consolidation.ball_center
        region = inside[np.linalg.norm(inside - center, axis=1) < consolidation.ball_radius]
        region = region if len(region) >= 3 else inside
    else:
        region = inside
        center = region.mean(axis=0)
    consolidation.bronchograms = _bronchograms(region, center, side, rng)
    return consolidation


def _bronchograms(region: np.ndarray, center: np.ndarray, side: int, rng: np.random.Generator) -> list[Tube]:
    """Air-filled bronchi entering the consolidation from its medial side and branching outwards."""
    medial = region[np.argsort(np.abs(region[:, 0]))[: max(1, len(region) // 5)]].mean(axis=0)
    start = medial + 0.3 * (center - medial)
    tubes = []
    for _ in range(int(rng.integers(3, 7))):
        target = region[rng.integers(len(region))]
        middle = start + 0.5 * (target - start)
        tubes.append(Tube(start, middle, 2.6, 1.8))
        tubes.append(Tube(middle, target, 1.8, 1.0))
        branch = region[rng.integers(len(region))]
        tubes.append(Tube(middle, middle + 0.6 * (branch - middle), 1.6, 0.9))
    return tubes


def draw_cap(sampler: LungSampler, rng: np.random.Generator) -> list[Consolidation]:
    """One lobar or segmental consolidation; a second, segmental one in the other lung in 15%."""
    side = RIGHT if rng.uniform() < 0.6 else LEFT
    found = [_lobe_consolidation(sampler, side, rng, segmental=rng.uniform() < 0.6)]
    if rng.uniform() < 0.15:
        found.append(_lobe_consolidation(sampler, 3 - side, rng, segmental=True))
    return found


def draw_lesions(label: str, sampler: LungSampler, rng: np.random.Generator) -> LesionSet:
    """The lesions of one patient; nodules are drawn first so they do not depend on the label."""
    lesions = LesionSet(nodules=draw_nodules(sampler, rng))
    if label == "COVID-19":
        lesions.ground_glass = draw_covid(sampler, rng)
    elif label == "CAP":
        lesions.consolidations = draw_cap(sampler, rng)
    return lesions


def _ground_glass_boxes(lesions: LesionSet, in_lung: np.ndarray, xs, ys, zs):
    """Per opacity: its bounding box in the slab, weight and target HU (septal lines included)."""
    for ggo in lesions.ground_glass:
        lo, hi = ggo.bounds()
        box = tuple(slice(*np.searchsorted(axis, [lo[i], hi[i]])) for i, axis in ((2, zs), (1, ys), (0, xs)))
        if any(b.start >= b.stop for b in box):
            continue
        bx, by, bz = xs[None, None, box[2]], ys[None, box[1], None], zs[box[0], None, None]
        w = np.where(in_lung[box], ggo.weight(bx, by, bz), 0.0).astype(np.float32)
        if w.any():
            yield ggo, box, w, ggo.level_hu + 150.0 * ggo.septal_lines(bx, by, bz, w)


def apply_lesions_to_real(lesions: LesionSet, hu: np.ndarray, lungs: np.ndarray, spacing_zyx, xs, ys, zs) -> tuple[np.ndarray, np.ndarray]:
    """Insert lesions into a slab of a real CT; returns (HU, lesion weight 0..1).

    A real scan has its own noise and vessels, so lesions shift the local mean (a smoothed copy)
    instead of replacing values: the noise texture stays. Ground glass shifts parenchyma only,
    weighted by how parenchyma-like the smoothed value is, so vessels stay visible;
    consolidation shifts everything except air (the real bronchi become air bronchograms).
    """
    z, y, x = zs[:, None, None], ys[None, :, None], xs[None, None, :]
    smooth = ndimage.gaussian_filter(hu, sigma=[1.5 / s for s in spacing_zyx])
    parenchyma = np.clip((-550.0 - smooth) / 250.0, 0.0, 1.0)
    air = np.clip((-900.0 - smooth) / 80.0, 0.0, 1.0)
    out = hu.copy()
    lesion = np.zeros(hu.shape, dtype=np.float32)
    in_lung = lungs > 0
    for _, box, w, target in _ground_glass_boxes(lesions, in_lung, xs, ys, zs):
        out[box] += w * parenchyma[box] * (target - smooth[box])
        np.maximum(lesion[box], w, out=lesion[box])
    pixel = float(xs[1] - xs[0])
    for consolidation in lesions.consolidations:
        w = consolidation.weight(x, y, z, lungs)
        if not w.any():
            continue
        bronchogram = rasterize_tubes(consolidation.bronchograms, xs, ys, zs, pixel) * w
        out += w * (1.0 - air) * (consolidation.level_hu - smooth)
        out = out * (1 - bronchogram) - 950.0 * bronchogram
        lesion = np.maximum(lesion, w)
    for nodule in lesions.nodules:
        r = np.sqrt((x - nodule.center[0]) ** 2 + (y - nodule.center[1]) ** 2 + (z - nodule.center[2]) ** 2)
        w = smoothstep(nodule.radius - r, pixel) * in_lung
        out += w * (nodule.level_hu - smooth)
    return out.astype(np.float32), lesion * in_lung


def apply_lesions(lesions: LesionSet, slab: dict, xs, ys, zs, soft_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Compose one rendered slab with its lesions; returns (HU, lesion weight 0..1).

    Order matters: ground glass raises the parenchyma before vessels are drawn (vessels stay
    visible through it); consolidation replaces parenchyma and vessels but not the air in the
    bronchi (air bronchograms); nodules go last.
    """
    z, y, x = zs[:, None, None], ys[None, :, None], xs[None, None, :]
    hu, lungs = slab["hu"].copy(), slab["lungs"]
    in_lung = lungs > 0
    lesion = np.zeros(hu.shape, dtype=np.float32)
    for _, box, w, target in _ground_glass_boxes(lesions, in_lung, xs, ys, zs):
        hu[box] = hu[box] + w * (target - hu[box])
        np.maximum(lesion[box], w, out=lesion[box])
    vessels = slab["vessels"] * in_lung
    hu = hu * (1 - vessels) + 40.0 * vessels
    air = slab["airway_lumen"]
    for consolidation in lesions.consolidations:
        w = consolidation.weight(x, y, z, lungs)
        if not w.any():
            continue
        bronchogram = rasterize_tubes(consolidation.bronchograms, xs, ys, zs, soft_mm) * w
        hu = hu + w * (consolidation.level_hu - hu)
        hu = hu * (1 - bronchogram) - 950.0 * bronchogram
        lesion = np.maximum(lesion, w)
    wall = slab["airway_wall"] * (1 - lesion)
    hu = hu * (1 - wall) + 20.0 * wall
    hu = hu * (1 - air) - 1000.0 * air
    for nodule in lesions.nodules:
        r = np.sqrt((x - nodule.center[0]) ** 2 + (y - nodule.center[1]) ** 2 + (z - nodule.center[2]) ** 2)
        w = smoothstep(nodule.radius - r, soft_mm) * in_lung
        hu = hu + w * (nodule.level_hu - hu)
    return hu.astype(np.float32), lesion * in_lung
