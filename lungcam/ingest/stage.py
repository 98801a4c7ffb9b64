"""Ingest stage: one patient's DICOM study folder -> one verified NIfTI volume and a QC record.

Steps: read every header; choose one axial CT stack (series_selection); check it (slice count,
gaps, body part, tilt, spacing); convert only its files with dcm2niix, keeping the tilt-corrected
or equalised volume when dcm2niix makes one; verify Hounsfield units; strip identifying fields
from the sidecar; write `record.json`. Problems with the patient's data never raise: they make
the record say `excluded` with a specific reason, so one bad patient cannot stop a cohort.

Orientation policy: the volume keeps dcm2niix's voxel order (no reorientation, no cropping) with
the exact scanner affine. Later stages work in physical coordinates through the affine and
write their maps on this same grid, so nothing depends on a particular axis order.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from lungcam.core.atomic import atomic_path
from lungcam.core.config import settings_from
from lungcam.core.folders import folder_digest
from lungcam.core.records import write_record
from lungcam.ingest import dcm2niix
from lungcam.ingest.compress import gzip_file
from lungcam.ingest.deidentify import LogScrubber, Scrubber, identifier_terms, sidecar_fields
from lungcam.ingest.dicom_series import DCM2NIIX_TRANSFER_SYNTAXES, ImageStack, Study, modality_of, read_study, slice_normal
from lungcam.ingest.hu_check import verify_hu
from lungcam.ingest.series_selection import SeriesChoice, SeriesPolicy, describe, select_series

log = logging.getLogger(__name__)

VOLUME_NAME = "scan.nii.gz"
SIDECAR_NAME = "scan.json"
RECORD_NAME = "record.json"
TILT_WARNING_DEG = 0.5


@dataclass(frozen=True)
class IngestSettings:
    """Config section `ingest` (see schemas/config.schema.yaml for meanings and defaults)."""

    min_slices: int
    max_slice_gap_mm: float
    excluded_body_parts: frozenset[str]
    series: SeriesPolicy

    @classmethod
    def from_config(cls, section: dict) -> IngestSettings:
        settings = settings_from(cls, section)  # body parts compared in upper case, as DICOM writes them
        return replace(settings, excluded_body_parts=frozenset(p.upper() for p in settings.excluded_body_parts))


def _no_series_reason(study: Study, choice: SeriesChoice) -> str:
    if study.total_files == 0:
        return "the DICOM folder is empty"
    if not study.files:
        kinds = ", ".join(f"{reason}: {n}" for reason, n in sorted(study.skipped.items()))
        return f"no readable DICOM image among {study.total_files} file(s) ({kinds})"
    all_reasons = [reasons for _, reasons in choice.rejected]
    if all(any("localizer" in r for r in reasons) for reasons in all_reasons):
        return "only localizer (scout) images, no axial CT series"
    if all(any(r.startswith("not CT") for r in reasons) for reasons in all_reasons):
        modalities = sorted({modality_of(s.first) or "missing" for s, _ in choice.rejected})
        return f"not a CT study (modality {', '.join(modalities)})"
    details = "; ".join(f"{stack.label}: {', '.join(reasons)}" for stack, reasons in choice.rejected)
    return f"no usable axial CT series ({details})"


def header_summary(stack: ImageStack) -> dict:
    """Series-level header figures of the chosen stack for the QC record."""
    first = stack.first
    geometry = stack.geometry()
    summary = {
        "modality": modality_of(first),
        "transfer_syntax": DCM2NIIX_TRANSFER_SYNTAXES.get(first.transfer_syntax, first.transfer_syntax),
        "rows": first.rows,
        "columns": first.columns,
        "pixel_spacing_mm": list(first.pixel_spacing) if first.pixel_spacing else None,
        "slice_thickness_mm": first.slice_thickness,
        "images": stack.image_count,
        **{k: v for k, v in first.technical.items() if k != "series_description"},
    }
    if geometry is not None:
        summary.update(
            slices=geometry.slices,
            slice_spacing_mm=round(geometry.spacing_mm, 4),
            min_slice_spacing_mm=round(geometry.min_spacing_mm, 4),
            max_gap_mm=round(geometry.max_gap_mm, 4),
            uneven_spacing=geometry.uneven,
            gantry_tilt_deg=round(geometry.tilt_deg, 2),
            obliquity_deg=round(geometry.obliquity_deg, 2),
            duplicate_positions=geometry.duplicate_positions,
            z_extent_mm=round(geometry.extent_mm, 2),
            missing_slices_z_mm=geometry.missing_z_mm,
            irregular_spacing=geometry.irregular,
        )
    else:
        summary.update(slices=stack.image_count, gantry_tilt_deg=first.technical.get("gantry_tilt_header_deg") or 0.0)
    return summary


def _z_list(positions: list[float], shown: int = 6) -> str:
    """`z = a, b mm`, at most `shown` positions and a count of the rest."""
    text = ", ".join(f"{z:g}" for z in positions[:shown])
    more = f" and {len(positions) - shown} more" if len(positions) > shown else ""
    return f"z = {text}{more} mm"


def header_checks(header: dict, settings: IngestSettings) -> tuple[list[str], list[str]]:
    """(exclusion reasons, warnings) from the chosen stack's header figures."""
    reasons, warnings = [], []
    if header["slices"] < settings.min_slices:
        reasons.append(f"too few slices ({header['slices']} < ingest.min_slices {settings.min_slices})")
    gap = header.get("max_gap_mm")
    missing = header.get("missing_slices_z_mm") or []
    where = f"; missing slice(s) at {_z_list(missing)}" if missing else ""
    if gap is not None and gap > settings.max_slice_gap_mm:
        reasons.append(
            f"slices missing: a gap of {gap:.1f} mm between neighbouring slices "
            f"exceeds ingest.max_slice_gap_mm ({settings.max_slice_gap_mm:g}){where}"
        )
    elif missing:
        warnings.append(f"missing slice(s) at {_z_list(missing)}: filled by interpolation between the neighbouring slices")
    body_part = str(header.get("body_part", "")).upper()
    if body_part in settings.excluded_body_parts:
        reasons.append(f"not a chest CT (BodyPartExamined '{body_part}')")
    elif not body_part:
        warnings.append("BodyPartExamined not recorded; chest coverage is checked by the lung QC")
    tilt = float(header.get("gantry_tilt_deg") or 0.0)
    if abs(tilt) > TILT_WARNING_DEG:
        warnings.append(f"gantry tilt of {tilt:.1f} deg; the tilt-corrected volume is used")
    if header.get("uneven_spacing") and (header.get("irregular_spacing", True) or not missing):
        warnings.append(
            f"uneven slice spacing ({header['min_slice_spacing_mm']:.2f} to {header['max_gap_mm']:.2f} mm); "
            "the volume resampled to equal spacing is used"
        )
    if header.get("duplicate_positions"):
        warnings.append(f"{header['duplicate_positions']} slice(s) repeat a position already present")
    return reasons, warnings


