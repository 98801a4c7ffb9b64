"""Read a patient's DICOM study folder and describe its image stacks.

dcm2niix converts whatever it finds. Choosing *which* stack is the chest CT to analyse, and
explaining that choice in the QC record, needs every file's header first. Headers are read with
pydicom without decoding pixels (about 1 ms per file), which also lets us catch truncated files
before they make dcm2niix abandon a whole series.

Identifying header values (names, birth dates, record numbers, institution) are collected in
memory only, so that later steps can scrub them from free-text fields and logs; they are never
written anywhere.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lungcam.core.folders import list_files
from lungcam.ingest.deidentify import IDENTIFYING_KEYWORDS

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
    study_uid: str
    sop_uid: str
    patient_ref: str  # PatientID, kept in memory to tell two patients' series apart; never written
    study_datetime: str  # StudyDate + StudyTime, to order studies; never written
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
    missing_z_mm: list[float] = field(default_factory=list)  # where whole slices are missing (scanner z)
    irregular: bool = False  # uneven beyond whole missing slices


@dataclass
class ImageStack:
    """Files of one series sharing orientation and matrix: what dcm2niix turns into one volume."""

    files: list[DicomFile]
    index: int = 0
    study: int = 1  # which study of the folder (1 = earliest StudyDate/StudyTime)

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
    identifiers: frozenset[tuple[str, str]]  # (DICOM keyword, value), see lungcam.ingest.deidentify
    total_files: int
    duplicates: int = 0  # files dropped as a second copy of one already read
    skipped_files: list[tuple[Path, str]] = field(default_factory=list)  # (path in the folder, why)

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


def _identifying_values(ds: pydicom.Dataset) -> set[tuple[str, str]]:
    """(keyword, value) of every identifying field present (lungcam.ingest.deidentify turns them into
    the terms to scrub)."""
    found: set[tuple[str, str]] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        found.update((keyword, str(v).strip()) for v in values if str(v).strip())
    return found


def _header_cut_short(ds: pydicom.Dataset) -> bool:
    """Whether a dataset without an image matrix is an image object whose file ends inside its
    header (a cut file), rather than an object that never had an image (a structured report)."""
    sop = _text(ds.file_meta.get("MediaStorageSOPClassUID") if hasattr(ds, "file_meta") else None) or _text(ds.get("SOPClassUID"))
    return len(ds) == 0 or not sop or "Image Storage" in pydicom.uid.UID(sop).name


def read_dicom_file(path: Path) -> tuple[DicomFile | None, str | None, set[tuple[str, str]]]:
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
        return None, f"damaged file (unreadable: {type(exc).__name__})", set()
    if "Rows" not in ds or "Columns" not in ds:
        if _header_cut_short(ds):
            return None, "damaged file (ends inside its header)", _identifying_values(ds)
        return None, "no image (e.g. a structured report or presentation state)", _identifying_values(ds)
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
        study_uid=_text(ds.get("StudyInstanceUID")),
        sop_uid=_text(ds.get("SOPInstanceUID")),
        patient_ref=_text(ds.get("PatientID")),
        study_datetime=_text(ds.get("StudyDate")) + _text(ds.get("StudyTime")),
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
    return item, None, _identifying_values(ds)


def read_study(folder: Path) -> Study:
    """Read the header of every file below `folder` (recursively, hidden files skipped).

    A file reached twice (through a symbolic link) is read once, and of several files with one
    SOPInstanceUID (a series exported twice) the first is kept: both count as duplicates.
    """
    folder = Path(folder)
    files: list[DicomFile] = []
    skipped: dict[str, int] = defaultdict(int)
    identifiers: set[tuple[str, str]] = set()
    paths, duplicates = list_files(folder, skip_hidden=True)
    paths = [p for p in paths if p.name.upper() not in SKIPPED_NAMES]
    seen_sops: set[str] = set()
    skipped_files: list[tuple[Path, str]] = []
    for path in paths:
        item, reason, ids = read_dicom_file(path)
        identifiers |= ids
        if item is None:
            skipped[reason] += 1
            skipped_files.append((path.relative_to(folder), reason))
        elif item.sop_uid and item.sop_uid in seen_sops:
            duplicates += 1
        else:
            seen_sops.add(item.sop_uid)
            files.append(item)
    return Study(
        files=files,
        skipped=dict(skipped),
        identifiers=frozenset(identifiers),
        total_files=len(paths),
        duplicates=duplicates,
        skipped_files=skipped_files,
    )


def _orientation_key(orientation: tuple[float, ...] | None) -> tuple[float, ...] | None:
    return None if orientation is None else tuple(round(v, 3) for v in orientation)


def group_stacks(files: list[DicomFile]) -> list[ImageStack]:
    """Group files by study and series, then by orientation and matrix size.

    An empty SeriesInstanceUID (seen in anonymised exports) falls back to the series number,
    description, kernel and slice thickness, within the study: two scans that both lost their
    UID are not merged into one impossible volume. Within a series, a change of orientation or
    matrix means a different volume (dcm2niix splits the same way), e.g. a localizer stored in
    the series of the axial images.
    """
    groups: dict[tuple, list[DicomFile]] = defaultdict(list)
    for f in files:
        series = (
            f.series_uid
            or f"number:{f.series_number}|{f.technical.get('series_description', '')}|{f.technical.get('kernel', '')}|{f.slice_thickness}"
        )
        groups[(f.study_uid, series, _orientation_key(f.orientation), f.rows, f.columns)].append(f)
    # Studies numbered by date and time (undated ones last), then UID: study 1 is the earliest.
    studies = sorted({(f.study_datetime or "~", f.study_uid) for f in files})
    study_number = {uid: number for number, (_, uid) in enumerate(studies, start=1)}
    stacks = []
    ordered = sorted(groups.items(), key=lambda kv: (kv[1][0].series_number or 0, str(kv[0])))
    for index, (_, members) in enumerate(ordered, start=1):
        stacks.append(ImageStack(files=sorted(members, key=lambda f: str(f.path)), index=index, study=study_number[members[0].study_uid]))
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
    missing, irregular = _missing_slices(positions[order], distances, spacing)
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
        missing_z_mm=missing,
        irregular=irregular,
    )


def _missing_slices(positions: np.ndarray, distances: np.ndarray, spacing: float) -> tuple[list[float], bool]:
    """(scanner z of each slice missing from a whole-number gap, whether other steps are uneven).

    A step of k times the usual spacing (within a tenth of a slice) means k - 1 slices are
    missing there, e.g. a file that could not be read; their positions are interpolated
    between the neighbours. `positions` and `distances` are sorted along the slice normal.
    """
    missing: list[float] = []
    irregular = False
    for i, step in enumerate(np.diff(distances)):
        if step < 1e-3:
            continue
        k = int(round(step / spacing))
        if k >= 2 and abs(step - k * spacing) <= 0.1 * spacing:
            z0, z1 = float(positions[i][2]), float(positions[i + 1][2])
            missing += [round(z0 + (z1 - z0) * j / k, 2) for j in range(1, k)]
        elif abs(step - spacing) > max(0.01 * spacing, 0.01):
            irregular = True
    return missing, irregular


def modality_of(f: DicomFile) -> str:
    """The file's modality, falling back to its SOP class when the Modality tag is absent."""
    if f.modality:
        return f.modality
    return "CT" if f.sop_class in CT_SOP_CLASSES else ""
