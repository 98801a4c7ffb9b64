"""Run dcm2niix on exactly the files of one chosen stack and pick the volume to keep.

Only the chosen files are handed over (as symbolic links in a scratch folder), so localizers and
other series cost nothing and a damaged file elsewhere in the study cannot break the conversion.
For a gantry-tilted or unevenly spaced stack, dcm2niix writes extra volumes with `_Tilt` and/or
`_Eq` in their names, resampled onto a regular grid; the corrected one is the one to analyse.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# -z n: uncompressed (checks read it memory-mapped; lungcam.ingest.compress gzips it on all cores);
# -b y -ba y: BIDS sidecar without dates and personal data; -i n: keep every image
# we hand over (selection is ours); -x n: no crop or reorientation; -a y: all files are adjacent
# slices of one series; -d 0: flat folder; -c "": empty NIfTI aux_file (dcm2niix otherwise copies
# ImageComments there); -g i: ignore a user's ~/.dcm2nii.ini so runs are reproducible.
DCM2NIIX_ARGS = ("-z", "n", "-b", "y", "-ba", "y", "-i", "n", "-x", "n", "-a", "y", "-d", "0", "-c", "", "-g", "i", "-w", "1")
OUTPUT_STEM = "scan"
_VARIANT = re.compile(r"^(?P<stem>.+?)(?P<tilt>_Tilt)?(?P<eq>_Eq)?(?:_(?P<n>\d+))?$")


_STRING_LINE = re.compile(r'^(\s*"[^"]+":\s*")(.*)("\s*,?\s*)$')


def read_sidecar(path: Path) -> dict:
    """Read a dcm2niix JSON sidecar, repairing its known malformed string values.

    dcm2niix v1.0.2026 writes multi-valued DICOM strings such as ConvolutionKernel `Br38f\\3`
    partly unescaped (`"ReconFilterType": "Br38f\\",`), which is invalid JSON. Such a line is
    re-escaped on its own; valid lines are left as they are.
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    lines = []
    for line in text.splitlines():
        match = _STRING_LINE.match(line)
        if match:
            try:
                json.loads(f'"{match.group(2)}"')
            except json.JSONDecodeError:
                line = match.group(1) + match.group(2).replace("\\", "\\\\").replace('"', '\\"') + match.group(3)
        lines.append(line)
    return json.loads("\n".join(lines))


class Dcm2niixError(RuntimeError):
    """dcm2niix ran but produced no usable volume; the message carries its own explanation."""


@dataclass
class Conversion:
    """What one dcm2niix run produced, with the chosen volume first."""

    volume: Path
    sidecar: Path
    original_volume: Path
    tilt_corrected: bool
    equalized: bool
    warnings: list[str] = field(default_factory=list)
    other_volumes: list[str] = field(default_factory=list)


def executable() -> str:
    """The dcm2niix binary: from PATH, else the one shipped by the `dcm2niix` PyPI package."""
    found = shutil.which("dcm2niix")
    if found:
        return found
    try:
        import dcm2niix  # the PyPI wheel ships the binary

        return dcm2niix.bin
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise Dcm2niixError("dcm2niix not found: install it (pip install dcm2niix)") from exc


def version() -> str:
    out = subprocess.run([executable(), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"v\d+\.\d+\.\d+\w*", out.stdout + out.stderr)
    return match.group(0) if match else "unknown"


def _classify_outputs(folder: Path) -> tuple[list[tuple[Path, bool, bool]], dict[str, Path]]:
    volumes, sidecars = [], {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.endswith(".nii"):
            match = _VARIANT.match(name[: -len(".nii")])
            volumes.append((path, bool(match.group("tilt")), bool(match.group("eq"))))
        elif name.endswith(".json"):
            sidecars[name[: -len(".json")]] = path
    return volumes, sidecars


def convert_files(files: list[Path], work_dir: Path) -> Conversion:
    """Convert `files` (one stack) into NIfTI in `work_dir`; raise Dcm2niixError if it fails."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dicom-", dir=work_dir) as links:
        for index, source in enumerate(files):
            os.symlink(os.path.abspath(source), Path(links) / f"{index:06d}.dcm")
        out = subprocess.run(
            [executable(), *DCM2NIIX_ARGS, "-f", OUTPUT_STEM, "-o", str(work_dir), links],
            capture_output=True,
            text=True,
            check=False,
        )
    text = out.stdout + out.stderr
    warnings = sorted({line.strip() for line in text.splitlines() if line.lower().startswith(("warning", "error"))})
    volumes, sidecars = _classify_outputs(work_dir)
    if not volumes:
        detail = "; ".join(warnings) or text.strip().splitlines()[-1:] or ["no output"]
        raise Dcm2niixError(f"dcm2niix produced no volume (exit code {out.returncode}): {detail}")
    originals = [v for v in volumes if not v[1] and not v[2]]
    # Several uncorrected outputs mean dcm2niix split the stack (e.g. by acquisition); keep the
    # largest file, the most complete volume, and report the rest.
    original = max(originals or volumes, key=lambda v: v[0].stat().st_size)[0]
    stem = original.name[: -len(".nii")]
    corrected = [v for v in volumes if v[0].name.startswith(stem + "_") and (v[1] or v[2])]
    chosen = max(corrected, key=lambda v: (v[1], v[2])) if corrected else (original, False, False)
    sidecar = sidecars.get(stem)
    if sidecar is None:
        raise Dcm2niixError(f"dcm2niix wrote {original.name} without its JSON sidecar")
    others = [v[0].name for v in volumes if v[0] not in (chosen[0], original)]
    return Conversion(
        volume=chosen[0],
        sidecar=sidecar,
        original_volume=original,
        tilt_corrected=chosen[1],
        equalized=chosen[2],
        warnings=warnings,
        other_volumes=others,
    )