def _middle_file(stack: ImageStack):
    """The HU cross-check reference: the middle slice as (path, rank, slice count, normal)."""
    files = [f for f in stack.files if f.position is not None and f.orientation is not None]
    if not files or len(files) != len(stack.files):
        return None
    normal = slice_normal(files[0].orientation)
    files.sort(key=lambda f: float(np.dot(f.position, normal)))
    rank = len(files) // 2
    return files[rank].path, rank, len(files), normal


def _volume_summary(img: nib.Nifti1Image, conversion: dcm2niix.Conversion) -> dict:
    variant = "original"
    if conversion.tilt_corrected or conversion.equalized:
        variant = "+".join(n for n, on in (("tilt-corrected", conversion.tilt_corrected), ("equalized", conversion.equalized)) if on)
    return {
        "shape": [int(n) for n in img.shape[:3]],
        "spacing_mm": [round(float(z), 4) for z in img.header.get_zooms()[:3]],
        "orientation": "".join(nib.aff2axcodes(img.affine)),
        "affine": [[round(float(v), 4) for v in row] for row in img.affine],
        "variant": variant,
    }


def _convert_and_verify(stack: ImageStack, stage_dir: Path, header: dict, scrubber: Scrubber) -> tuple[dict, list[str], list[str]]:
    """Convert the stack into stage_dir; return (figures, reasons, warnings)."""
    reasons, warnings = [], []
    with tempfile.TemporaryDirectory(prefix="convert-", dir=stage_dir) as scratch:
        try:
            conversion = dcm2niix.convert_files([f.path for f in stack.files], Path(scratch))
        except dcm2niix.Dcm2niixError as exc:
            return {}, [f"conversion failed: {str(exc).replace(scratch, '<scratch>')}"], []
        figures = {"dcm2niix_warnings": [w.replace(scratch, "<scratch>") for w in conversion.warnings]}
        volume = nib.load(conversion.volume)
        original = nib.load(conversion.original_volume) if conversion.original_volume != conversion.volume else volume
        figures["volume"] = _volume_summary(volume, conversion)
        tilted = abs(float(header.get("gantry_tilt_deg") or 0.0)) > TILT_WARNING_DEG
        if tilted and not conversion.tilt_corrected:
            reasons.append("gantry tilt present but dcm2niix wrote no tilt-corrected volume")
        if header.get("uneven_spacing") and not conversion.equalized and not tilted:
            reasons.append("uneven slice spacing but dcm2niix wrote no equalised volume")
        if not conversion.equalized and not conversion.tilt_corrected and volume.shape[2] != header["slices"]:
            warnings.append(f"dcm2niix wrote {volume.shape[2]} slices for {header['slices']} slice positions")
        if conversion.other_volumes:
            warnings.append(f"dcm2niix split the series; {len(conversion.other_volumes)} smaller volume(s) ignored")
        report = verify_hu(volume, original, _middle_file(stack))
        figures["hu"] = report.statistics
        reasons.extend(f"HU check failed: {p}" for p in report.problems)
        removed: list[str] = []
        sidecar = scrubber.scrub(sidecar_fields(dcm2niix.read_sidecar(conversion.sidecar)), removed)
        if removed:
            warnings.append(f"sidecar field(s) {', '.join(removed)} removed: they contained patient identifiers")
        write_record(stage_dir / SIDECAR_NAME, sidecar)
        gzip_file(conversion.volume, stage_dir / VOLUME_NAME)
        figures["dcm2niix_version"] = sidecar.get("ConversionSoftwareVersion", "")
    return figures, reasons, warnings


