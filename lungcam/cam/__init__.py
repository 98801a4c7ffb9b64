"""CAM stage: each patient's infection map on its scan's grid, its lesion candidates, and how
well the maps find known lesions.

Modules: maps (the class activation maps), lesions (candidates and burden from a map) and
localisation (maps against lesion masks and slice labels).
"""

from lungcam.core.interface import lazy_interface

# Interface name -> the module that defines it.
INTERFACE = {
    "MapSettings": "maps",
    "write_patient_cam": "maps",
    "LesionSettings": "lesions",
    "find_lesions": "lesions",
    "localise_cohort": "localisation",
}
__getattr__, __all__ = lazy_interface(__name__, INTERFACE)
