"""Ingest stage: a patient's DICOM study -> one verified, de-identified NIfTI volume in HU.

Modules: reading the study (dicom_series), choosing the series (series_selection), conversion
(dcm2niix), the HU check (hu_check), de-identification (deidentify, leak_scan), compression
(compress), scans given twice (scan_index), and the stage itself (stage).
"""

from lungcam.core.interface import lazy_interface

# Interface name -> the module that defines it.
INTERFACE = {
    "IngestSettings": "stage",
    "ingest_patient": "stage",
    "publish": "stage",
    "RECORD_NAME": "stage",
    "VOLUME_NAME": "stage",
    "shared_scan_problems": "scan_index",
}
__getattr__, __all__ = lazy_interface(__name__, INTERFACE)
