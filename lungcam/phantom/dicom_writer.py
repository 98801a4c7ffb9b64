"""Write synthetic CT series as DICOM files that look like a scanner's export.

Valid, deterministic UIDs (2.25 UUID-derived from the seed), study- and series-level dates and
times constant within a series, random file names, HFS or FFS geometry, unsigned or signed pixel
storage with the matching rescale intercept, and a fake identity (name, birth date, record number,
accession number) planted in the identifying fields and in free text, so that de-identification
can be tested. The planted values are invented; no real person is described.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# Site-level values planted in every study (as identifying as a name: they must not leak either).
INSTITUTION = "Synthetic General Hospital"
STATION = "SYNTH-CT1"
REFERRER = "Hallworth^Ysolde"
FAMILY_NAMES = (
    "Doeberg",
    "Quillfeather",
    "Marchetti",
    "Oyelaran",
    "Vasquez-Lund",
    "Tanaka-Hill",
    "Brannigan",
    "Okonkwo",
    "Lindqvist",
    "Dubrovsky",
)
GIVEN_NAMES = ("Jane", "Omar", "Lucia", "Henrik", "Amara", "Kenji", "Fiona", "Mateo", "Ingrid", "Tobias")


@dataclass(frozen=True)
class Identity:
    """A fake person planted in the headers (every value must stay out of all outputs).

    A pseudonymised patient (`pseudonym` set, as in cohorts shared after pseudonymisation)
    carries the sample sheet's id as PatientID and in PatientName; its other fields still hold
    the fake person, in OtherPatientNames, ImageComments and the dates."""

    family: str
    given: str
    birth_date: str  # YYYYMMDD
    mrn: str
    accession: str
    sex: str
    age: str
    pseudonym: str = ""

    @property
    def dicom_name(self) -> str:
        return f"LUNGCAM^{self.pseudonym}" if self.pseudonym else f"{self.family}^{self.given}"

    @property
    def dicom_id(self) -> str:
        return self.pseudonym or self.mrn

    def planted_values(self) -> list[str]:
        """Strings a leak scan must never find in the outputs (the pseudonym may appear anywhere)."""
        iso = f"{self.birth_date[:4]}-{self.birth_date[4:6]}-{self.birth_date[6:]}"
        own = [] if self.pseudonym else [self.dicom_name, self.mrn]
        return [self.family, self.given, self.birth_date, iso, self.accession, *own, INSTITUTION, STATION, REFERRER, *REFERRER.split("^")]


def draw_identity(rng: np.random.Generator, patient_id: str = "") -> Identity:
    """A fake person; about a third of patients are pseudonymised with `patient_id` (drawn last,
    so that the other values do not depend on it)."""
    year = int(rng.integers(1935, 2000))
    identity = Identity(
        family=str(rng.choice(FAMILY_NAMES)),
        given=str(rng.choice(GIVEN_NAMES)),
        birth_date=f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        mrn=f"MRN{int(rng.integers(10**7, 10**8))}",
        accession=f"ACC{int(rng.integers(10**6, 10**7))}",
        sex=str(rng.choice(["F", "M"])),
        age=f"{2020 - year:03d}Y",
    )
    pseudonymised = rng.uniform() < 1 / 3
    return replace(identity, pseudonym=patient_id) if pseudonymised and patient_id else identity


@dataclass(frozen=True)
class StudyInfo:
    """Study-level header values shared by every series of one synthetic patient."""

    key: str  # entropy for deterministic UIDs
    identity: Identity
    manufacturer: str
    model: str
    kvp: float
    tube_current_ma: float
    patient_position: str
    date: str
    time: str

    def uid(self, *parts: str) -> str:
        return generate_uid(entropy_srcs=[self.key, *parts])


@dataclass(frozen=True)
class SeriesSpec:
    number: int
    description: str
    kernel: str
    thickness_mm: float
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")


class FileNamer:
    """Random, unique file names (8 hex digits, with or without .dcm) like a PACS export."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.suffix = ".dcm" if rng.uniform() < 0.5 else ""
        self.used: set[str] = set()

    def __call__(self) -> str:
        while True:
            name = f"{int(self.rng.integers(16**8)):08X}{self.suffix}"
            if name not in self.used:
                self.used.add(name)
                return name


