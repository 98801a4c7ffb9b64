"""Keep identifying data out of every output, job logs included.

Two layers. (1) The dcm2niix BIDS sidecar is reduced to an allowlist of technical fields:
`dcm2niix -ba y` drops names and dates but still writes institution, station, device serial
number, study description and image comments, any of which can identify a patient or a site; a
field added by a future dcm2niix is dropped until someone decides it is harmless. (2) Every
string written by a stage, and every line of its log, is checked against the identifying values
read from the DICOM headers (names of patients, physicians and operators, birth dates, record
numbers, institution and station) in case someone typed them into a free-text field such as the
series or protocol name; a string that contains one is replaced, a log line has it blanked.

The sample sheet's `patient_id` is pseudonymous by contract, and many shared cohorts carry that
same pseudonym in PatientID (or build PatientName from it, `STUDY^X^P0042`): it is never treated
as an identifier, wherever it appears, so that no record or status table loses the patient's id.
"""

from __future__ import annotations

import logging
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


# DICOM keywords whose values identify a person or a site (read to scrub them, never written).
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
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "OperatorsName",
)
# Person names (Family^Given^Middle): each part of three or more letters is scrubbed on its own.
PERSON_NAME_KEYWORDS = frozenset(
    {
        "PatientName",
        "OtherPatientNames",
        "PatientMotherBirthName",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansOfRecord",
        "RequestingPhysician",
        "OperatorsName",
    }
)
REDACTED = "[removed]"


def identifier_terms(values, pseudonym: str = "") -> set[str]:
    """The strings to scrub, from (DICOM keyword, value) pairs read from the headers.

    Person names add their parts; birth dates add their ISO and dotted forms. The pseudonym (the
    sample sheet's patient_id) is never a term, and a name with the pseudonym among its parts is
    a pseudonym built from it: only the name as a whole is scrubbed, not its parts.
    """
    own = pseudonym.strip().lower()
    terms: set[str] = set()
    for keyword, value in values:
        text = str(value).strip()
        if not text:
            continue
        terms.add(text)
        if keyword in PERSON_NAME_KEYWORDS:
            parts = [part for part in text.replace("^", " ").split() if len(part) >= 3]
            if not own or own not in (part.lower() for part in parts):
                terms.update(parts)
        if keyword == "PatientBirthDate" and len(text) == 8 and text.isdigit():
            terms.add(f"{text[:4]}-{text[4:6]}-{text[6:]}")
            terms.add(f"{text[6:]}.{text[4:6]}.{text[:4]}")
    return {t for t in terms if t.lower() != own}


class Scrubber:
    """Finds identifying terms in text, never counting the pseudonym `keep` as one.

    Terms match case-insensitively as whole words of three or more characters. Text equal to
    or containing the pseudonym is searched with the pseudonym blanked out first, so a term
    that only occurs inside the pseudonym (`study` in `study-0042`) does not match it.
    """

    def __init__(self, terms=(), keep: str = ""):
        words = sorted({t.strip() for t in terms if len(t.strip()) >= 3}, key=len, reverse=True)
        alternatives = "|".join(re.escape(w) for w in words)
        self.pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE) if words else None
        self.keep = re.compile(re.escape(keep.strip()), re.IGNORECASE) if keep.strip() else None

    def _masked(self, text: str) -> str:
        return self.keep.sub(lambda m: " " * len(m.group(0)), text) if self.keep else text

    def finds(self, text: str) -> bool:
        return self.pattern is not None and self.pattern.search(self._masked(text)) is not None

    def redact(self, text: str) -> str:
        """`text` with every identifying term replaced by REDACTED (for log lines)."""
        if self.pattern is None:
            return text
        masked = self._masked(text)
        spans = [m.span() for m in self.pattern.finditer(masked)]
        for start, end in reversed(spans):
            text = text[:start] + REDACTED + text[end:]
        return text

    def scrub(self, value, removed: list[str], where: str = ""):
        """`value` with every string that holds a term replaced by REMOVED; notes where in `removed`."""
        if self.pattern is None:
            return value
        if isinstance(value, str):
            if self.finds(value):
                removed.append(where or "value")
                return REMOVED
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v, removed, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub(v, removed, f"{where}[{i}]") for i, v in enumerate(value)]
        return value


class _HeldFilter(logging.Filter):
    """One handler's filter: holds records until the scrubber is known, then redacts them."""

    def __init__(self, owner: LogScrubber, handler: logging.Handler):
        super().__init__()
        self.owner, self.handler, self.held = owner, handler, []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.owner.scrubber is None:
            self.held.append(record)
            return False
        scrubber = self.owner.scrubber
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = scrubber.redact(record.getMessage()), None
        if record.exc_text:
            record.exc_text = scrubber.redact(record.exc_text)
        return True

    def release(self) -> None:
        held, self.held = self.held, []
        for record in held:
            self.handler.handle(record)


class LogScrubber:
    """Blanks identifying terms in every line a job logs while it is active (a context manager).

    Lines logged before the headers are read (a library's warning naming a file, say) are held
    back until `start` gives the scrubber, then written redacted; on leaving, anything still
    held is written with no terms known.
    """

    def __init__(self, handlers: list[logging.Handler] | None = None):
        handlers = logging.getLogger().handlers if handlers is None else handlers
        self.filters = [_HeldFilter(self, handler) for handler in handlers]
        self.scrubber: Scrubber | None = None

    def start(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber
        for held in self.filters:
            held.release()

    def __enter__(self) -> LogScrubber:
        for held in self.filters:
            held.handler.addFilter(held)
        return self

    def __exit__(self, *exc) -> None:
        if self.scrubber is None:
            self.start(Scrubber())
        for held in self.filters:
            held.handler.removeFilter(held)
