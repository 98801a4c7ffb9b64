"""Keep identifying data out of every output.

Two layers. (1) The dcm2niix BIDS sidecar is reduced to an allowlist of technical fields:
`dcm2niix -ba y` drops names and dates but still writes institution, station, device serial
number, study description and image comments, any of which can identify a patient or a site; a
field added by a future dcm2niix is dropped until someone decides it is harmless. (2) Every
string written by a stage is checked against the identifying values read from the DICOM headers
(names, birth dates, record numbers) in case someone typed them into a free-text field such as the
series description; a string that contains one is replaced.
"""

from __future__ import annotations

import re

ALLOWED_SIDECAR_FIELDS = frozenset(
    {
        "Modality",
        "Manufacturer",
        "ManufacturersModelName",
        "SoftwareVersions",
        "BodyPart",
        "PatientPosition",
        "SeriesDescription",
        "ProtocolName",
        "ImageType",
        "SeriesNumber",
        "AcquisitionNumber",
        "ConvolutionKernel",
        "ReconstructionDiameter",
        "SliceThickness",
        "SpacingBetweenSlices",
        "ExposureTime",
        "XRayTubeCurrent",
        "XRayExposure",
        "KVP",
        "GantryDetectorTilt",
        "ImageOrientationPatientDICOM",
        "ImageOrientationText",
        "ConversionSoftware",
        "ConversionSoftwareVersion",
        "BidsGuess",
        "RawImage",
    }
)
REMOVED = "[removed: contained an identifier]"


def sidecar_fields(sidecar: dict) -> dict:
    """The allowed technical fields of a dcm2niix sidecar."""
    return {k: v for k, v in sidecar.items() if k in ALLOWED_SIDECAR_FIELDS}


def identifier_pattern(identifiers) -> re.Pattern | None:
    """One case-insensitive pattern matching any identifier as a whole word (3+ characters)."""
    words = sorted({i.strip() for i in identifiers if len(i.strip()) >= 3}, key=len, reverse=True)
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE)


def scrub(value, pattern: re.Pattern | None, removed: list[str], where: str = ""):
    """Return `value` with every string that matches `pattern` replaced; note where in `removed`."""
    if pattern is None:
        return value
    if isinstance(value, str):
        if pattern.search(value):
            removed.append(where or "value")
            return REMOVED
        return value
    if isinstance(value, dict):
        return {k: scrub(v, pattern, removed, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, pattern, removed, f"{where}[{i}]") for i, v in enumerate(value)]
    return value
