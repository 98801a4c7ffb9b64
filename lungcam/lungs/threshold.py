"""Classical lung segmentation by thresholding: offline, CPU only, no trained weights.

Works on a volume in LPS array order (z, y, x): x towards the patient's left, y posterior, z
superior; callers reorient first. Labels: 1 = right lung (smaller x), 2 = left lung.

1. Aerated lung: air inside the body (below `lung_hu`), without the trachea and main bronchi
   (region grown from the trachea), the two largest regions, split by erosion if they touch.
2. Dense lung: thresholding misses consolidation and dense ground glass, worst where they touch
   the chest wall. Each lung gets a cautious envelope: the inner surface of the rib cage (rays
   cast from the lung's centre to the first rib, gaps between ribs interpolated) where the lung
   reaches the ribs nearby, its mediastinal boundary, its base and its apex, smoothed so that
   the "bites" lesions take out of the aerated lung are bridged while the heart notch keeps its
   shape. A bite wider than that is a patch of rays that stop short of the ribs, ringed by rays
   that reach them; there the envelope goes to the ribs too. Dense regions inside it that touch
   the aerated lung are lung.
   A consolidated lobe takes away the air these limits are read from. Where a lung shows a
   consolidation (air bronchograms, loose or joined to the aerated lung, or a large uniform
   dense region already found), a bold envelope applies: the rib cage on every ray, the other
   lung's base and mediastinal boundary mirrored. Inside it the consolidation grows as far as
   its own density goes, so it stops at liver, heart or fat of another density; liver, heart
   and chest wall alone never open it. Below the lung's air it goes only where the
   consolidation shows itself there (bronchograms) or reaches down to it from above: a
   consolidation higher up at the density of the liver does not open the liver dome.
3. Holes: vessels and bronchi enclosed in a slice are filled; a large enclosed region is filled
   only when lung closes it above and below too, so the diaphragm dome (open towards the
   abdomen) is not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungcam.core.config import default_settings, settings_from
from lungcam.core.geometry import crop_box

log = logging.getLogger(__name__)

# Curvature (1/mm) of the paraboloid that smooths the lung apex: more curved than the apex, so
# the dome survives while dips narrower than 2*sqrt(depth/curvature) (73 mm for 40 mm) close.
DOME_CURVATURE = 0.03
WORKING_MM = 1.4  # in-plane resolution the segmentation runs at
SPLIT_MM = 3.0  # in-plane resolution of the cut between touching lungs
BASE_SHIFT_PERCENTILE = 25  # of the column-wise difference between a lung's base and the other's
BRONCHOGRAM_MM = 20.0  # an air bronchogram is a tube at least this long,
AIRWAY_RADIUS_MM = 5.0  # at most this wide (radius)
TUBE_ELONGATION = 3.5  # and this many times longer than wide
ISLAND_MM2 = 100.0  # largest cross-section in one slice of a bronchogram that joins the aerated lung
ISLAND_DENSE = 0.9  # least dense share of the 3 mm ring around such a cross-section
WALL_BAND_HU = 30.0  # least half-width of the density band a consolidation grows in
UNIFORM_SD_HU = 20.0  # most robust standard deviation (smoothed) of a uniform consolidation
BONE_ML = 0.1  # least volume of a connected piece of bone
BASE_CONTACT_ML = 1.0  # a consolidation resting on this much tissue below the lung's air goes on down
# Rays to the rib cage (_cage_limits).
RAY_STEP_DEG = 2.5  # angle between rays
TOUCH_MM = 30.0  # a ray goes beyond its air where the lung touches the ribs this close above or below
BORROW_MM = 25.0  # a ray that meets no rib takes the radius of the nearest one that does, this close
PLEURAL_GAP_MM = 10.0  # lung this close to the ribs is healthy there (pleura and extrapleural fat)
INNERMOST_MM = 15.0  # the rib cage is the innermost bone within this distance up and down
RIB_AGREES_MM = 15.0  # bone beyond a lesion is the cage when this close to the nearest rib's radius


@dataclass(frozen=True)
class ThresholdSettings:
    """Parameters of the classical method (config section `lungs.threshold`)."""

    body_hu: float  # denser than this: body (skin, fat is -100)
    lung_hu: float  # lighter than this inside the body: aerated lung
    airway_hu: float  # airway lumen, on a smoothed image
    bone_hu: float  # denser than this: bone (ribs bound the envelope)
    bridge_mm: float  # widest mediastinal bite bridged
    speck_mm: float  # dense specks thinner than this inside the envelope are noise
    small_hole_cm2: float  # holes up to this area per slice are vessels or bronchi
    bronchogram_ml: float  # air bronchograms that let a consolidation reach the bold envelope
    consolidation_ml: float  # or a uniform dense region this large inside the cautious one

    @classmethod
    def from_config(cls, section: dict) -> ThresholdSettings:
        return settings_from(cls, section)


def _pixels(mm: float, spacing) -> int:
    """`mm` as a whole number of in-plane pixels, at least one."""
    return max(1, int(round(mm / spacing[1])))


def working_grid(hu: np.ndarray, labels: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """`hu` (float) and `labels` sampled every few pixels in plane, about WORKING_MM apart, with
    that grid's spacing; callers smooth the image by 1-2 mm, which takes the sampling noise away."""
    factor = max(1, int(round(WORKING_MM / spacing[1])))
    start = factor // 2
    return (
        hu[:, start::factor, start::factor].astype(np.float32),
        labels[:, start::factor, start::factor],
        (spacing[0], spacing[1] * factor, spacing[2] * factor),
    )


