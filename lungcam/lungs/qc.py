"""Lung QC: figures that show a failed lung mask, and the warnings and exclusions they raise.

The checks look at the mask's shape against the image, independently of how the mask was made:

- left/right volume ratio (normally about 0.75-1.0);
- base offset: how far the left lung's base lies above (+) or below (-) the right one's. The right
  hemidiaphragm sits higher, so it is normally a little negative; a lobe cut off leaves one base
  centimetres above the other;
- abrupt end: the largest loss of area from one slice to the next, as a share of that lung's
  largest slice, below its lowest slice included. A lung tapers towards its apex and base; a
  mask cut off horizontally ends on a large slice;
- field-of-view edge: share of lung voxels on the image border (part of a lung outside the image);
- base gas: gas-density (smoothed below GAS_HU) mask in the lowest BASE_SHARE of a lung's volume:
  bowel or stomach gas under the diaphragm taken as lung (or a basal bulla);
- enclosed tissue: soft tissue outside the mask lying between the same lung above and below it,
  near the ribs: a consolidation along the chest wall that the mask left out (or the diaphragm
  over gas taken as lung).

Each check has a warning limit and a wider exclusion limit (config `lungs.qc`). A lung that
reaches the scan's first or last slice gets a warning: its apex or base may lie outside the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungcam.core.config import settings_from
from lungcam.core.geometry import crop_box
from lungcam.lungs.threshold import working_grid

GAS_HU = -950.0  # smoothed (2 mm) density of gas; aerated lung is about -850
BASE_SHARE = 0.15  # the base: this share of a lung's volume, from below
BASE_QUANTILE = 0.01  # a lung's base: the level with this share of its volume below
SOFT_TISSUE_HU = (-500.0, 200.0)  # smoothed density of consolidation and other soft tissue
BONE_HU = 250.0
RIB_DISTANCE_MM = 15.0  # enclosed tissue counts this close (in plane) to a rib
RIB_LATERAL_MM = 40.0  # bone this far from the body midline is rib, not spine or sternum


@dataclass(frozen=True)
class Limit:
    """A warning limit and a wider exclusion limit for one figure: (low, high) ranges, or
    upper bounds."""

    warn: tuple[float, float] | float
    exclude: tuple[float, float] | float

    @classmethod
    def from_config(cls, section: dict) -> Limit:
        return settings_from(cls, section)

    def level(self, figure: float) -> str | None:
        """'exclude', 'warn' or None for `figure`."""
        for name, limit in (("exclude", self.exclude), ("warn", self.warn)):
            outside = not limit[0] <= figure <= limit[1] if isinstance(limit, tuple) else figure > limit
            if outside:
                return name
        return None

    def describe(self, level: str) -> str:
        limit = self.exclude if level == "exclude" else self.warn
        return f"outside {limit[0]:g} to {limit[1]:g}" if isinstance(limit, tuple) else f"above {limit:g}"


@dataclass(frozen=True)
class LungQCSettings:
    """Config section `lungs.qc`: when a lung mask is implausible."""

    min_side_ml: float
    min_total_ml: float
    max_total_ml: float
    left_right_ratio: Limit
    base_offset_mm: Limit
    abrupt_end: Limit
    fov_edge_share: Limit
    base_gas_ml: Limit
    enclosed_tissue_ml: Limit

    @classmethod
    def from_config(cls, section: dict) -> LungQCSettings:
        return settings_from(cls, section)


SIDES = ((1, "right"), (2, "left"))


def _shape_figures(labels: np.ndarray, spacing) -> dict:
    """Pieces, extents, base offset, abrupt ends and scan coverage per lung."""
    figures: dict = {}
    bases = {}
    for side, name in SIDES:
        mask = labels == side
        area = mask.sum(axis=(1, 2)).astype(float)
        z = np.nonzero(area)[0]
        figures[f"{name}_components"] = int(ndimage.label(mask[crop_box(mask, 1)])[1]) if z.size else 0
        figures[f"{name}_z_extent_mm"] = round(float((z[-1] - z[0] + 1) * spacing[0]), 1) if z.size else 0.0
        if not z.size:
            continue
        bases[side] = float(np.searchsorted(np.cumsum(area) / area.sum(), BASE_QUANTILE)) * spacing[0]
        run = area[z[0] : z[-1] + 1]
        below = np.concatenate([[run[0] if z[0] == 0 else 0.0], run[:-1]])  # no judgement at the scan's edge
        figures[f"{name}_abrupt_end"] = round(float((run - below).max() / run.max()), 3)
        figures[f"{name}_reaches_scan_end"] = [end for end, hit in (("lowest", z[0] == 0), ("highest", z[-1] == len(area) - 1)) if hit]
    figures["base_offset_mm"] = round(bases[2] - bases[1], 1) if len(bases) == 2 else None
    figures["slices_with_lung"] = int((labels > 0).any(axis=(1, 2)).sum())
    return figures


def _largest_ml(mask: np.ndarray, spacing) -> float:
    """Volume (mL) of the largest connected region of `mask`, 0 when it is empty."""
    if not mask.any():
        return 0.0
    pieces, _ = ndimage.label(mask[crop_box(mask, 0)])
    return float(np.bincount(pieces.ravel())[1:].max()) * float(np.prod(spacing)) / 1000.0


def _base_gas_ml(smooth: np.ndarray, mask: np.ndarray, spacing) -> float:
    """Largest gas-density region of a lung mask within its base (BASE_SHARE of its volume)."""
    area = mask.sum(axis=(1, 2))
    top = int(np.searchsorted(np.cumsum(area) / max(area.sum(), 1), BASE_SHARE))
    gas = mask[: top + 1] & (smooth[: top + 1] < GAS_HU)
    return _largest_ml(gas, spacing)


def _near_ribs(smooth: np.ndarray, mid_x: float, spacing) -> np.ndarray:
    """Voxels within RIB_DISTANCE_MM (in plane) of bone more than RIB_LATERAL_MM from the body
    midline `mid_x` (column)."""
    lateral = np.abs(np.arange(smooth.shape[2]) - mid_x) * spacing[2] > RIB_LATERAL_MM
    ribs = (smooth > BONE_HU) & lateral[None, None, :]
    near = np.zeros(smooth.shape, bool)
    for k in np.nonzero(ribs.any(axis=(1, 2)))[0]:
        near[k] = ndimage.distance_transform_edt(~ribs[k], sampling=spacing[1:]) <= RIB_DISTANCE_MM
    return near


def _enclosed_tissue_ml(smooth: np.ndarray, labels: np.ndarray, side: int, near_ribs: np.ndarray, spacing) -> float:
    """Largest region of soft tissue outside the mask with lung `side` above and below it in
    the same column, near the ribs."""
    mask = labels == side
    present = mask.any(axis=0)
    lowest = np.where(present, np.argmax(mask, axis=0), mask.shape[0])
    highest = np.where(present, mask.shape[0] - 1 - np.argmax(mask[::-1], axis=0), -1)
    z = np.arange(mask.shape[0])[:, None, None]
    between = (z > lowest[None]) & (z < highest[None])
    tissue = (smooth > SOFT_TISSUE_HU[0]) & (smooth < SOFT_TISSUE_HU[1])
    enclosed = between & (labels == 0) & tissue & near_ribs
    return _largest_ml(enclosed, spacing)


def lung_figures(hu: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """Every QC figure of lung `labels` (1 right, 2 left) on the LPS-ordered image `hu`."""
    small_hu, small_labels, small_spacing = working_grid(hu, labels, spacing)
    figures = _shape_figures(small_labels, small_spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for side, name in SIDES:  # volumes on the full grid, not the sampled one
        figures[f"{name}_ml"] = round(float(np.count_nonzero(labels == side)) * voxel_ml, 1)
    figures["total_ml"] = round(figures["right_ml"] + figures["left_ml"], 1)
    figures["left_right_ratio"] = round(figures["left_ml"] / figures["right_ml"], 3) if figures["right_ml"] else None
    figures["fov_edge_fraction"] = _edge_share(labels)
    if not small_labels.any():
        return figures | {f"{name}_{key}": 0.0 for _, name in SIDES for key in ("base_gas_ml", "enclosed_tissue_ml")}
    body_x = small_hu[small_hu.shape[0] // 2] > -500
    mid_x = float(np.argwhere(body_x)[:, 1].mean()) if body_x.any() else small_hu.shape[2] / 2
    margin = int(np.ceil(RIB_DISTANCE_MM / small_spacing[1])) + 2
    box = crop_box(small_labels > 0, (1, margin, margin))
    small_hu, small_labels = small_hu[box], small_labels[box]
    gas_scale = ndimage.gaussian_filter(small_hu, sigma=[2.0 / s for s in small_spacing])
    tissue_scale = ndimage.gaussian_filter(small_hu, sigma=[1.0 / s for s in small_spacing])
    near_ribs = _near_ribs(tissue_scale, mid_x - box[2].start, small_spacing)
    for side, name in SIDES:
        figures[f"{name}_base_gas_ml"] = round(_base_gas_ml(gas_scale, small_labels == side, small_spacing), 1)
        figures[f"{name}_enclosed_tissue_ml"] = round(_enclosed_tissue_ml(tissue_scale, small_labels, side, near_ribs, small_spacing), 1)
    return figures


def _edge_share(labels: np.ndarray) -> float:
    """Share of lung voxels on the image's in-plane border."""
    lungs = labels > 0
    border = lungs[:, [0, -1], :].sum() + lungs[:, 1:-1, [0, -1]].sum()
    return round(float(border / max(lungs.sum(), 1)), 5)


