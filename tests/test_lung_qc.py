"""Lung QC: each planted mask failure on a real scan raises its warning; real masks that are
right raise none; exclusion limits exclude."""

from __future__ import annotations

import numpy as np
import pytest

from lungcam.lungs.qc import Limit, LungQCSettings, lung_checks, lung_figures

from .conftest import ball, pleural_consolidation


@pytest.fixture(scope="module")
def qc(config) -> LungQCSettings:
    return LungQCSettings.from_config(config["lungs"]["qc"])


def checks(hu, labels, spacing, qc) -> tuple[list[str], list[str]]:
    return lung_checks(lung_figures(hu, labels, spacing), qc)


def test_a_normal_real_mask_raises_nothing(real_masks, qc):
    assert checks(*real_masks["normal001"], qc) == ([], [])


def test_a_lower_lobe_cut_off_is_flagged(real_masks, qc):
    hu, labels, spacing = real_masks["normal001"]
    cut = labels.copy()
    z = np.nonzero((labels == 2).any(axis=(1, 2)))[0]
    level = z[0] + int(0.35 * (z[-1] - z[0]))  # the left lung ends in a straight line below the hilum
    cut[:level][cut[:level] == 2] = 0
    reasons, warnings = checks(hu, cut, spacing, qc)
    assert any("left lung's base lies" in w for w in warnings), warnings
    # Cut at its widest slice: the mask ends on a full slice, past the exclusion limit.
    assert any("left lung mask ends abruptly (a slice-to-slice loss of 100%" in r for r in reasons), reasons


def test_gas_below_the_diaphragm_taken_as_lung_is_flagged(real_masks, qc):
    hu, labels, spacing = real_masks["normal001"]
    left = labels == 2
    z0 = int(np.nonzero(left.any(axis=(1, 2)))[0][0])
    y, x = np.argwhere(left[z0 + 5]).mean(axis=0)
    pocket = ball(hu.shape, (z0 - 4, y, x), 22.0, spacing) & ~left  # stomach gas under the left dome
    assert pocket.sum() * np.prod(spacing) / 1000 > 15
    image, mask = hu.copy(), labels.copy()
    image[pocket] = -1000
    mask[pocket] = 2
    assert any("gas-density mask in the left lung's base" in w for w in checks(image, mask, spacing, qc)[1])


def test_a_consolidation_left_out_of_the_mask_is_flagged(real_masks, qc):
    hu, labels, spacing = real_masks["normal001"]
    image, lesion = pleural_consolidation(hu, labels, spacing, side=1, textured=False)
    mask = labels.copy()
    mask[lesion] = 0
    assert any("right lung above and below it" in w for w in checks(image, mask, spacing, qc)[1])
    # The same lesion inside the mask is not flagged.
    assert not any("above and below" in w for w in checks(image, labels, spacing, qc)[1])


def test_the_real_cap_mask_that_takes_bowel_gas_is_flagged(real_masks, qc):
    hu, labels, spacing = real_masks["cap001"]
    figures = lung_figures(hu, labels, spacing)
    assert figures["left_base_gas_ml"] > 20 and figures["right_base_gas_ml"] < 5
    warnings = lung_checks(figures, qc)[1]
    assert any("gas-density mask in the left lung's base" in w for w in warnings), warnings


def test_limits_warn_then_exclude(qc):
    base = {
        "right_ml": 2500.0,
        "left_ml": 2200.0,
        "total_ml": 4700.0,
        "left_right_ratio": 0.88,
        "base_offset_mm": -12.0,
        "right_components": 1,
        "left_components": 1,
        "fov_edge_fraction": 0.0,
        "right_reaches_scan_end": [],
        "left_reaches_scan_end": [],
        **{f"{side}_{key}": 0.0 for side in ("right", "left") for key in ("abrupt_end", "base_gas_ml", "enclosed_tissue_ml")},
    }
    assert lung_checks(base, qc) == ([], [])
    assert lung_checks({**base, "left_ml": 20.0, "total_ml": 2520.0}, qc)[0] == [
        "left lung missing or tiny (20 mL < lungs.qc.min_side_ml 150)"
    ]
    assert "below lungs.qc.min_total_ml" in lung_checks({**base, "right_ml": 400.0, "left_ml": 300.0, "total_ml": 700.0}, qc)[0][0]
    assert "above lungs.qc.max_total_ml" in lung_checks({**base, "right_ml": 6500.0, "left_ml": 6000.0, "total_ml": 12500.0}, qc)[0][0]
    reasons, warnings = lung_checks({**base, "left_right_ratio": 0.5}, qc)
    assert not reasons and warnings == [
        "left/right lung volume ratio 0.5: a lobe may be cut off or a consolidation left out (outside 0.65 to 1.2)"
    ]
    reasons, warnings = lung_checks({**base, "left_right_ratio": 0.3}, qc)
    assert not warnings and reasons[0].endswith("(outside 0.35 to 2: lungs.qc exclusion limit)")
    assert "edge of the field of view" in lung_checks({**base, "fov_edge_fraction": 0.01}, qc)[1][0]
    assert "edge of the field of view" in lung_checks({**base, "fov_edge_fraction": 0.1}, qc)[0][0]
    assert lung_checks({**base, "left_reaches_scan_end": ["lowest"]}, qc)[1] == [
        "the left lung reaches the scan's lowest slice: its base may lie outside the scan"
    ]
    assert Limit(warn=(-40.0, 15.0), exclude=(-100.0, 60.0)).level(30.0) == "warn"
    assert Limit(warn=10.0, exclude=200.0).level(250.0) == "exclude"


def test_qc_figures_of_an_empty_mask_exclude(qc):
    hu = np.full((20, 64, 64), -1000, np.int16)
    figures = lung_figures(hu, np.zeros(hu.shape, np.uint8), (2.0, 1.0, 1.0))
    reasons, _ = lung_checks(figures, qc)
    assert reasons and "right lung missing" in reasons[0]