def on_fine_grid(values: np.ndarray, factor: int, shape: tuple[int, ...]) -> np.ndarray:
    """`values` of a grid with one pixel per `factor` x `factor` block in plane (working_grid,
    block means) repeated over its block, back to `shape`."""
    fine = values.repeat(factor, axis=1).repeat(factor, axis=2)[:, : shape[1], : shape[2]]
    return np.pad(fine, [(0, want - have) for want, have in zip(shape, fine.shape)], mode="edge")


def square_dilation(mask: np.ndarray, width: int) -> np.ndarray:
    """In-plane binary dilation with a `width` x `width` square (odd): a separable maximum filter,
    faster than binary_dilation for the same result."""
    return ndimage.maximum_filter(mask.view(np.uint8), size=(1, width, width), mode="constant", cval=0).view(bool)


def square_erosion(mask: np.ndarray, width: int) -> np.ndarray:
    """In-plane binary erosion with a `width` x `width` square (odd), outside the array counting
    as background (binary_erosion's default): a separable minimum filter."""
    return ndimage.minimum_filter(mask.view(np.uint8), size=(1, width, width), mode="constant", cval=0).view(bool)


def square_opening(mask: np.ndarray, width: int) -> np.ndarray:
    """In-plane binary opening with a `width` x `width` square (odd), outside the array counting
    as background (binary_opening's default)."""
    return square_dilation(square_erosion(mask, width), width)


def _largest_components(mask: np.ndarray, count: int, structure=None) -> list[np.ndarray]:
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:count]
    return [labels == (i + 1) for i in order]