def _base_dataset(study: StudyInfo, spec: SeriesSpec, representation: int, intercept: float) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(spec.image_type)
    ds.SOPClassUID = CTImageStorage
    for tag in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        setattr(ds, tag, study.date)
    ds.StudyTime = study.time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = f"{study.time[:4]}{10 + spec.number:02d}"
    ds.AccessionNumber = study.identity.accession
    ds.Modality = "CT"
    ds.Manufacturer = study.manufacturer
    ds.ManufacturerModelName = study.model
    ds.InstitutionName = INSTITUTION
    ds.StationName = STATION
    ds.ReferringPhysicianName = REFERRER
    ds.StudyDescription = "CT THORAX"
    ds.SeriesDescription = spec.description
    ds.PatientName = study.identity.dicom_name
    ds.PatientID = study.identity.dicom_id
    ds.PatientBirthDate = study.identity.birth_date
    ds.PatientSex = study.identity.sex
    ds.PatientAge = study.identity.age
    ds.OtherPatientNames = f"{study.identity.family}^{study.identity.given[0]}"
    ds.ImageComments = f"Patient {study.identity.given} {study.identity.family}, DOB {study.identity.birth_date}"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{spec.thickness_mm:g}"
    ds.KVP = f"{study.kvp:g}"
    ds.ConvolutionKernel = spec.kernel
    ds.PatientPosition = study.patient_position
    ds.GantryDetectorTilt = "0"
    ds.XRayTubeCurrent = f"{study.tube_current_ma:g}"
    ds.StudyInstanceUID = study.uid("study")
    ds.SeriesInstanceUID = study.uid("series", str(spec.number))
    ds.FrameOfReferenceUID = study.uid("frame")
    ds.StudyID = "1"
    ds.SeriesNumber = spec.number
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12 if representation == 0 else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = representation
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = ["-600", "40"]
    ds.WindowWidth = ["1500", "400"]
    return ds


def _write(ds: Dataset, sop_uid: str, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def stored_values(hu: np.ndarray, representation: int, intercept: float) -> np.ndarray:
    """HU -> stored pixel values for the given pixel representation and intercept (slope 1)."""
    stored = np.rint(hu - intercept)
    if representation == 0:
        return np.clip(stored, 0, 4095).astype(np.uint16)
    return np.clip(stored, -32768, 32767).astype(np.int16)


def write_axial_series(
    hu: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    zs: np.ndarray,
    spec: SeriesSpec,
    study: StudyInfo,
    representation: int,
    intercept: float,
    folder: Path,
    names: FileNamer,
) -> int:
    """Write hu[z, y, x] (LPS axes xs, ys, zs in mm) as one axial series; returns the file count.

    HFS: rows run anterior to posterior, columns right to left (IOP 1,0,0,0,1,0), instance 1 at the
    top. FFS: columns run left to right (IOP -1,0,0,0,1,0), instance 1 at the feet, as a scanner
    numbers slices in acquisition order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = _base_dataset(study, spec, representation, intercept)
    feet_first = study.patient_position.startswith("FF")
    ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0] if feet_first else [1, 0, 0, 0, 1, 0]
    ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
    ds.PixelSpacing = [f"{ys[1] - ys[0]:.6g}", f"{xs[1] - xs[0]:.6g}"]
    x0 = xs[-1] if feet_first else xs[0]
    order = np.arange(len(zs)) if feet_first else np.arange(len(zs))[::-1]
    for instance, k in enumerate(order, start=1):
        image = stored_values(hu[k][:, ::-1] if feet_first else hu[k], representation, intercept)
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = [f"{x0:.6g}", f"{ys[0]:.6g}", f"{zs[k]:.6g}"]
        ds.SliceLocation = f"{zs[k]:.6g}"
        ds.PixelData = image.tobytes()
        _write(ds, study.uid("image", str(spec.number), str(instance)), folder / names())
    return len(zs)


def write_localizer(projection: np.ndarray, xs: np.ndarray, zs: np.ndarray, study: StudyInfo, folder: Path, names: FileNamer) -> None:
    """A coronal topogram (projection[z, x], zs ascending) as series 1, ImageType LOCALIZER."""
    spec = SeriesSpec(1, "Topogram 0.6 T20f", "T20f", 0.6, ("ORIGINAL", "PRIMARY", "LOCALIZER"))
    ds = _base_dataset(study, spec, 0, 0.0)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    image = np.clip(np.rint(projection[::-1]), 0, 4095).astype(np.uint16)
    ds.Rows, ds.Columns = image.shape
    ds.PixelSpacing = [f"{abs(zs[1] - zs[0]):.6g}", f"{xs[1] - xs[0]:.6g}"]
    ds.ImagePositionPatient = [f"{xs[0]:.6g}", "0", f"{zs[-1]:.6g}"]
    ds.InstanceNumber = 1
    ds.PixelData = image.tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    _write(ds, study.uid("image", "1", "1"), folder / names())
