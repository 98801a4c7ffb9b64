"""A corpus of realistic bad inputs, generated from the real series in ../shared/data.

Each case is one patient's DICOM folder, written into a temporary folder (nothing is committed as
data, the shared data are only read), with the outcome the workflow must give it: `ok`, or
`excluded` with the start of the named reason; `warnings` lists texts the QC record must carry.
Cases that must stop the run before any job (a scan under two ids, an input inside the outputs)
are sample sheets of their own, in `sheet_errors`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

# The P001 slices used for most cases: 40 slices of 2 mm through the middle of the chest, enough
# lung for the lung QC to pass.
MIDDLE = slice(50, 90)
PLANTED = {
    "PatientID": "MRN55501234",
    "InstitutionName": "Quillfeather Clinic",
    "StationName": "QFC-CT7",
    "OperatorsName": "Marchetti^Lucia",
    "ReferringPhysicianName": "Oyelaran^Kenji",
}


@dataclass
class Case:
    patient_id: str
    folder: Path
    status: str  # "ok" or "excluded"
    reason: str = ""  # start of the exclusion reason (after "ingest: ")
    warnings: list[str] = field(default_factory=list)  # texts some warning must contain


def sorted_series(folder: Path) -> list[Path]:
    """A series' files from the top slice down."""
    return sorted(folder.iterdir(), key=lambda p: -float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


UID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def rewrite(files, folder: Path, key: str | None = None, **changes) -> Path:
    """Write `files` into `folder` with `changes` (DICOM keywords, or TransferSyntaxUID).

    With `key`, as another patient's export: every UID is replaced by one derived from (`key`,
    old UID), so cases never share a scan, while files of one case that shared a UID still do
    (a series exported twice stays one series).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        ds = pydicom.dcmread(path)
        for name, value in changes.items():
            if name == "TransferSyntaxUID":
                ds.file_meta.TransferSyntaxUID = value
            else:
                setattr(ds, name, value)
        if key is not None:
            for tag in UID_TAGS:
                if str(ds.get(tag, "") or ""):
                    setattr(ds, tag, generate_uid(entropy_srcs=[key, str(ds.get(tag))]))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / path.name)
    return folder


def slice_z(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def build_corpus(data: Path, root: Path) -> list[Case]:
    """Write every case below `root`; returns the cases in sample-sheet order."""
    p001 = sorted_series(data / "covid-ct-md" / "P001")
    cap = sorted_series(data / "covid-ct-md" / "cap001")
    body = p001[MIDDLE]
    study = str(pydicom.dcmread(p001[0], stop_before_pixels=True).StudyInstanceUID)
    cases: list[Case] = []

    def case(
        patient_id: str, status: str, reason: str = "", warnings=(), make: Callable[[Path], object] | None = None, folder: str = ""
    ) -> None:
        where = root / (folder or patient_id)
        if make is not None:
            make(where)
        cases.append(Case(patient_id, where, status, reason, list(warnings)))

    case("good", "ok", make=lambda f: rewrite(body, f, "good"))
    case("pseudo-0042", "ok", make=lambda f: rewrite(body, f, "pseudo", PatientID="pseudo-0042", PatientName="STUDY^X^pseudo-0042"))
    # The sheet names "scan#2"; its neighbour "scan" holds another scan that must not be read instead.
    rewrite(cap[40:70], root / "scan", "scan")
    case("hash", "ok", folder="scan#2", make=lambda f: rewrite(body, f, "hash"))
    case(
        "planted",
        "ok",
        make=lambda f: rewrite(
            body,
            f,
            "planted",
            **PLANTED,
            SeriesDescription="Thorax MRN55501234 Quillfeather Clinic",
            ProtocolName="Quillfeather Clinic chest",
        ),
    )

    def twice(folder: Path) -> None:
        rewrite(body, folder / "export1", "twice")
        rewrite(body, folder / "export2", "twice")
        (folder / "export1" / "loop").symlink_to(folder)

    case("twice", "ok", warnings=["40 duplicate file(s) dropped"], make=twice)
    missing = body[:20] + body[21:]
    case(
        "missing-slice", "ok", warnings=[f"missing slice(s) at z = {slice_z(body[20]):g} mm"], make=lambda f: rewrite(missing, f, "missing")
    )

    def cut_header(folder: Path) -> None:
        rewrite(body, folder, "cut-header")
        victim = folder / body[10].name
        victim.write_bytes(victim.read_bytes()[:1200])

    case(
        "cut-header",
        "ok",
        warnings=["damaged file (ends inside its header)", f"missing slice(s) at z = {slice_z(body[10]):g} mm"],
        make=cut_header,
    )

    def cut_pixels(folder: Path) -> None:
        rewrite(body, folder, "cut-pixels")
        victim = folder / body[10].name
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])

    case("cut-pixels", "excluded", "no usable axial CT series (series", make=cut_pixels)
    case("big-gap", "excluded", "slices missing: a gap of 14.0 mm", make=lambda f: rewrite(body[:15] + body[21:], f, "big-gap"))

    def two_studies(folder: Path) -> None:
        rewrite(p001[60:80], folder, "two-studies")
        rewrite(cap[40:80], folder, "two-studies")  # another patient's CAP scan, with more slices

    case("two-studies", "excluded", "the folder holds 2 studies", make=two_studies)

    def two_patients(folder: Path) -> None:
        rewrite(p001[60:80], folder, "two-patients")
        rewrite(cap[40:80], folder, "two-patients", StudyInstanceUID=study)  # filed under P001's study

    case("two-patients", "excluded", "the folder holds series of 2 different patients", make=two_patients)

    def blank_uids(folder: Path) -> None:
        rewrite(p001[60:80], folder, "blank", SeriesInstanceUID="", SeriesNumber=2)
        rewrite(cap[60:80], folder, "blank", SeriesInstanceUID="", SeriesNumber=2)

    case("blank-series-uid", "excluded", "the folder holds 2 studies", make=blank_uids)
    case(
        "scout",
        "excluded",
        "only localizer (scout) images",
        make=lambda f: rewrite(body[:3], f, "scout", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
    )
    case(
        "mr",
        "excluded",
        "not a CT study (modality MR)",
        make=lambda f: rewrite(body[:20], f, "mr", Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4"),
    )
    case(
        "derived",
        "excluded",
        "no usable axial CT series",
        make=lambda f: rewrite(body, f, "derived", ImageType=["DERIVED", "SECONDARY", "AXIAL"]),
    )
    case(
        "htj2k",
        "excluded",
        "no usable axial CT series",
        make=lambda f: rewrite(body[:20], f, "htj2k", TransferSyntaxUID="1.2.840.10008.1.2.4.201"),
    )
    case("few", "excluded", "too few slices (8 < ingest.min_slices 16)", make=lambda f: rewrite(body[:8], f, "few"))
    case("no-rescale", "excluded", "HU check failed: air reads", make=lambda f: rewrite(body, f, "no-rescale", RescaleIntercept=0))
    case("empty", "excluded", "the DICOM folder is empty", make=lambda f: f.mkdir(parents=True))

    def junk(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("not an image")
        (folder / "scan.dcm").write_bytes(b"\0" * 300)

    case("junk", "excluded", "no readable DICOM image among 2 file(s)", make=junk)
    case("head", "excluded", "not a chest CT (BodyPartExamined 'HEAD')", folder=str(data / "dcm-qa-ct" / "GE"))
    case("lungmask-slices", "excluded", "too few slices (2 < ingest.min_slices 16)", folder=str(data / "lungmask-testdata"))
    return cases


def write_sheet(cases: list[Case], path: Path) -> Path:
    """The sample sheet, starting with a comment line (as the README allows)."""
    rows = ["# bad-input corpus: one case per patient", "patient_id\tlabel\tdicom_dir"]
    rows += [f"{c.patient_id}\tNP\t{c.folder}" for c in cases]
    path.write_text("\n".join(rows) + "\n")
    return path


def sheet_errors(data: Path, root: Path, workdir: Path) -> dict[str, tuple[str, list[str]]]:
    """Sample sheets that must stop the run before any job: name -> (sheet text, expected messages)."""
    p001 = sorted_series(data / "covid-ct-md" / "P001")
    rewrite(p001[MIDDLE], root / "a", "a")
    rewrite(p001[MIDDLE], root / "copy-of-a", "a")  # the same study under another name
    rewrite(p001[MIDDLE], workdir / "work" / "ingest" / "old", "old")
    header = "patient_id\tlabel\tdicom_dir\n"
    return {
        "same folder": (header + f"A\tNP\t{root / 'a'}\nB\tCAP\t{root / 'a'}\n", ["dicom_dir is also patient 'A''s DICOM folder"]),
        "same scan": (header + f"A\tNP\t{root / 'a'}\nB\tCAP\t{root / 'copy-of-a'}\n", ["patients 'A', 'B' hold the same scan"]),
        "inside outputs": (header + f"A\tNP\t{workdir / 'work' / 'ingest' / 'old'}\n", ["overlaps the run's output folder work/"]),
    }