def slice_holes(mask: np.ndarray) -> np.ndarray:
    """Per (z, y, x) slice, the background pixels `mask` encloses (as binary_fill_holes on each
    slice, 4-connected background): one labelling of the whole background, its in-plane pieces
    that do not reach the slice's edge."""
    cross = np.zeros((3, 3, 3), bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    pieces, _ = ndimage.label(~mask, structure=cross)
    edge = np.unique(np.concatenate([pieces[:, [0, -1], :].ravel(), pieces[:, :, [0, -1]].ravel()]))
    enclosed = np.ones(pieces.max() + 1, bool)
    enclosed[edge] = False
    enclosed[0] = False  # the mask itself
    return enclosed[pieces]


def body_mask(hu: np.ndarray, threshold: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """The patient's body: largest connected dense region, holes filled slice by slice.

    A per-slice opening (about 1.5 mm) first cuts thin bridges to the table and blankets; wider
    would break a thin chest wall and open the body outline.
    """
    dense = hu > threshold
    dense = square_opening(dense, 2 * _pixels(1.5, spacing) + 1)
    parts = _largest_components(dense, 1)
    if not parts:
        return np.zeros(hu.shape, bool)
    return parts[0] | slice_holes(parts[0])


def airway_mask(smooth: np.ndarray, air: np.ndarray, spacing: tuple[float, float, float], threshold: float) -> np.ndarray:
    """Trachea and main bronchi: region growing from the trachea in the top slices.

    The seed is the air component nearest the body's centre line in the highest slices that
    contain air of trachea size (1-8 cm^2). Growing uses the image smoothed by 1 mm (`smooth`)
    and a stricter threshold than the lungs, so it stays inside the airway lumen; if it leaks
    into the lungs (more than 400 mL), the threshold is lowered until it does not.
    """
    pixel_cm2 = spacing[1] * spacing[2] / 100.0
    seed = None
    for k in range(smooth.shape[0] - 1, max(-1, smooth.shape[0] - 40), -1):
        labels, n = ndimage.label(air[k])
        if n == 0:
            continue
        sizes = ndimage.sum(air[k], labels, range(1, n + 1)) * pixel_cm2
        centres = ndimage.center_of_mass(air[k], labels, range(1, n + 1))
        middle = smooth.shape[2] / 2
        candidates = [(abs(c[1] - middle), i + 1) for i, (size, c) in enumerate(zip(sizes, centres)) if 1.0 <= size <= 8.0]
        if candidates:
            seed = (k, labels == min(candidates)[1])
            break
    if seed is None:
        return np.zeros(smooth.shape, bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for limit in (threshold, threshold - 40, threshold - 70):
        lumen = (smooth < limit) & air
        grown_labels, _ = ndimage.label(lumen)
        ids = np.unique(grown_labels[seed[0]][seed[1] & lumen[seed[0]]])
        ids = ids[ids > 0]
        grown = np.isin(grown_labels, ids)
        if grown.sum() * voxel_ml < 400.0:
            return grown
    return np.zeros(smooth.shape, bool)


def _columns(part: np.ndarray) -> np.ndarray:
    """Voxels of a (z, y, x) region per image column x."""
    return np.count_nonzero(part, axis=(0, 1))


def _side(part: np.ndarray, body_center_x: float) -> int:
    columns = _columns(part)
    return 1 if (columns * np.arange(len(columns))).sum() / columns.sum() < body_center_x else 2


def _spans_midline(part: np.ndarray, body_center_x: float) -> bool:
    """True when a region has a substantial share on both sides of the midline (both lungs)."""
    columns = _columns(part)
    before = columns[: int(np.ceil(body_center_x))].sum()
    return min(before, columns.sum() - before) / columns.sum() > 0.1


def _inplane_depth(mask: np.ndarray) -> np.ndarray:
    """Per pixel, the number of in-plane 3 x 3 erosions that `mask` survives, plus one (the
    chessboard distance to the nearest pixel outside it in its slice, the array's edge counting
    as outside): `depth > k` is `mask` eroded k times."""
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = True
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    return ndimage.distance_transform_cdt(padded, metric=plane)[:, 1:-1, 1:-1]


def split_lungs(lungs: np.ndarray, body_center_x: float, step: int = 1) -> np.ndarray:
    """Label right (1) and left (2) lung.

    Separate regions on the two sides of the midline are the two lungs, however small one of them
    is (a largely consolidated lung keeps only a little air). One region spanning the midline
    (lungs touching in front of or behind the mediastinum) is eroded in-plane until it falls
    apart; every voxel then goes to the nearer of the two eroded cores (all within the lungs'
    bounding box, where the nearest core always lies). The nearer core is found on every
    `step`-th pixel in plane and shared by the `step` x `step` block around it, so the cut
    between the lungs may shift by up to a block; the cores keep their own side.
    """
    labels = np.zeros(lungs.shape, np.uint8)
    parts = _largest_components(lungs, 2)
    if not parts:
        return labels
    if not _spans_midline(parts[0], body_center_x):
        for part in parts:
            side = _side(part, body_center_x)
            if not (labels == side).any():
                labels[part] = side
        return labels
    box = ndimage.find_objects(lungs.view(np.uint8))[0]
    region, middle = lungs[box], body_center_x - box[2].start
    depth = _inplane_depth(region)
    for erosions in range(1, 11):
        cores = _largest_components(depth > erosions, 2)
        if len(cores) < 2 or _spans_midline(cores[0], middle):
            continue
        sides = [_side(core, middle) for core in cores]
        if sides[0] != sides[1]:
            marker = np.zeros(region.shape, np.uint8)
            for core, side in zip(cores, sides):
                marker[core] = side
            labels[box][region] = np.where(marker > 0, marker, _nearest_marker(marker, step))[region]
            return labels
    labels[parts[0]] = _side(parts[0], body_center_x)  # could not be split: one label
    return labels


def _nearest_marker(marker: np.ndarray, step: int) -> np.ndarray:
    """Per voxel, the value of the nearest nonzero `marker` voxel (distance in voxels), found on
    every `step`-th pixel in plane and repeated over the block around it."""
    start = step // 2
    coarse = marker[:, start::step, start::step]
    nearest = ndimage.distance_transform_edt(coarse == 0, sampling=(1, step, step), return_distances=False, return_indices=True)
    return on_fine_grid(coarse[tuple(nearest)], step, marker.shape)


# ---- envelope of one lung ------------------------------------------------------------------


def _fill_nan_nearest(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if not valid.any():
        return values
    _, nearest = ndimage.distance_transform_edt(~valid, return_indices=True)
    return values[tuple(nearest)]


def _paraboloid(radius_px: tuple[int, int], curvature: tuple[float, float]) -> np.ndarray:
    """A non-flat structuring element -c*d^2 (mm), matching the curvature of a dome."""
    ry, rx = radius_px
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    return -(curvature[0] * yy**2 + curvature[1] * xx**2)


def _ray_geometry(center: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(angles, radii, ys, xs): the pixel of each (ray, radius) step from `center` (y, x)."""
    height, width = shape
    angles = np.deg2rad(np.arange(0, 360, RAY_STEP_DEG))
    radii = np.arange(0, max(height, width) * 0.75)
    ys = np.clip(np.rint(center[0] + np.sin(angles)[:, None] * radii[None, :]).astype(int), 0, height - 1)
    xs = np.clip(np.rint(center[1] + np.cos(angles)[:, None] * radii[None, :]).astype(int), 0, width - 1)
    return angles, radii, ys, xs


def _nearest_valid(values: np.ndarray, valid: np.ndarray, spacing_z: float, arc_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Value of the nearest valid ray in a (slice, angle) map and its distance in mm (angles
    wrap; one angle step is `arc_mm` at the cage radius)."""
    n = values.shape[1]
    padded = np.concatenate([values, values, values], axis=1)
    mask = np.concatenate([valid, valid, valid], axis=1)
    distance, nearest = ndimage.distance_transform_edt(~mask, sampling=(spacing_z, arc_mm), return_indices=True)
    middle = slice(n, 2 * n)
    return padded[nearest[0], nearest[1]][:, middle], distance[:, middle]


def _innermost(cage: np.ndarray, spacing_z: float) -> np.ndarray:
    """Between two ribs a ray can reach the scapula first; the rib cage is the innermost bone
    around a ray (INNERMOST_MM up and down, two angle steps either side)."""
    hits = np.isfinite(cage)
    size = (2 * int(round(INNERMOST_MM / spacing_z)) + 1, 5)
    inner = ndimage.minimum_filter(np.where(hits, cage, np.inf), size=size, mode="wrap")
    return np.where(hits, np.minimum(cage, inner), np.nan)


def _cage_limits(
    aerated: np.ndarray, bone: np.ndarray, center: np.ndarray, spacing: tuple[float, float, float], slices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per slice, whether each pixel lies inside the rib cage seen from `center` (y, x pixels).

    Rays every RAY_STEP_DEG in every slice: the cage radius on a ray is the first bone beyond
    the aerated lung. Ribs run obliquely, so a ray between two ribs takes the radius of the
    nearest ray that hit one, in this or a neighbouring slice, up to BORROW_MM away. A ray
    extends beyond its air only where, at that angle within TOUCH_MM up or down, the lung
    touches the ribs, or where rays that reach the ribs ring it on every side (a large
    pleural-based lesion); otherwise (costal cartilage, mediastinum, paravertebral muscle) it
    ends where its air ends.

    Returns that cautious limit and a bold one, where every ray reaches the first rib beyond its
    air at any distance, over `slices` (slices without air included, rays then start at the
    centre). The bold one bounds a consolidation that has shown itself (see add_dense_lung); no
    pleural gap is taken off it, the consolidation's own density stops it at the chest wall.
    """
    outer, cage, far_cage = _ray_radii(aerated, bone, center, spacing, slices)
    hits = np.isfinite(cage)
    if not hits.any():
        return np.ones(aerated.shape, bool), np.ones(aerated.shape, bool)
    pixel = spacing[1]
    arc_mm = np.deg2rad(RAY_STEP_DEG) * np.nanmedian(cage) * pixel  # one angle step at the cage radius
    cage = _innermost(cage, spacing[0])
    far_cage = _innermost(far_cage, spacing[0])
    # The lung stops short of the ribs by the pleura and extrapleural fat. That gap, measured on
    # rays where the two are close (healthy lung) and carried to the other rays from the nearest
    # such ray, keeps the envelope at the expected lung surface rather than at the ribs.
    gap = cage - outer
    healthy = hits & (outer >= 0) & (gap <= PLEURAL_GAP_MM / pixel)
    if not healthy.any():
        return np.ones(aerated.shape, bool), np.ones(aerated.shape, bool)
    local_gap, _ = _nearest_valid(np.where(healthy, gap, 0.0), healthy, spacing[0], arc_mm)
    borrowed, distance = _nearest_valid(np.nan_to_num(cage), hits, spacing[0], arc_mm)
    far_borrowed, far_distance = _nearest_valid(np.nan_to_num(far_cage), np.isfinite(far_cage), spacing[0], arc_mm)
    # A lesion's bite: at this angle the lung reaches the ribs in nearby slices. Where it never
    # does (muscle beside the spine, cartilage in front) the gap is anatomy, not a lesion.
    window = (2 * int(round(TOUCH_MM / spacing[0])) + 1, 3)
    touched_nearby = ndimage.maximum_filter(healthy.astype(np.uint8), size=window, mode="wrap") > 0
    cautious = np.where((distance <= BORROW_MM) & touched_nearby, borrowed - local_gap, np.maximum(outer, 0))
    # A pleural-based lesion larger than that: a patch of rays whose air stops more than
    # PLEURAL_GAP_MM short of the cage, ringed (above, below, on both sides) by rays whose air
    # reaches it. The bone found beyond the lesion is the cage where it agrees with the nearest
    # rib's radius.
    reached = (outer >= 0) & (distance <= BORROW_MM) & (borrowed - outer <= PLEURAL_GAP_MM / pixel)
    bite = _ringed(reached)
    agrees = np.isfinite(far_cage) & (np.abs(np.nan_to_num(far_cage) - borrowed) <= RIB_AGREES_MM / pixel)
    cautious = np.where(bite, np.where(agrees, np.nan_to_num(far_cage), borrowed) - local_gap, cautious)
    bold = np.where(far_distance <= BORROW_MM, far_borrowed, np.maximum(outer, 0))
    return _inside_radii(cautious, center, aerated.shape, slices), _inside_radii(bold, center, aerated.shape, slices)


def _ray_radii(
    aerated: np.ndarray, bone: np.ndarray, center: np.ndarray, spacing: tuple[float, float, float], slices: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (slice, ray), in pixels: the aerated lung's outermost radius (-1: no air), the first
    bone beyond it within TOUCH_MM (nan: none) and the first bone beyond it at any distance."""
    depth = aerated.shape[0]
    angles, radii, ys, xs = _ray_geometry(center, aerated.shape[1:])
    reach = int(TOUCH_MM / spacing[1])
    outer = np.full((depth, len(angles)), -1.0)
    cage = np.full((depth, len(angles)), np.nan)
    far_cage = np.full((depth, len(angles)), np.nan)
    for k in slices:
        lung_ray = aerated[k][ys, xs]
        last = len(radii) - 1 - np.argmax(lung_ray[:, ::-1], axis=1)
        outer[k] = np.where(lung_ray.any(axis=1), last, -1)
        # Beyond the aerated lung, or from the centre on a ray with no air left at all.
        beyond = bone[k][ys, xs] & (radii[None, :] > outer[k][:, None])
        hit = beyond.any(axis=1)
        far_cage[k, hit] = np.argmax(beyond, axis=1)[hit]
        near = hit & ((outer[k] < 0) | (far_cage[k] <= outer[k] + reach))
        cage[k, near] = far_cage[k, near]
    return outer, cage, far_cage


def _inside_radii(limit: np.ndarray, center: np.ndarray, shape: tuple[int, ...], slices: np.ndarray) -> np.ndarray:
    """Pixels of `slices` no farther from `center` than the (slice, ray) radius `limit`."""
    height, width = shape[1:]
    n_rays = limit.shape[1]
    gy, gx = np.mgrid[:height, :width]
    pixel_radius = np.hypot(gy - center[0], gx - center[1])
    pixel_ray = np.rint((np.rad2deg(np.arctan2(gy - center[0], gx - center[1])) % 360) / RAY_STEP_DEG).astype(int) % n_rays
    inside = np.ones(shape, bool)
    for k in slices:
        inside[k] = pixel_radius <= limit[k][pixel_ray]
    return inside


def _bone(hu: np.ndarray, body: np.ndarray, spacing, threshold: float) -> np.ndarray:
    """Bone inside the body: pieces of at least BONE_ML denser than `threshold`. Specks of
    contrast or calcification inside a consolidation are not the rib cage."""
    bone = (hu >= threshold) & body
    pieces, _ = ndimage.label(bone)
    sizes = np.bincount(pieces.ravel()) * float(np.prod(spacing)) / 1000.0
    sizes[0] = 0.0
    return (sizes >= BONE_ML)[pieces]


def _ringed(contact: np.ndarray) -> np.ndarray:
    """Cells of a (slice, angle) map enclosed by `contact` cells; angles wrap around."""
    n = contact.shape[1]
    tiled = np.concatenate([contact] * 3, axis=1)
    return (ndimage.binary_fill_holes(tiled) & ~tiled)[:, n : 2 * n]


def _lateral(width: int, side: int, mid_x: float) -> np.ndarray:
    """Distance (pixels) of each column from the body midline, positive on lung `side`'s side."""
    x = np.arange(width)
    return (mid_x - x) if side == 1 else (x - mid_x)


def _medial_boundary(aerated: np.ndarray, side: int, mid_x: float, spacing, bridge_mm: float) -> np.ndarray:
    """Per (z, y) row, the lung's (bite-bridged) mediastinal boundary as a distance from the midline.

    The boundary is the aerated lung's medial-most pixel; rows without lung take the nearest
    row's value; a grey opening removes bites narrower than `bridge_mm`.
    """
    lateral = _lateral(aerated.shape[2], side, mid_x)
    has = aerated.any(axis=2)
    medial = np.where(has, np.where(aerated, lateral[None, None, :], np.inf).min(axis=2), np.nan)
    medial = _fill_nan_nearest(np.nan_to_num(medial, nan=0.0), has)
    window = (max(1, int(bridge_mm / spacing[0])), max(1, int(bridge_mm / spacing[1])))
    return ndimage.grey_opening(medial, size=window)


def _surfaces(aerated: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: lowest and highest aerated voxel (mm), and whether the column has lung."""
    has = aerated.any(axis=0)
    bottom = np.where(has, np.where(aerated, z[:, None, None], np.inf).min(axis=0), 0.0)
    top = np.where(has, np.where(aerated, z[:, None, None], -np.inf).max(axis=0), 0.0)
    return _fill_nan_nearest(bottom, has), _fill_nan_nearest(top, has), has


def _mirror(image: np.ndarray, mid_x: float) -> np.ndarray:
    """Reflect a map about the body midline column mid_x (the last axis)."""
    x = np.clip(np.rint(2 * mid_x - np.arange(image.shape[-1])).astype(int), 0, image.shape[-1] - 1)
    return image[..., x]


def _smooth_surface(surface: np.ndarray, spacing, operation) -> np.ndarray:
    """Grey closing (or opening) of a height map (mm) with a dome-shaped paraboloid, 60 mm wide.

    Computed on a copy subsampled to about 3 mm per pixel (the structuring element would
    otherwise have tens of thousands of elements) and interpolated back.
    """
    step = _pixels(3.0, spacing)
    coarse = surface[::step, ::step]
    pixel = spacing[1] * step
    radius = max(1, int(60.0 / pixel))
    smoothed = operation(coarse, structure=_paraboloid((radius, radius), (DOME_CURVATURE * pixel**2,) * 2))
    if step == 1:
        return smoothed
    zoom = (surface.shape[0] / coarse.shape[0], surface.shape[1] / coarse.shape[1])
    return ndimage.zoom(smoothed, zoom, order=1)[: surface.shape[0], : surface.shape[1]]


def _height_limits(own: tuple, other: tuple, depth: int, mid_x: float, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Pixels between the lung's base and apex, per column: a cautious and a bold envelope.
    `own` and `other` are the two lungs' _surfaces.

    Cautious: the base is the lowest aerated voxel of the column. On real scans no smooth model
    of the diaphragm (paraboloid opening, quadratic fit, the other side mirrored) was accurate
    enough to go lower without taking in the liver or spleen dome, so without further evidence
    a lesion lying on the diaphragm under a column's lowest air is missed rather than the dome
    included. Bold: the base may go down to the other lung's base, mirrored and raised by the
    usual difference between the two hemidiaphragms (a low percentile of the column-wise
    difference: columns where this lung's base is consolidated stand higher), over the union of
    the two lungs' footprints; a lower lobe consolidated down to the diaphragm has no air to go by.

    The apex is smoothed with a paraboloid closing, and the apices being nearly symmetric, where
    a lung's own apex falls short of the other's, mirrored, by more than 10 mm the mirrored one is
    used (a lobe consolidated from apex to fissure has no air to go by).
    """
    z = np.arange(depth) * spacing[0]
    bottom, top, has = own
    closing = dict(structure=np.ones((5, 5), bool), iterations=3)
    footprint = ndimage.binary_closing(has, **closing)
    floor, reach = bottom, footprint
    other_bottom, other_top, other_has = other
    if other_has.any():
        mirrored_has = _mirror(other_has, mid_x)
        mirrored_top = _mirror(other_top, mid_x)
        top = np.where(mirrored_has & (mirrored_top > top + 10.0), mirrored_top, top)
        both = has & mirrored_has
        if both.any():
            mirrored_bottom = _mirror(other_bottom, mid_x)
            shift = np.percentile((bottom - mirrored_bottom)[both], BASE_SHIFT_PERCENTILE)
            floor = np.where(mirrored_has, np.minimum(bottom, mirrored_bottom + shift), bottom)
        reach = ndimage.binary_closing(has | mirrored_has, **closing)
    top = _smooth_surface(top, spacing, ndimage.grey_closing)
    height = z[:, None, None]
    cautious = (height >= bottom[None]) & (height <= top[None]) & footprint[None]
    bold = (height >= floor[None]) & (height <= top[None]) & reach[None]
    return cautious, bold


def touching(candidates: np.ndarray, aerated: np.ndarray, reach: int = 1) -> np.ndarray:
    """The connected pieces of `candidates` that come within `reach` voxels of `aerated`, found in
    the box around `candidates` (which holds every aerated voxel they can reach)."""
    found = np.zeros(candidates.shape, bool)
    if not candidates.any():
        return found
    box = crop_box(candidates, reach)
    pieces, _ = ndimage.label(candidates[box])
    ids = np.unique(pieces[ndimage.binary_dilation(aerated[box], iterations=reach) & candidates[box]])
    found[box] = np.isin(pieces, ids[ids > 0])
    return found


def _dilated(mask: np.ndarray, iterations: int) -> np.ndarray:
    """binary_dilation(mask, iterations=...), computed in the box around `mask`, the only place
    it can reach."""
    grown = np.zeros(mask.shape, bool)
    if mask.any():
        box = crop_box(mask, iterations)
        grown[box] = ndimage.binary_dilation(mask[box], iterations=iterations)
    return grown


def _tubes(air: np.ndarray, spacing) -> np.ndarray:
    """The connected pieces of `air` shaped like airways: at most AIRWAY_RADIUS_MM in radius, at
    least BRONCHOGRAM_MM long (four standard deviations along the main axis) and TUBE_ELONGATION
    times longer than wide. Noise specks, bubbles in bowel content and gas-filled bowel are not."""
    pieces, n = ndimage.label(air)
    keep = np.zeros(n + 1, bool)
    for i, box in enumerate(ndimage.find_objects(pieces)):
        inside = pieces[box] == i + 1
        points = np.argwhere(inside) * np.asarray(spacing)
        if len(points) < 4:
            continue
        length = 4.0 * np.sqrt(np.linalg.eigvalsh(np.cov(points.T))[-1])
        if length < BRONCHOGRAM_MM:
            continue
        radius = ndimage.distance_transform_edt(np.pad(inside, 1), sampling=spacing).max()
        keep[i + 1] = radius <= AIRWAY_RADIUS_MM and length >= TUBE_ELONGATION * 2.0 * radius
    return keep[pieces]


def _enclosed_air(aerated: np.ndarray, dense: np.ndarray, spacing) -> np.ndarray:
    """Small cross-sections of the aerated lung enclosed by `dense` tissue, slice by slice.

    A bronchogram that joins the aerated lung somewhere (a lower lobe's bronchi run on into the
    aerated upper lobe) is aerated lung, not loose air. In the slices through the consolidation
    its cross-sections are still islands: 2D pieces of the lung of at most ISLAND_MM2, whose
    3 mm ring is at least ISLAND_DENSE dense. `dense` is the dense tissue inside the lung's bold
    envelope: the tips of a healthy lung's costophrenic recesses are islands too, but their ring
    is diaphragm and chest wall, below the lung's base or beyond the ribs, outside it.
    """
    found = np.zeros(aerated.shape, bool)
    if not aerated.any():
        return found
    ring = _pixels(3.0, spacing)
    box = crop_box(aerated, ring + 1)
    in_plane = np.array([np.zeros((3, 3)), ndimage.generate_binary_structure(2, 1), np.zeros((3, 3))], bool)
    pieces, _ = ndimage.label(aerated[box], structure=in_plane)
    area = np.bincount(pieces.ravel())[1:] * spacing[1] * spacing[2]
    small = np.flatnonzero(area <= ISLAND_MM2) + 1
    if small.size == 0:
        return found
    candidates = np.where(np.isin(pieces, small), pieces, 0)
    del pieces
    grown = ndimage.grey_dilation(candidates, footprint=np.ones((1, 2 * ring + 1, 2 * ring + 1), bool))
    around = np.where(candidates > 0, 0, grown)  # each island's ring (where rings meet, the larger id)
    dense_share = ndimage.mean(dense[box], labels=around, index=small)
    found[box] = np.isin(candidates, small[np.nan_to_num(dense_share) >= ISLAND_DENSE])
    return found


def _bronchogram_walls(bronchograms: np.ndarray, dense: np.ndarray, spacing) -> np.ndarray:
    """The consolidation around air bronchograms, 3 to 6 mm from them (clear of the lumen's blur)."""
    step = _pixels(3.0, spacing)
    near = _dilated(bronchograms, step)
    return _dilated(near, step) & ~near & dense


def _density_band(smooth: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """Median density of `region` and the half-width of its band: three robust standard
    deviations, at least WALL_BAND_HU."""
    values = smooth[region]
    level = float(np.median(values))
    return level, max(3.0 * 1.4826 * float(np.median(np.abs(values - level))), WALL_BAND_HU)


def _consolidation_density(
    smooth: np.ndarray, bronchograms: np.ndarray, found: np.ndarray, bold: np.ndarray, spacing, settings: ThresholdSettings
) -> tuple[float, float] | None:
    """Density band of a consolidation, or None when there is no evidence of one.

    Evidence is either air bronchograms (at least `bronchogram_ml`; the band is read off their
    walls) or a large, uniform dense region already found inside the cautious envelope (at
    least `consolidation_ml` once 3 mm of blurred rim is peeled off, robust standard deviation
    at most UNIFORM_SD_HU). Vessels, partial volume at the lung's surface and patchy ground glass
    are neither that large nor that uniform.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if bronchograms.sum() * voxel_ml >= settings.bronchogram_ml:
        walls = _bronchogram_walls(bronchograms, bold, spacing)
        if walls.any():
            return _density_band(smooth, walls)
    if not found.any():
        return None
    box = crop_box(found, (0, 1, 1))  # in-plane depth counts the box's edge as outside: still outside `found`
    cores, n = ndimage.label(_inplane_depth(found[box]) > _pixels(3.0, spacing))
    if n:
        sizes = np.bincount(cores.ravel())[1:] * voxel_ml
        largest = np.argmax(sizes)
        if sizes[largest] >= settings.consolidation_ml:
            level, band = _density_band(smooth[box], cores == largest + 1)
            if band <= 3.0 * UNIFORM_SD_HU:
                return level, band
    return None


def _grow_consolidation(
    smooth: np.ndarray,
    bronchograms: np.ndarray,
    aerated: np.ndarray,
    found: np.ndarray,
    bold: np.ndarray,
    speck_width: int,
    spacing,
    settings: ThresholdSettings,
) -> np.ndarray:
    """The consolidation inside the bold envelope (dense voxels `bold`) connected to the aerated
    lung or the dense lung `found` so far, or nothing when the lung shows none.

    A consolidation is nearly uniform: where its density differs from the liver, heart or fat
    next to it, it stops there. Between it and the aerated lung lies a blurred shell less dense
    than its band: bridged (3 mm) when testing the connection, and added back at the end.
    An opening `speck_width` pixels wide removes dense specks (`speck_mm`), as for the cautious envelope.
    """
    density = _consolidation_density(smooth, bronchograms, found, bold, spacing, settings)
    if density is None:
        return np.zeros(bold.shape, bool)
    level, band = density
    rim = _pixels(3.0, spacing)
    uniform = bold & (np.abs(smooth - level) <= band)
    connected = touching(square_opening(uniform, speck_width) | bronchograms, aerated | found, rim)
    consolidated = square_dilation(connected, speck_width) & (uniform | bronchograms)
    shell = _dilated(consolidated, rim) & bold & (smooth <= level + band)
    return consolidated | shell


def add_dense_lung(
    labels: np.ndarray, hu: np.ndarray, smooth: np.ndarray, body: np.ndarray, spacing, settings: ThresholdSettings
) -> np.ndarray:
    """Add consolidation and dense ground glass inside each lung's envelopes to `labels`.

    Dense tissue touching the aerated lung inside the cautious envelope is lung. When the lung
    shows a consolidation (see _consolidation_density), dense tissue of the consolidation's
    density band inside the bold envelope, connected to the lung, is lung too. Bronchograms are
    air tubes lateral to the lung's mediastinal boundary (the hilar bronchi are medial to it),
    either more than 3 mm from the aerated lung or part of it but running through dense tissue
    inside the bold envelope (see _enclosed_air). The bold envelope also takes in the other
    lung's cautious envelope mirrored about the midline, lateral to this lung's mediastinal
    boundary: across a consolidated lobe the rays meet its vessels before any rib. `smooth` is
    `hu` smoothed by 1 mm.
    """
    out = labels.copy()
    z = np.arange(hu.shape[0]) * spacing[0]
    lungs = {side: labels == side for side in (1, 2)}
    surfaces = {side: _surfaces(lungs[side], z) for side in (1, 2)}
    bone = _bone(hu, body, spacing, settings.bone_hu)
    dense = body & (hu >= settings.lung_hu) & (hu < settings.bone_hu) & (labels == 0)
    rim = _pixels(3.0, spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    solid = smooth >= settings.lung_hu
    loose_air = body & ~solid & ~square_dilation(labels > 0, 2 * rim + 1)
    mid_x = np.argwhere(body[body.shape[0] // 2])[:, 1].mean() if body[body.shape[0] // 2].any() else hu.shape[2] / 2
    medials = {side: _medial_boundary(lungs[side], side, mid_x, spacing, settings.bridge_mm) for side in (1, 2)}
    speck_width = 2 * _pixels(settings.speck_mm, spacing) + 1
    limits = {}
    for side in (1, 2):
        if lungs[side].sum() >= 100:
            center = np.argwhere(lungs[side].any(axis=0)).mean(axis=0)
            height, height_bold = _height_limits(surfaces[side], surfaces[3 - side], hu.shape[0], mid_x, spacing)
            slices = np.nonzero(height_bold.any(axis=(1, 2)))[0]
            limits[side] = (height, height_bold) + _cage_limits(lungs[side], bone, center, spacing, slices)
    for side in (1, 2):
        if side not in limits:
            continue
        aerated = lungs[side]
        lateral = _lateral(hu.shape[2], side, mid_x)[None, None, :]
        height, height_bold, cage, cage_bold = limits[side]
        medial = medials[side]
        beyond_medial = lateral >= medial[:, :, None] - 1
        medial_bold = medial
        if 3 - side in limits:
            # The chest wall is nearly symmetric: the other lung's envelope, mirrored, bounds this
            # one's too; rows without air reach as far medially as the other lung does.
            cage_bold = cage_bold | (_mirror(limits[3 - side][0] & limits[3 - side][2], mid_x) & beyond_medial)
            medial_bold = np.where(aerated.any(axis=2), medial, np.minimum(medial, medials[3 - side]))
        envelope = height & cage & beyond_medial
        bold = height_bold & cage_bold
        keep = square_dilation(touching(square_opening(dense & envelope, speck_width), aerated), speck_width)
        keep &= dense & envelope  # the opening's rim restored
        inside_bold = bold & beyond_medial
        islands = _enclosed_air(aerated, inside_bold & solid, spacing)
        bronchograms = _tubes((loose_air | islands) & inside_bold, spacing)
        bold &= (lateral >= medial_bold[:, :, None] - 1) & dense
        # Below the lung's air the bold envelope reaches the liver or spleen dome: it is entered
        # only when the consolidation shows itself there (bronchograms, or the consolidation
        # grown above reaching down to it); otherwise the base is the diaphragm.
        below = z[:, None, None] < surfaces[side][0][None]
        shows_below = (bronchograms & below).sum() * voxel_ml >= settings.bronchogram_ml
        grown = _grow_consolidation(
            smooth, bronchograms, aerated, keep, bold if shows_below else bold & ~below, speck_width, spacing, settings
        )
        if not shows_below and (_dilated(grown, rim) & bold & below).sum() * voxel_ml >= BASE_CONTACT_ML:
            grown = _grow_consolidation(smooth, bronchograms, aerated, keep, bold, speck_width, spacing, settings)
        keep |= grown
        out[keep & (out == 0)] = side
    return out


# ---- holes ----------------------------------------------------------------------------------


def _open_holes(mask: np.ndarray, holes: np.ndarray, order: range) -> np.ndarray:
    """2-D holes that continue, through the slices in `order`, into tissue outside the lung.

    A hole is open when most of it lies over non-lung tissue (or over an open hole) in the
    previous slice of `order`: the diaphragm dome seen from below, for instance.
    """
    opened = np.zeros(mask.shape, bool)
    previous = None
    for k in order:
        if previous is not None and holes[k].any():
            outside = (~mask[previous] & ~holes[previous]) | opened[previous]
            labels, n = ndimage.label(holes[k])
            share = ndimage.mean(outside, labels, range(1, n + 1))
            opened[k] = np.isin(labels, 1 + np.nonzero(np.asarray(share) >= 0.5)[0])
        previous = k
    return opened


def fill_holes(labels: np.ndarray, spacing, small_hole_cm2: float) -> np.ndarray:
    """Fill holes enclosed by each lung in a slice: small ones always (vessels, bronchi), large
    ones only if lung also closes them below and above (not the diaphragm dome, which opens
    towards the abdomen)."""
    filled = labels.copy()
    small_px = small_hole_cm2 * 100.0 / (spacing[1] * spacing[2])
    for side in (1, 2):
        mask = labels == side
        if not mask.any():
            continue
        # The lung's box and one voxel more: its holes and the slices just beyond its ends.
        box = crop_box(mask, 1)
        mask, out = mask[box], filled[box]
        holes = slice_holes(mask)
        large = np.zeros(mask.shape, bool)
        for k in np.nonzero(holes.any(axis=(1, 2)))[0]:
            hole_labels, n = ndimage.label(holes[k])
            sizes = np.bincount(hole_labels.ravel())[1:]
            large[k] = np.isin(hole_labels, 1 + np.nonzero(sizes > small_px)[0])
        depth = mask.shape[0]
        opened = _open_holes(mask, holes, range(depth)) | _open_holes(mask, holes, range(depth - 1, -1, -1))
        fill = holes & ~(large & opened)
        out[fill & (out == 0)] = side
    return filled


def drop_crumbs(labels: np.ndarray, spacing, min_ml: float = 1.0) -> np.ndarray:
    """Remove pieces of a lung label smaller than `min_ml` (left over by airway removal)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for side in (1, 2):
        pieces, n = ndimage.label(labels == side)
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:] * voxel_ml
            labels[np.isin(pieces, 1 + np.nonzero(sizes < min_ml)[0])] = 0
    return labels


def segment_lungs(hu: np.ndarray, spacing: tuple[float, float, float], settings: ThresholdSettings | None = None) -> np.ndarray:
    """Lung labels (0, 1 right, 2 left) of an LPS-ordered (z, y, x) volume with `spacing` mm.

    Fine in-plane grids (512x512 scans, 0.6-0.8 mm) are segmented at about WORKING_MM per pixel
    (block means) and the labels repeated back: four times less work, same lungs.
    """
    settings = settings if settings is not None else default_settings(ThresholdSettings, "lungs", "threshold")
    factor = _pixels(WORKING_MM, spacing)
    if factor == 1:
        return _segment(hu, spacing, settings)
    depth, height, width = hu.shape
    pad = ((0, 0), (0, -height % factor), (0, -width % factor))
    padded = np.pad(hu, pad, mode="edge")
    small = np.zeros((depth, padded.shape[1] // factor, padded.shape[2] // factor))
    for row in range(factor):  # block means as sums of strided views: faster than a reshaped mean
        for column in range(factor):
            small += padded[:, row::factor, column::factor]
    small = (small / factor**2).astype(np.float32)
    labels = _segment(small, (spacing[0], spacing[1] * factor, spacing[2] * factor), settings)
    return on_fine_grid(labels, factor, hu.shape)


def _segment(hu: np.ndarray, spacing: tuple[float, float, float], settings: ThresholdSettings) -> np.ndarray:
    labels = np.zeros(hu.shape, np.uint8)
    body = body_mask(hu, settings.body_hu, spacing)
    if not body.any():
        return labels
    box = crop_box(body)
    hu, body = hu[box], body[box]
    air = (hu < settings.lung_hu) & body
    air = ndimage.binary_opening(air, structure=np.ones((1, 2, 2), bool))
    # The airway wall's partial-volume ring must go too, or hole filling brings the lumen back.
    smooth = ndimage.gaussian_filter(hu, sigma=[1.0 / s for s in spacing])  # 1 mm: noise makes specks, not tubes
    airways = square_dilation(airway_mask(smooth, air, spacing, settings.airway_hu), 5)
    parts = _largest_components(air & ~airways, 2)
    parts = [p for p in parts if p.sum() >= 0.05 * parts[0].sum()] if parts else []
    lungs = np.logical_or.reduce(parts) if parts else np.zeros(hu.shape, bool)
    middle = body[body.shape[0] // 2]
    center_x = np.argwhere(middle)[:, 1].mean() if middle.any() else hu.shape[2] / 2
    cropped = split_lungs(lungs, center_x, _pixels(SPLIT_MM, spacing))
    cropped = add_dense_lung(cropped, hu, smooth, body & ~airways, spacing, settings)
    cropped = fill_holes(cropped, spacing, settings.small_hole_cm2)
    cropped[airways] = 0
    labels[box] = drop_crumbs(cropped, spacing)
    return labels