def ingest_patient(patient_id: str, dicom_dir: Path | str, stage_dir: Path | str, settings: IngestSettings, study_uid: str = "") -> dict:
    """Run the ingest stage for one patient; always writes `stage_dir/record.json` and returns it.

    `patient_id` is the sample sheet's pseudonym: never scrubbed, even where the DICOM headers
    carry it. `study_uid` (the sheet's optional column) picks one study of a folder holding
    several. The stage folder is built under a temporary name and renamed when complete, and
    identifying values are blanked in this job's log lines as soon as the headers are read.
    """
    dicom_dir = Path(dicom_dir)
    record: dict = {"patient_id": patient_id, "stage": "ingest", "status": "ok", "reasons": [], "warnings": []}
    with LogScrubber() as scrubbing, atomic_path(stage_dir) as building:
        building.mkdir()
        try:
            _ingest_into(record, dicom_dir, building, settings, study_uid, scrubbing)
        except Exception as exc:  # unforeseen data: exclude this patient, keep the cohort going
            log.exception("patient %s: unexpected error during ingest", patient_id)
            record["reasons"].append(f"unexpected error during ingest ({type(exc).__name__}: {exc}); see the job log")
        if record["reasons"]:
            record["status"] = "excluded"
            log.warning("patient %s excluded at ingest: %s", patient_id, "; ".join(record["reasons"]))
        else:
            log.info("patient %s ingested: %s", patient_id, record["series"]["why"])
        record = (scrubbing.scrubber or Scrubber()).scrub(record, [])
        write_record(building / RECORD_NAME, record)
    return record


def _file_figures(study: Study, dicom_dir: Path) -> tuple[dict, list[str]]:
    """The record's `files` section and the warnings about ignored or duplicate files."""
    figures = {
        "found": study.total_files,
        "dicom_images": len(study.files),
        "skipped": study.skipped,
        "duplicates_dropped": study.duplicates,
        "sha256": folder_digest(dicom_dir),
    }
    warnings = []
    if study.skipped:
        count = sum(study.skipped.values())
        warnings.append(f"{count} file(s) ignored: " + ", ".join(f"{k} ({v})" for k, v in sorted(study.skipped.items())))
    if study.duplicates:
        warnings.append(
            f"{study.duplicates} duplicate file(s) dropped: the same file reached twice, or a second copy of an image (same SOPInstanceUID)"
        )
    return figures, warnings


def _ingest_into(record: dict, dicom_dir: Path, stage_dir: Path, settings: IngestSettings, study_uid: str, scrubbing: LogScrubber) -> None:
    """Fill `record` for one study; starts `scrubbing` with the headers' identifying values."""
    if not dicom_dir.is_dir():
        record["reasons"].append("DICOM folder not found")
        return
    study = read_study(dicom_dir)
    scrubbing.start(Scrubber(identifier_terms(study.identifiers, record["patient_id"]), keep=record["patient_id"]))
    for path, reason in study.skipped_files:
        log.info("skipped %s: %s", path, reason)
    record["files"], warnings = _file_figures(study, dicom_dir)
    record["warnings"] += warnings
    choice = select_series(study, settings.series, study_uid) if study.files else SeriesChoice(None, "", [], [])
    record["series"] = {
        "chosen": describe(choice.chosen) if choice.chosen else None,
        "why": choice.why,
        "candidates": [describe(s) for s in choice.candidates],
        "rejected": [{**describe(s), "reasons": r} for s, r in choice.rejected],
    }
    record["warnings"] += choice.warnings
    if choice.chosen is None:
        record["reasons"].append(choice.problem or _no_series_reason(study, choice))
        return
    header = header_summary(choice.chosen)
    record["header"] = header
    reasons, warnings = header_checks(header, settings)
    figures, conv_reasons, conv_warnings = _convert_and_verify(choice.chosen, stage_dir, header, scrubbing.scrubber)
    record.update(figures)
    record["reasons"] += reasons + conv_reasons
    record["warnings"] += warnings + conv_warnings


def publish(stage_dir: Path | str, volume_path: Path | str, sidecar_path: Path | str) -> None:
    """Make the stage's volume and sidecar the contract outputs `nifti/{id}.nii.gz` and `.json`.

    A hard link costs no space (a cohort of thousands of scans is not stored twice); where the
    file system refuses links, the files are copied. The modification time is set to now so that
    Snakemake sees the outputs as newer than the stage folder they come from.
    """
    stage_dir = Path(stage_dir)
    for source, target in ((stage_dir / VOLUME_NAME, Path(volume_path)), (stage_dir / SIDECAR_NAME, Path(sidecar_path))):
        with atomic_path(target) as tmp:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copy2(source, tmp)
            os.utime(tmp)
