"""Find one scan given under two patient ids before any job starts.

Two sample-sheet rows whose folders hold the same study (a study copied into two folders, or
exported twice under two pseudonyms) would put one scan into two cross-validation folds. Each
folder is identified by the StudyInstanceUID (else the SeriesInstanceUID) of the first DICOM
image found in it: one header read per patient. The fingerprints are kept in a small cache keyed
by that file's path, size and modification time, so re-planning a cohort of thousands reads no
header again. The cache holds digests only, of the UIDs and of the file names and times.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom

from lungcam.core.atomic import write_text
from lungcam.core.folders import iter_files
from lungcam.ingest.dicom_series import SKIPPED_NAMES

# How many files of a folder are tried before it counts as holding no readable DICOM image.
FILES_TRIED = 5
UID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID")


def first_files(folder: Path, limit: int = FILES_TRIED) -> list[Path]:
    """The first `limit` files below `folder`, in the order ingest reads them."""
    found = []
    for path, repeat in iter_files(folder, skip_hidden=True):
        if not repeat and path.name.upper() not in SKIPPED_NAMES:
            found.append(path)
            if len(found) == limit:
                break
    return found


def scan_fingerprint(path: Path) -> str | None:
    """A digest of the file's StudyInstanceUID (else SeriesInstanceUID); None if it has neither
    or is not DICOM."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(UID_TAGS))
    except Exception:
        return None
    for tag in UID_TAGS:
        uid = str(ds.get(tag, "") or "").strip()
        if uid:
            return hashlib.sha256(f"{tag}:{uid}".encode()).hexdigest()
    return None


def _file_key(path: Path) -> str:
    """A digest of the file's path, size and time (file names may carry identifiers too)."""
    stat = path.stat()
    return hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()


def folder_fingerprints(folders: dict[str, Path | str], cache_path: Path | str | None = None) -> dict[str, str]:
    """patient -> fingerprint of the scan in its folder (patients whose folder holds no readable
    DICOM image are left out: ingest excludes them with the reason)."""
    cache: dict[str, str] = {}
    if cache_path is not None and Path(cache_path).is_file():
        try:
            cache = json.loads(Path(cache_path).read_text())
        except (OSError, ValueError):
            cache = {}
    fresh: dict[str, str] = {}
    fingerprints: dict[str, str] = {}
    for patient, folder in folders.items():
        for path in first_files(Path(folder)):
            key = _file_key(path)
            fingerprint = cache.get(key) or scan_fingerprint(path)
            if fingerprint:
                fresh[key] = fingerprints[patient] = fingerprint
                break
    if cache_path is not None and fresh != cache:
        write_text(cache_path, json.dumps(fresh))
    return fingerprints


def shared_scan_problems(folders: dict[str, Path | str], cache_path: Path | str | None = None) -> list[str]:
    """A message for every scan found under more than one patient id, naming the ids."""
    owners: dict[str, list[str]] = {}
    for patient, fingerprint in folder_fingerprints(folders, cache_path).items():
        owners.setdefault(fingerprint, []).append(patient)
    return [
        f"patients {', '.join(repr(p) for p in patients)} hold the same scan (same StudyInstanceUID or SeriesInstanceUID "
        "in their DICOM folders); one scan must belong to one patient"
        for patients in owners.values()
        if len(patients) > 1
    ]
