"""Lungs stage: right and left lung labels on the scan's grid, lung QC and its montage.

Modules: the classical method (threshold), the learned lung prior that completes its mask
(prior) and its training (prior_training), the margin around consolidation at the mask's edge
(margin), lungmask's U-Nets (lungmask_backend), the checks of a finished mask (qc), and the
stage itself (stage).
"""

from lungcam.core.interface import lazy_interface

# Interface name -> the module that defines it.
INTERFACE = {
    "LungSettings": "stage",
    "run_lungs": "stage",
    "segment_lungs": "threshold",
    "PriorSettings": "prior",
    "LungmaskSettings": "lungmask_backend",
    "RESOURCE_DIR": "lungmask_backend",
    "download_weights": "lungmask_backend",
    "require_weights": "lungmask_backend",
    "weights_path": "lungmask_backend",
}
__getattr__, __all__ = lazy_interface(__name__, INTERFACE)