def _check(limit: Limit, figure: float | None, message: str, reasons: list[str], warnings: list[str]) -> None:
    level = None if figure is None else limit.level(figure)
    if level == "exclude":
        reasons.append(f"{message} ({limit.describe('exclude')}: lungs.qc exclusion limit)")
    elif level == "warn":
        warnings.append(f"{message} ({limit.describe('warn')})")


def lung_checks(figures: dict, qc: LungQCSettings) -> tuple[list[str], list[str]]:
    """(exclusion reasons, warnings) for a lung mask's figures."""
    reasons: list[str] = []
    warnings: list[str] = []
    for _, name in SIDES:
        if figures[f"{name}_ml"] < qc.min_side_ml:
            reasons.append(f"{name} lung missing or tiny ({figures[f'{name}_ml']:.0f} mL < lungs.qc.min_side_ml {qc.min_side_ml:g})")
        elif figures[f"{name}_components"] > 3:
            warnings.append(f"{name} lung mask in {figures[f'{name}_components']} pieces")
    if not reasons and figures["total_ml"] < qc.min_total_ml:
        reasons.append(
            f"lung volume {figures['total_ml']:.0f} mL below lungs.qc.min_total_ml {qc.min_total_ml:g} (not a chest CT, or the lungs "
            "are cut off)"
        )
    if figures["total_ml"] > qc.max_total_ml:
        reasons.append(
            f"lung volume {figures['total_ml']:.0f} mL above lungs.qc.max_total_ml {qc.max_total_ml:g} (segmentation leaked outside the "
            "lungs)"
        )
    if reasons:  # no pair of lungs: the comparisons below mean nothing
        return reasons, warnings
    ratio, offset = figures["left_right_ratio"], figures["base_offset_mm"]
    _check(
        qc.left_right_ratio,
        ratio,
        f"left/right lung volume ratio {ratio}: a lobe may be cut off or a consolidation left out",
        reasons,
        warnings,
    )
    higher = "left" if (offset or 0) > 0 else "right"
    _check(
        qc.base_offset_mm,
        offset,
        f"the {higher} lung's base lies {abs(offset or 0):.0f} mm above the other's (left minus right {offset} mm): "
        "a lower lobe may be cut off, or one mask reaches below the diaphragm",
        reasons,
        warnings,
    )
    for _, name in SIDES:
        _check(
            qc.abrupt_end,
            figures[f"{name}_abrupt_end"],
            f"the {name} lung mask ends abruptly (a slice-to-slice loss of {100 * figures[f'{name}_abrupt_end']:.0f}% of its largest "
            "slice): part of it may be cut off",
            reasons,
            warnings,
        )
        _check(
            qc.base_gas_ml,
            figures[f"{name}_base_gas_ml"],
            f"{figures[f'{name}_base_gas_ml']:.0f} mL of gas-density mask in the {name} lung's base: bowel or stomach gas below the "
            "diaphragm may be taken as lung",
            reasons,
            warnings,
        )
        _check(
            qc.enclosed_tissue_ml,
            figures[f"{name}_enclosed_tissue_ml"],
            f"{figures[f'{name}_enclosed_tissue_ml']:.0f} mL of soft tissue along the chest wall lies between {name} lung above and "
            "below it, outside the mask: a consolidation may be left out",
            reasons,
            warnings,
        )
        for end in figures[f"{name}_reaches_scan_end"]:
            part = "base" if end == "lowest" else "apex"
            warnings.append(f"the {name} lung reaches the scan's {end} slice: its {part} may lie outside the scan")
    edge = figures["fov_edge_fraction"]
    _check(
        qc.fov_edge_share,
        edge,
        f"lungs touch the edge of the field of view ({100 * edge:.1f}% of lung voxels): part of a lung may be outside the image",
        reasons,
        warnings,
    )
    return reasons, warnings
