"""Read a patient's DICOM study folder and describe its image stacks.

dcm2niix converts whatever it finds. Choosing *which* stack is the chest CT to analyse, and
explaining that choice in the QC record, needs every file's header first. Headers are read with
pydicom without decoding pixels (about 1 ms per file), which also lets us catch truncated files
before they make dcm2niix abandon a whole series.

Identifying header values (names, birth dates, record numbers) are collected in memory only, so
that later steps can scrub them from free-text fields; they are never written anywhere.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)

CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}

# Transfer syntaxes dcm2niix decodes (its README, "DICOM transfer syntaxes"): native, deflated,
# JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 and RLE.
DCM2NIIX_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}

# Header values that identify a person. Read to scrub them from free text, never written.
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientNames",
    "OtherPatientIDs",
    "AccessionNumber",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
)

# Series-level technical fields reported in the QC record (keyword -> QC name).
TECHNICAL_FIELDS = {
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "model",
    "ConvolutionKernel": "kernel",
    "BodyPartExamined": "body_part",
    "PatientPosition": "patient_position",
    "KVP": "kvp",
    "XRayTubeCurrent": "tube_current_ma",
    "GantryDetectorTilt": "gantry_tilt_header_deg",
    "ContrastBolusAgent": "contrast_agent",
    "SeriesDescription": "series_description",
}

SKIPPED_NAMES = {"DICOMDIR", "LOCKFILE", "VERSION"}


@dataclass(frozen=True)
class DicomFile:
    """One readable DICOM file, reduced to what series selection and QC need."""

    path: Path
    series_uid: str
    series_number: int | None
    modality: str
    sop_class: str
    image_type: tuple[str, ...]
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    transfer_syntax: str
    frames: int
    pixel_problem: str | None
    technical: dict = field(hash=False, compare=False)


@dataclass
class StackGeometry:
    """Slice layout of a stack along its slice normal, from ImagePositionPatient."""

    slices: int
    spacing_mm: float
    min_spacing_mm: float
    max_gap_mm: float
    uneven: bool
    tilt_deg: float
    obliquity_deg: float
    duplicate_positions: int
    extent_mm: float


@dataclass
class ImageStack:
    """Files of one series sharing orientation and matrix: what dcm2niix turns into one volume."""

    files: list[DicomFile]
    index: int = 0

    @property
    def first(self) -> DicomFile:
        return self.files[0]

    @property
    def label(self) -> str:
        number = self.first.series_number
        desc = self.first.technical.get("series_description") or ""
        name = f"series {number}" if number is not None else f"stack {self.index}"
        return f"{name} '{desc}'" if desc else name

    @property
    def thickness_mm(self) -> float | None:
        return self.first.slice_thickness

    @property
    def image_count(self) -> int:
        return sum(f.frames for f in self.files)

    def geometry(self) -> StackGeometry | None:
        return stack_geometry(self.files)


@dataclass
class Study:
    """Everything found in one patient's folder."""

    files: list[DicomFile]
    skipped: dict[str, int]
    identifiers: frozenset[str]
    total_files: int

    def stacks(self) -> list[ImageStack]:
        return group_stacks(self.files)


def _number(value, cast=float):
    try:
        if value is None or value == "":
            return None
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0]
        return cast(value)
    except (TypeError, ValueError):
        return None


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def pixel_data_problem(ds: pydicom.Dataset) -> str | None:
    """Say why a file's pixel data cannot be converted, or None when it looks complete.

    pydicom drops an encapsulated PixelData element whose end is missing, and returns a short
    value for truncated native data; both are checked without decoding.
    """
    if "PixelData" not in ds:
        if any(k in ds for k in ("FloatPixelData", "DoubleFloatPixelData")):
            return "float pixel data is not a CT image"
        return "pixel data missing or truncated"
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    if syntax not in DCM2NIIX_TRANSFER_SYNTAXES:
        return f"unsupported encoding (transfer syntax {syntax})"
    if syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"):
        expected = (
            int(ds.get("Rows", 0))
            * int(ds.get("Columns", 0))
            * int(ds.get("SamplesPerPixel", 1))
            * int(ds.get("BitsAllocated", 16))
            // 8
            * int(_number(ds.get("NumberOfFrames"), int) or 1)
        )
        if len(ds.PixelData) < expected:
            return f"pixel data truncated ({len(ds.PixelData)} of {expected} bytes)"
    return None


def _identifiers(ds: pydicom.Dataset) -> set[str]:
    found: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        for v in values:
            text = str(v).strip()
            if not text:
                continue
            found.add(text)
            if keyword.endswith("Names") or keyword == "PatientName":
                # Person names are stored as Family^Given^Middle; scrub each part on its own too.
                found.update(part for part in text.replace("^", " ").split() if len(part) >= 3)
            if keyword == "PatientBirthDate" and len(text) == 8 and text.isdigit():
                found.add(f"{text[:4]}-{text[4:6]}-{text[6:]}")
                found.add(f"{text[6:]}.{text[4:6]}.{text[:4]}")
    return found


