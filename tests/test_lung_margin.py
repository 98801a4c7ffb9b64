"""The lesion margin: dense regions the mask's boundary cuts reach a little beyond it."""

from __future__ import annotations

import numpy as np
import pytest

from lungcam.lungs.margin import MarginSettings, add_lesion_margin
from lungcam.lungs.stage import LungSettings, segment

from .conftest import pleural_consolidation, without_margin

SPACING = (2.0, 1.0, 1.0)
MARGIN = MarginSettings(margin_mm=2.0, core_mm=5.0)


def chest() -> tuple[np.ndarray, np.ndarray]:
    """(HU, labels): a right lung (x 10-29) and a left one (x 40-59) in soft tissue, air around
    the body. The right lung holds a consolidation 10 pixels wide at its lateral edge, cut 2
    pixels short by the mask; the left one a vessel 3 pixels wide that reaches its edge."""
    hu = np.full((6, 40, 70), 40.0)
    hu[:, :, :3] = -1000.0  # outside the body
    labels = np.zeros(hu.shape, np.uint8)
    hu[:, 5:35, 10:30] = -850.0
    labels[:, 5:35, 10:30] = 1
    hu[:, 5:35, 40:60] = -850.0
    labels[:, 5:35, 40:60] = 2
    hu[:, 15:25, 8:20] = 30.0  # the consolidation, whose true edge is at x = 8
    hu[:, 18:21, 45:60] = 40.0  # the vessel
    return hu, labels


def test_a_cut_consolidation_gets_its_margin_with_its_side():
    hu, labels = chest()
    refined = add_lesion_margin(labels, hu, SPACING, MARGIN)
    assert (refined[:, 16:24, 8:10] == 1).all()  # the cut-off edge is back (corners rounded), right lung
    assert not refined[:, 15:25, :7].any()  # no further than the margin
    assert (refined[labels > 0] == labels[labels > 0]).all()  # the mask stays as it was
    assert not refined[:, 18:21, 60:].any()  # a vessel is no consolidation
    assert not refined[:, 5:12, :10].any()  # aerated lung is never extended
    assert add_lesion_margin(labels, hu, SPACING, MarginSettings(0.0, 5.0)) is labels


def test_the_margin_takes_tissue_not_air():
    hu, labels = chest()
    hu[:, :, :9] = -1000.0  # the consolidation reaches the edge of the body
    refined = add_lesion_margin(labels, hu, SPACING, MARGIN)
    assert (refined[:, 16:24, 9] == 1).all()
    assert not refined[:, :, :9].any()


def test_only_what_the_prior_calls_lung_gets_a_margin():
    hu, labels = chest()
    prior = labels.copy()
    assert (add_lesion_margin(labels, hu, SPACING, MARGIN, prior)[:, 16:24, 8:10] == 1).all()
    prior[:, 15:25, 10:20] = 0  # the prior: this dense region is not lung (heart, liver)
    assert (add_lesion_margin(labels, hu, SPACING, MARGIN, prior) == labels).all()


@pytest.mark.parametrize("side", [1, 2])
def test_a_pleural_consolidation_on_a_real_scan_keeps_its_edge(real_masks, config, side):
    hu, labels, spacing = real_masks["normal001"]
    image, lesion = pleural_consolidation(hu, labels, spacing, side, textured=True)
    settings = LungSettings.from_config(config["lungs"])
    without = segment(image, spacing, without_margin(settings))[0]
    found = add_lesion_margin(without, image, spacing, settings.lesion_margin)
    inside, inside_without = (found[lesion] > 0).mean(), (without[lesion] > 0).mean()
    assert inside >= 0.98 and inside >= inside_without + 0.01
    beyond_ml = ((found > 0) & (without == 0) & ~lesion).sum() * float(np.prod(spacing)) / 1000
    assert beyond_ml < 25.0  # a rim beside the lesion and large vessels, not a leak (lungs: 3.5 L)
