"""How densely the class activation maps are sampled (`cam.shifts`), without importing torch.

`lungcam.cam.maps` evaluates the maps at these input offsets; the summary's methods paragraph states
them. Kept apart so that report jobs need not import torch to describe the maps.
"""

from __future__ import annotations

CELL = 8  # input pixels per cell of the finest map, pool3 (three 2 x 2 max-pools)
SHIFTS = (1, 2, 4)  # offsets per axis that divide a cell evenly and symmetrically into whole pixels
PIXEL_METHODS = ("integrated_gradients", "joint_saliency")  # maps at the input's own pixels: nothing to evaluate densely


def evaluations_per_axis(method: str, shifts: int) -> int:
    """The `shifts` that `method` is evaluated with: as configured for the layer maps, 1 for
    Integrated Gradients, whose attributions are already per input pixel (dense evaluation would
    multiply its cost and give the same map)."""
    shift_offsets(shifts)  # refuses a count that does not divide a cell
    return 1 if method in PIXEL_METHODS else shifts


def shift_offsets(shifts: int) -> list[int]:
    """The input offsets (pixels, per axis) of dense evaluation: `shifts` of them, evenly spaced
    over one pool3 cell and symmetric about 0, so that averaging them does not move the map."""
    if shifts not in SHIFTS:
        raise ValueError(f"cam shifts must be one of {', '.join(map(str, SHIFTS))}, not {shifts!r}")
    step = CELL // shifts
    return [step // 2 + i * step - CELL // 2 for i in range(shifts)]