def read_dicom_file(path: Path) -> tuple[DicomFile | None, str | None, set[str]]:
    """Read one file's header; return (file, None, identifiers) or (None, reason, set())."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path)
        # A file cut inside encapsulated pixel data only raises a warning, and pydicom may then
        # return a partial or even empty dataset; the header before the pixels is still intact.
        cut_short = any("End of file reached" in str(w.message) for w in caught)
        if cut_short:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        cut_short = False
        # Old files without the 128-byte preamble: accept them only if they carry an image.
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:
            return None, "not DICOM", set()
        if "Rows" not in ds or "Columns" not in ds:
            return None, "not DICOM", set()
        if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    except Exception as exc:  # pydicom raises many types on damaged files
        return None, f"unreadable ({type(exc).__name__})", set()
    if "Rows" not in ds or "Columns" not in ds:
        return None, "no image (e.g. a structured report or presentation state)", _identifiers(ds)
    technical = {}
    for keyword, name in TECHNICAL_FIELDS.items():
        value = ds.get(keyword)
        if value is not None and _text(value):
            technical[name] = _number(value) if name in ("kvp", "tube_current_ma", "gantry_tilt_header_deg") else _text(value)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    item = DicomFile(
        path=path,
        series_uid=_text(ds.get("SeriesInstanceUID")),
        series_number=_number(ds.get("SeriesNumber"), int),
        modality=_text(ds.get("Modality")).upper(),
        sop_class=_text(ds.get("SOPClassUID")),
        image_type=tuple(v.upper() for v in _text(ds.get("ImageType")).split("\\") if v),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        pixel_spacing=spacing,
        slice_thickness=_number(ds.get("SliceThickness")),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        frames=int(_number(ds.get("NumberOfFrames"), int) or 1),
        pixel_problem="pixel data truncated (file ends early)" if cut_short else pixel_data_problem(ds),
        technical=technical,
    )
    return item, None, _identifiers(ds)


def _candidate_paths(folder: Path) -> list[Path]:
    paths = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() in SKIPPED_NAMES:
                continue
            paths.append(Path(root) / name)
    return paths


def read_study(folder: Path) -> Study:
    """Read the header of every file below `folder` (recursively, hidden files skipped)."""
    folder = Path(folder)
    files: list[DicomFile] = []
    skipped: dict[str, int] = defaultdict(int)
    identifiers: set[str] = set()
    paths = _candidate_paths(folder)
    for path in paths:
        item, reason, ids = read_dicom_file(path)
        identifiers |= ids
        if item is None:
            skipped[reason] += 1
            log.info("skipped %s: %s", path.relative_to(folder), reason)
        else:
            files.append(item)
    return Study(files=files, skipped=dict(skipped), identifiers=frozenset(identifiers), total_files=len(paths))


def _orientation_key(orientation: tuple[float, ...] | None) -> tuple[float, ...] | None:
    return None if orientation is None else tuple(round(v, 3) for v in orientation)


def group_stacks(files: list[DicomFile]) -> list[ImageStack]:
    """Group files by series, then by orientation and matrix size.

    An empty SeriesInstanceUID (seen in anonymised exports) falls back to the series number.
    Within a series, a change of orientation or matrix means a different volume (dcm2niix splits
    the same way), e.g. a localizer stored in the series of the axial images.
    """
    groups: dict[tuple, list[DicomFile]] = defaultdict(list)
    for f in files:
        series = f.series_uid or (f"number:{f.series_number}" if f.series_number is not None else "")
        groups[(series, _orientation_key(f.orientation), f.rows, f.columns)].append(f)
    stacks = []
    ordered = sorted(groups.items(), key=lambda kv: (kv[1][0].series_number or 0, str(kv[0])))
    for index, (_, members) in enumerate(ordered, start=1):
        stacks.append(ImageStack(files=sorted(members, key=lambda f: str(f.path)), index=index))
    return stacks


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def stack_geometry(files: list[DicomFile]) -> StackGeometry | None:
    """Spacing, gaps and gantry tilt of a stack; None when positions or orientation are missing.

    Gantry tilt is the angle between the slice normal and the line through the slice positions:
    zero for a normal axial stack, the tilt angle when the gantry was tilted.
    """
    usable = [f for f in files if f.position is not None and f.orientation is not None]
    if len(usable) < 2 or len(usable) != len(files):
        return None
    normal = slice_normal(usable[0].orientation)
    positions = np.array([f.position for f in usable])
    distances = np.sort(positions @ normal)
    steps = np.diff(distances)
    duplicates = int(np.sum(steps < 1e-3))
    steps = steps[steps >= 1e-3]
    if steps.size == 0:
        return None
    spacing = float(np.median(steps))
    order = np.argsort(positions @ normal)
    travel = positions[order[-1]] - positions[order[0]]
    tilt = 0.0
    if np.linalg.norm(travel) > 0:
        cosine = abs(float(travel @ normal)) / float(np.linalg.norm(travel))
        tilt = math.degrees(math.acos(min(1.0, cosine)))
    obliquity = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    return StackGeometry(
        slices=int(distances.size - duplicates),
        spacing_mm=spacing,
        min_spacing_mm=float(steps.min()),
        max_gap_mm=float(steps.max()),
        uneven=bool(np.max(np.abs(steps - spacing)) > max(0.01 * spacing, 0.01)),
        tilt_deg=tilt,
        obliquity_deg=obliquity,
        duplicate_positions=duplicates,
        extent_mm=float(distances[-1] - distances[0]),
    )


def modality_of(f: DicomFile) -> str:
    """The file's modality, falling back to its SOP class when the Modality tag is absent."""
    if f.modality:
        return f.modality
    return "CT" if f.sop_class in CT_SOP_CLASSES else ""
